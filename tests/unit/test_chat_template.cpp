// Chat-template renderer: real templates against the text transformers'
// apply_chat_template(..., tokenize=False) produces, jinja2's whitespace rules
// (trim_blocks, lstrip_blocks, -/+ control), expression semantics, errors with
// positions, resource limits, and robustness on garbage input.
#include <gtest/gtest.h>

#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "model/model.h"
#include "tern/error.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

namespace tern {
namespace {

using Messages = std::vector<ChatMessage>;

ChatTemplateInputs inputs(Messages messages, bool add_generation_prompt = true, std::string bos = "<|begin_of_text|>",
                          std::string eos = "<|eot_id|>") {
  ChatTemplateInputs in;
  in.messages = std::move(messages);
  in.add_generation_prompt = add_generation_prompt;
  in.bos_token = std::move(bos);
  in.eos_token = std::move(eos);
  return in;
}

// Renders `source` with no messages (or the given ones).
std::string render(const std::string& source, Messages messages = {}) {
  return ChatTemplate(source).render(inputs(std::move(messages)));
}

using test::error_of;

std::string render_error(const std::string& source, Messages messages = {}) {
  return error_of([&] { render(source, messages); });
}

const Messages kConversation = {
    {"system", "You are a pirate."},
    {"user", "  Who are you?\n"},
    {"assistant", "Arr, a pirate!"},
    {"user", "Bye"},
};

// meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json "chat_template", as JSON
// decodes it: the "\n\n" inside the Jinja strings are real newlines.
const char* const kLlama3Instruct =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

// ---------------------------------------------------------------------------------
// Real templates

// The BitNet format as docs/BITNET_FACTS.md shows it, with the template adding the BOS.
const char* const kBitNetWithBos =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = message['role'] | "
    "capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = "
    "bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}"
    "{% endif %}";

TEST(ChatTemplate, BitNetSingleUserMessage) {
  EXPECT_EQ(ChatTemplate(kBitNetWithBos).render(inputs({{"user", "Hey, are you conscious?"}})),
            "<|begin_of_text|>User: Hey, are you conscious?<|eot_id|>Assistant: ");
  // The checkpoint's own template (the default) leaves the BOS to the tokenizer.
  EXPECT_EQ(ChatTemplate(default_chat_template()).render(inputs({{"user", "Hey, are you conscious?"}})),
            "User: Hey, are you conscious?<|eot_id|>Assistant: ");
}

TEST(ChatTemplate, BitNetMultiTurnWithSystem) {
  ChatTemplate t(kBitNetWithBos);
  // Roles are capitalized, contents trimmed, BOS only before the first message.
  EXPECT_EQ(t.render(inputs(kConversation)),
            "<|begin_of_text|>System: You are a pirate.<|eot_id|>User: Who are you?<|eot_id|>"
            "Assistant: Arr, a pirate!<|eot_id|>User: Bye<|eot_id|>Assistant: ");
  EXPECT_EQ(t.render(inputs(kConversation, false)),
            "<|begin_of_text|>System: You are a pirate.<|eot_id|>User: Who are you?<|eot_id|>"
            "Assistant: Arr, a pirate!<|eot_id|>User: Bye<|eot_id|>");
  EXPECT_EQ(t.render(inputs({}, true)), "Assistant: ");
  EXPECT_EQ(ChatTemplate(kBitNetChatTemplate).render(inputs(kConversation, false)),
            "System: You are a pirate.<|eot_id|>User: Who are you?<|eot_id|>Assistant: Arr, a pirate!<|eot_id|>"
            "User: Bye<|eot_id|>");
}

TEST(ChatTemplate, DefaultTemplateHelpers) {
  EXPECT_EQ(default_chat_template(), std::string(kBitNetChatTemplate));
  EXPECT_EQ(chat_template_or_default(""), default_chat_template());
  EXPECT_EQ(chat_template_or_default(" \n\t"), default_chat_template());
  EXPECT_EQ(chat_template_or_default("{{ 'x' }}"), "{{ 'x' }}");
}

TEST(ChatTemplate, Llama3Instruct) {
  const std::string expected =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a pirate.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nArr, a pirate!<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  ChatTemplate t(kLlama3Instruct);
  EXPECT_EQ(t.render(inputs(kConversation)), expected);
  // Without the generation prompt the last header is gone.
  EXPECT_EQ(
      t.render(inputs(kConversation, false)),
      expected.substr(0, expected.size() - std::string("<|start_header_id|>assistant<|end_header_id|>\n\n").size()));
  // The same template with the newlines written as Jinja escapes renders the same.
  std::string escaped = kLlama3Instruct;
  for (size_t p; (p = escaped.find("\n\n")) != std::string::npos;) escaped.replace(p, 2, "\\n\\n");
  EXPECT_EQ(ChatTemplate(escaped).render(inputs(kConversation)), expected);
  EXPECT_EQ(t.render(inputs({{"user", "Hi"}})),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, MistralAlternationAndRaiseException) {
  const std::string mistral =
      "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
      "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
      "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
      "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
  ChatTemplate t(mistral);
  Messages no_system(kConversation.begin() + 1, kConversation.end());
  EXPECT_EQ(t.render(inputs(no_system, true, "<s>", "</s>")),
            "<s>[INST]   Who are you?\n [/INST]Arr, a pirate!</s>[INST] Bye [/INST]");
  EXPECT_EQ(error_of([&] { t.render(inputs(kConversation, true, "<s>", "</s>")); }),
            "chat template: Conversation roles must alternate user/assistant/user/assistant/...");
  EXPECT_EQ(error_of([&] {
              t.render(inputs({{"user", "a"}, {"user", "b"}}));
            }),
            "chat template: Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplate, ZephyrAndChatML) {
  // Zephyr relies on trim_blocks: every newline right after a %} disappears.
  const std::string zephyr =
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
      "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
      "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
      "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
  Messages two(kConversation.begin(), kConversation.begin() + 2);
  EXPECT_EQ(ChatTemplate(zephyr).render(inputs(two, true, "<s>", "</s>")),
            "<|system|>\nYou are a pirate.</s>\n<|user|>\n  Who are you?\n</s>\n<|assistant|>\n");
  const std::string chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
      "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  EXPECT_EQ(ChatTemplate(chatml).render(inputs(two)),
            "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\n  Who are you?\n<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, Llama31StyleIndentedTemplate) {
  // The Llama 3.1 style: one statement per line, indented, `{%-`/`{{-` everywhere.
  const std::string src = R"({{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)";
  EXPECT_EQ(
      ChatTemplate(src).render(inputs({{"system", " Be brief. "}, {"user", "Hi"}})),
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

// ---------------------------------------------------------------------------------
// Whitespace: jinja2 with trim_blocks=True, lstrip_blocks=True

TEST(ChatTemplate, TrimBlocksRemovesOneNewlineAfterBlockTags) {
  // The newline after each %} goes; the one after }} stays.
  EXPECT_EQ(render("{% if true %}\nA\n{% endif %}\nB"), "A\nB");
  EXPECT_EQ(render("{% if true %}\n\nA{% endif %}"), "\nA");  // only the first newline
  EXPECT_EQ(render("{{ 'x' }}\n{{ 'y' }}"), "x\ny");
  // Comments trim like block tags.
  EXPECT_EQ(render("{# note #}\nA"), "A");
  // `+%}` keeps the newline.
  EXPECT_EQ(render("{% if true +%}\nA{% endif %}"), "\nA");
}

TEST(ChatTemplate, LstripBlocksRemovesIndentationBeforeBlockTags) {
  // Spaces and tabs before {% on their own line go, with trim_blocks the whole line goes.
  EXPECT_EQ(render("  {% if true %}\n    x\n  {% endif %}\n  y"), "    x\n  y");
  EXPECT_EQ(render("\t{% if true %}\n\tx{% endif %}\n"), "\tx");
  // Not when text precedes the tag on its line, and never before {{.
  EXPECT_EQ(render("a  {% if true %}b{% endif %}"), "a  b");
  EXPECT_EQ(render("  {{ 'v' }}"), "  v");
  // `{%+` turns it off for one tag.
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  // Comments are stripped like blocks.
  EXPECT_EQ(render("a\n   {# c #}\nb"), "a\nb");
}

TEST(ChatTemplate, MinusStripsAllWhitespaceOnItsSide) {
  EXPECT_EQ(render("a  \n {%- if true -%} \n b \n {%- endif -%}\n  c"), "abc");
  EXPECT_EQ(render("a \n {{- 'x' -}} \n b"), "axb");
  EXPECT_EQ(render("a \n {#- c -#} \n b"), "ab");
  EXPECT_EQ(render("{%- for m in ['x', 'y'] %}\n    {{- m }}\n{%- endfor %}\n"), "xy");
}

TEST(ChatTemplate, RawCommentsLineEndingsAndTrailingNewline) {
  EXPECT_EQ(render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
  EXPECT_EQ(render("x{# {{ ignored }} #}y"), "xy");
  // \r\n and \r become \n; one trailing newline of the template is dropped.
  EXPECT_EQ(render("a\r\nb\rc\n"), "a\nb\nc");
  EXPECT_EQ(render("a\n\n"), "a\n");
  EXPECT_EQ(render("{% if true %}\r\nA{% endif %}"), "A");  // trim_blocks sees \r\n as one newline
}

// ---------------------------------------------------------------------------------
// Statements

TEST(ChatTemplate, LoopVariables) {
  EXPECT_EQ(render("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                   "{{ loop.revindex0 }}{{ loop.length }}{{ 'F' if loop.first }}{{ 'L' if loop.last }};{% endfor %}"),
            "10323F;21213;32103L;");
  EXPECT_EQ(render("{% for x in [1, 2, 3] %}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }}"
                   "{{ loop.cycle('o', 'e') }} {% endfor %}"),
            "-2o 13e 2-o ");
  // Nested loops: `loop` is the innermost one.
  EXPECT_EQ(render("{% for i in 'ab' %}{% for j in 'xyz' %}{{ loop.index }}{% endfor %}{{ loop.index }}|{% endfor %}"),
            "1231|1232|");
  // else runs when nothing was iterated; the loop filter counts in loop.length.
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"), "2/2 4/2 ");
  // break / continue (jinja2.ext.loopcontrols, enabled by transformers).
  EXPECT_EQ(render("{% for i in range(10) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}"
                   "{% endif %}{{ i }}{% endfor %}"),
            "023");
  // Unpacking and dict iteration (keys, in insertion order).
  EXPECT_EQ(render("{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}={{ v }};{% endfor %}"
                   "{% for k in {'z': 0, 'y': 0} %}{{ k }}{% endfor %}"),
            "b=1;a=2;zy");
  EXPECT_EQ(render("{% for m in messages %}{{ m.role[0] }}{% endfor %}", kConversation), "suau");
}

TEST(ChatTemplate, SetScopingInLoopsVersusNamespace) {
  // A set inside a loop body doesn't leak out, nor into the next iteration.
  EXPECT_EQ(render("{% set c = 0 %}{% for i in range(3) %}{% set c = c + 1 %}{{ c }}{% endfor %}{{ c }}"), "1110");
  EXPECT_EQ(render("{% for i in [1] %}{% set inner = 'x' %}{% endfor %}[{{ inner }}]"), "[]");
  // A set inside an if at top level does persist.
  EXPECT_EQ(render("{% if true %}{% set top = 'T' %}{% endif %}{{ top }}"), "T");
  // namespace() objects carry state out of loops.
  EXPECT_EQ(render("{% set ns = namespace(count=0, last='') %}{% for m in messages %}{% if m.role == 'user' %}"
                   "{% set ns.count = ns.count + 1 %}{% set ns.last = m.content %}{% endif %}{% endfor %}"
                   "{{ ns.count }}:{{ ns.last }}",
                   kConversation),
            "2:Bye");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set block %}x{{ 1 + 1 }}{% endset %}[{{ block }}]"), "[x2]");
  EXPECT_NE(render_error("{% set s = 'x' %}{% set s.attr = 1 %}").find("non-namespace"), std::string::npos);
}

// ---------------------------------------------------------------------------------
// Expressions

TEST(ChatTemplate, UndefinedValues) {
  EXPECT_EQ(render("[{{ nothing }}]{{ 'yes' if not nothing }}{{ nothing is defined }}{{ nothing is not defined }}"),
            "[]yesFalseTrue");
  EXPECT_EQ(
      render("{{ nothing.attr is defined }}{{ messages[0].missing is defined }}[{{ nothing['k'] }}]", kConversation),
      "FalseFalse[]");
  EXPECT_EQ(render("{{ 'a' ~ nothing ~ 'b' }}{{ nothing|default('d') }}{{ nothing|length }}"), "abd0");
  // transformers passes tools and documents as None.
  EXPECT_EQ(render("{{ tools is none }}{{ tools is defined }}{{ documents is none }}"), "TrueTrueTrue");
  EXPECT_NE(render_error("{{ nothing + 1 }}").find("'nothing' is undefined"), std::string::npos);
  EXPECT_NE(render_error("{{ nothing() }}").find("'nothing' is undefined"), std::string::npos);
}

TEST(ChatTemplate, ArithmeticAndPythonSemantics) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 1 / 4 }} {{ 10 / 2 }}"),
            "7 3 -4 -2 1024 0.25 5.0");
  EXPECT_EQ(render("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 1e15 }} {{ 1.5 }} {{ -0.0 }}"),
            "0.30000000000000004 1e+20 1e-05 1000000000000000.0 1.5 -0.0");
  EXPECT_EQ(render("{{ 'ab' + 'cd' }} {{ [1] + [2] }} {{ 'x' * 3 }} {{ 'a' ~ 1 ~ none ~ true }}"),
            "abcd [1, 2] xxx a1NoneTrue");
  EXPECT_EQ(render("{{ 1 < 2 < 3 }}{{ 1 == 1.0 }}{{ true == 1 }}{{ (1,) == [1] }}{{ 'abc' < 'abd' }}"),
            "TrueTrueTrueFalseTrue");
  EXPECT_EQ(render("{{ 'b' in 'abc' }}{{ 'x' not in ['a'] }}{{ 'role' in messages[0] }}", kConversation),
            "TrueTrueTrue");
  EXPECT_EQ(render("{{ '' or 'b' }}|{{ 0 and 1 }}|{{ not [] }}|{{ 'y' if 0 else 'n' }}|{{ 'x' if false }}|"),
            "b|0|True|n||");
  EXPECT_EQ(render("{{ [1, 'a', none, true, 2.5, (1,), {'k': 'v'}] }}"), "[1, 'a', None, True, 2.5, (1,), {'k': 'v'}]");
  EXPECT_EQ(render("{{ \"it's\" }}|{{ ['it\\'s'] }}|{{ 'a\\tb\\n'|length }}|{{ '\\x41\\u00e9' }}"),
            "it's|[\"it's\"]|4|A\xC3\xA9");
  EXPECT_EQ(render("{{ '%s is %d' % ('x', 3) }}"), "x is 3");
  EXPECT_NE(render_error("{{ 1 / 0 }}").find("division by zero"), std::string::npos);
  EXPECT_NE(render_error("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
}

TEST(ChatTemplate, SubscriptsAndSlices) {
  EXPECT_EQ(render("{{ messages[0]['role'] }}{{ messages[0].content }}{{ messages[-1].content }}{{ messages.1.role }}",
                   kConversation),
            "systemYou are a pirate.Byeuser");
  EXPECT_EQ(
      render("{{ messages[1:]|length }}{{ messages[:-1]|length }}{{ (messages[::-1]|first).content }}", kConversation),
      "33Bye");
  EXPECT_EQ(
      render("{{ 'abcdef'[1:3] }}|{{ 'abcdef'[-2:] }}|{{ 'abc'[::-1] }}|{{ [1,2,3,4,5][4:0:-2] }}|{{ 'abc'[10:] }}|"),
      "bc|ef|cba|[5, 3]||");
  // Strings index by code point, as Python does.
  EXPECT_EQ(render("{{ 'h\xC3\xA9llo'[1] }}{{ 'h\xC3\xA9llo'|length }}{{ 'h\xC3\xA9llo'[::-1] }}"),
            "\xC3\xA9"
            "5oll\xC3\xA9h");
  EXPECT_EQ(render("[{{ [1, 2][5] }}]{{ {'a': {'b': [10, 20]}}.a.b.1 }}"), "[]20");
}

TEST(ChatTemplate, Filters) {
  EXPECT_EQ(render("{{ '  x  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'hELLO wORLD'|capitalize }}|{{ 'abc'|upper }}|"
                   "{{ 'ABC'|lower }}|{{ 'hello world-foo (bar)'|title }}"),
            "x|hi|Hello world|ABC|abc|Hello World-Foo (Bar)");
  EXPECT_EQ(
      render("{{ [1, 2, 3]|length }}{{ 'abc'|count }}{{ {'a': 1}|length }}|{{ [3, 1, 2]|first }}{{ [3, 1, 2]|last }}"),
      "331|32");
  EXPECT_EQ(render("{{ x|default('d') }}|{{ ''|default('d') }}|{{ ''|default('d', true) }}|{{ none|d('n') }}"),
            "d||d|None");
  EXPECT_EQ(
      render("{{ 42|string ~ 'x' }}|{{ '42'|int + 1 }}|{{ 'x'|int }}|{{ '3.7'|int }}|{{ 3.9|int }}|{{ 2|float }}"),
      "42x|43|0|3|3|2.0");
  EXPECT_EQ(render("{{ ['a', 'b']|join(', ') }}|{{ messages|map(attribute='role')|join(',') }}|"
                   "{{ 'aXbX'|replace('X', '-') }}",
                   kConversation),
            "a, b|system,user,assistant,user|a-b-");
  EXPECT_EQ(render("{% for k, v in {'a': 1}|items %}{{ k }}{{ v }}{% endfor %}|{{ [3, 1, 2]|sort|list }}|"
                   "{{ ['b', 'A', 'a']|unique|list }}|{{ [1, 2]|reverse|list }}|{{ [1, 2, 3]|sum }}"),
            "a1|[1, 2, 3]|['b', 'A']|[2, 1]|6");
  EXPECT_EQ(render("{{ messages|selectattr('role', 'equalto', 'user')|list|length }}|"
                   "{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='role')|list }}|"
                   "{{ [0, 1, 2, none]|select|list }}|{{ [1, 2, 3, 4]|reject('odd')|list }}",
                   kConversation),
            "2|['system', 'assistant']|[1, 2]|[2, 4]");
  EXPECT_EQ(render("{{ 2.5|round }}|{{ 3.14159|round(2) }}|{{ -3|abs }}|{{ [3, 1]|max }}|{{ 'a\nb'|indent(2, true) }}"),
            "2.0|3.14|3|3|  a\n  b");
}

TEST(ChatTemplate, ToJsonMatchesTransformersOverride) {
  // transformers' tojson: json.dumps(x, ensure_ascii=False): ", " and ": " separators,
  // no HTML escaping, non-ASCII kept.
  EXPECT_EQ(render("{{ messages[:1]|tojson }}", kConversation),
            R"([{"role": "system", "content": "You are a pirate."}])");
  EXPECT_EQ(render("{{ {'a': [1, 2.0, none, true], 'b': '<\xC3\xA9\"\\n>'}|tojson }}"),
            "{\"a\": [1, 2.0, null, true], \"b\": \"<\xC3\xA9\\\"\\n>\"}");
  EXPECT_EQ(render("{{ {'a': [1], 'b': {}}|tojson(indent=2) }}"), "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ '\xC3\xA9'|tojson(ensure_ascii=true) }}"),
            "{\"a\": 2, \"b\": 1}|\"\\u00e9\"");
  EXPECT_NE(render_error("{{ nothing|tojson }}").find("not JSON serializable"), std::string::npos);
}

TEST(ChatTemplate, Tests) {
  EXPECT_EQ(render("{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ 1.5 is number }}{{ 'a' is number }}"),
            "TrueTrueTrueTrueFalse");
  EXPECT_EQ(render("{{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ 'a' is iterable }}"
                   "{{ 1 is iterable }}{{ 'a' is sequence }}{{ [] is sequence }}{{ 1 is sequence }}"),
            "TrueFalseTrueTrueFalseTrueTrueFalse");
  EXPECT_EQ(render("{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}{{ 1 is true }}"
                   "{{ true is true }}{{ 2 is gt 1 }}{{ 'a' is in 'abc' }}{{ 'A' is upper }}{{ 1 is integer }}"),
            "TrueTrueTrueFalseFalseTrueTrueTrueTrueTrue");
  EXPECT_EQ(
      render("{% if messages[0].content is string and messages[0].role is not none %}ok{% endif %}", kConversation),
      "ok");
}

TEST(ChatTemplate, StringAndDictMethods) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xxa'.lstrip('x') }}|{{ 'a  '.rstrip() }}|{{ 'abc'.startswith('ab') }}"
                   "{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'a,b,c'.split(',') }}|"
                   "{{ ' a  b '.split() }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'ab'.upper() }}{{ 'AB'.lower() }}|"
                   "{{ 'hello world'.title() }}"),
            "a b|a|a|TrueTrueTrue|['a', 'b', 'c']|['a', 'b']|['a', 'b,c']|ABab|Hello World");
  EXPECT_EQ(
      render(
          "{{ messages[0].get('role') }}|{{ messages[0].get('x') }}|{{ messages[0].get('x', 'd') }}|"
          "{{ messages[0].keys()|list }}|{{ messages[0].values()|list|length }}|{{ messages[0].items()|list|first }}",
          kConversation),
      "system|None|d|['role', 'content']|2|('role', 'system')");
  EXPECT_EQ(render("{% set content = messages[2].content %}{% if '</think>' in content %}{% endif %}"
                   "{{ 'a</think>b'.split('</think>')[-1] }}",
                   kConversation),
            "b");
}

TEST(ChatTemplate, StrftimeNowUsesTheCurrentDate) {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char year[16];
  std::strftime(year, sizeof year, "%Y", &tm);
  // A render straddling New Year's midnight could differ; accept the next year too.
  std::string got = render("{{ strftime_now('%Y') }}");
  EXPECT_TRUE(got == year || got == std::to_string(std::stoi(year) + 1)) << got;
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y')|length }}"), "11");
}

// ---------------------------------------------------------------------------------
// Errors

TEST(ChatTemplate, RaiseException) {
  EXPECT_EQ(render_error("a{{ raise_exception('Bad roles: ' ~ messages|length) }}", kConversation),
            "chat template: Bad roles: 4");
  EXPECT_THROW(render("{% if true %}{{ raise_exception('x') }}{% endif %}"), Error);
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
  auto parse_error = [](const std::string& src) { return error_of([&] { ChatTemplate t(src); }); };
  EXPECT_EQ(parse_error("a\nb\n{% foo %}"), "chat template: line 3 col 4: unknown tag 'foo'");
  EXPECT_EQ(parse_error("{{ 1 + }}"), "chat template: line 1 col 8: unexpected end of print statement");
  EXPECT_EQ(parse_error("x\n  {{ messages"), "chat template: line 2 col 3: unexpected end of template: missing '}}'");
  EXPECT_EQ(parse_error("{% if x %}\nabc"),
            "chat template: line 2 col 4: unexpected end of template: the 'if' block opened on line 1 is not closed "
            "(expected 'elif' or 'else' or 'endif')");
  EXPECT_EQ(parse_error("{% for m in messages %}{% endif %}"),
            "chat template: line 1 col 27: unexpected 'endif' inside the 'for' block opened on line 1");
  EXPECT_EQ(parse_error("\n{% endfor %}"), "chat template: line 2 col 4: unexpected 'endfor' at top level");
  EXPECT_EQ(parse_error("{% macro greet(n) %}hi{% endmacro %}"),
            "chat template: line 1 col 4: 'macro' tags are not supported by this chat-template renderer");
  EXPECT_EQ(parse_error("{{ x|frobnicate }}"),
            "chat template: line 1 col 6: no filter named 'frobnicate' (or it is not supported)");
  EXPECT_EQ(parse_error("{% break %}"), "chat template: line 1 col 4: 'break' outside of a loop");
  EXPECT_EQ(parse_error("{# open"), "chat template: line 1 col 1: missing end of comment tag");
  EXPECT_EQ(parse_error("{{ 'abc }}"), "chat template: line 1 col 4: unterminated string literal");
  EXPECT_EQ(parse_error("{{ (1 ] }}"), "chat template: line 1 col 7: unexpected ']', expected ')'");
  EXPECT_EQ(parse_error("{% set true = 1 %}"), "chat template: line 1 col 8: can't assign to 'true'");
  EXPECT_EQ(parse_error("{{ a b }}"), "chat template: line 1 col 6: expected end of print statement '}}', got 'b'");
  // Runtime errors carry the position of the failing expression.
  EXPECT_EQ(render_error("\n\n  {{ 1 + nothing }}"), "chat template: line 3 col 8: 'nothing' is undefined");
}

TEST(ChatTemplate, UnknownFiltersInsideIfFailOnlyWhenRun) {
  // jinja2 defers "no such filter" to run time inside if statements and if-expressions.
  EXPECT_EQ(render("{% if false %}{{ x|frobnicate }}{% endif %}ok"), "ok");
  EXPECT_EQ(render("{{ x|frobnicate if false else 'ok' }}"), "ok");
  EXPECT_NE(render_error("{% if true %}{{ x|frobnicate }}{% endif %}").find("no filter named 'frobnicate'"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------
// Limits

TEST(ChatTemplate, NestingDepthIsCapped) {
  auto repeat = [](const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
  };
  auto parse_error = [](const std::string& src) { return error_of([&] { ChatTemplate t(src); }); };
  EXPECT_NE(parse_error("{{ " + repeat("(", 300) + "1" + repeat(")", 300) + " }}").find("nested"), std::string::npos);
  EXPECT_NE(parse_error("{{ 1" + repeat(" + 1", 1000) + " }}").find("nested more than 256"), std::string::npos);
  EXPECT_NE(parse_error("{{ " + repeat("not ", 1000) + "1 }}").find("nested more than 256"), std::string::npos);
  EXPECT_NE(parse_error("{{ " + repeat("-", 1000) + "1 }}").find("nested more than 256"), std::string::npos);
  EXPECT_NE(parse_error("{{ 'x'" + repeat("|trim", 1000) + " }}").find("nested more than 256"), std::string::npos);
  EXPECT_NE(parse_error(repeat("{% if true %}", 300) + repeat("{% endif %}", 300)).find("nested more than 256"),
            std::string::npos);
  // Within the limits all is well.
  EXPECT_EQ(render("{{ " + repeat("(", 100) + "1" + repeat(")", 100) + repeat(" + 1", 200) + " }}"), "201");
  EXPECT_EQ(render(repeat("{% if true %}", 100) + "x" + repeat("{% endif %}", 100)), "x");
  // Values built up at run time are capped too, and self-references fail cleanly.
  EXPECT_NE(render_error("{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}")
                .find("nested more than 256"),
            std::string::npos);
  EXPECT_NE(render_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}").find("nested too deeply"),
            std::string::npos);
}

TEST(ChatTemplate, OutputSizeAndWorkAreCapped) {
  EXPECT_NE(render_error("{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}").find("64 MB"), std::string::npos);
  EXPECT_NE(render_error("{{ 'x' * 100000000 }}").find("64 MB"), std::string::npos);
  EXPECT_NE(render_error("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}")
                .find("64 MB"),
            std::string::npos);
  EXPECT_NE(render_error("{{ range(100001)|length }}").find("Range too big"), std::string::npos);
  // unique is quadratic: 100000 items would take 5e9 comparisons.
  EXPECT_NE(render_error("{{ range(100000)|unique|length }}").find("too expensive"), std::string::npos);
}

// ---------------------------------------------------------------------------------
// Robustness

// Mutations of real templates plus random strings over Jinja's alphabet: each one must
// render or throw tern::Error (never another exception, a crash or a hang).
TEST(ChatTemplate, GarbageTemplatesRenderOrThrowError) {
  const std::vector<std::string> seeds = {
      kBitNetWithBos,
      kLlama3Instruct,
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
      "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] }}\n{% endif %}\n"
      "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
      "{%- set ns = namespace(n=0) %}{%- for m in messages if m.role != 'system' %}{{- m.content|trim|tojson }}"
      "{%- set ns.n = ns.n + loop.index * 2 // 1 %}{%- else %}{{ raise_exception('none') }}{%- endfor %}{{ ns.n }}"
      "{# c #}{% raw %}{{ r }}{% endraw %}{{ messages[1:]|map(attribute='role')|join(', ') }}",
      "{{ 'a' ~ 1.5e3 ~ [1, (2,), {'k': none}] ~ ('%s-%d' % ('x', 2)) }}{{ messages[0].get('role', 'x')[::-1] }}",
  };
  const std::vector<std::string> vocab = {
      "{%",    "%}",        "{{",       "}}",      "{#",      "#}",      "-",        "+",      " ",          "\n",
      "\t",    "'",         "\"",       "(",       ")",       "[",       "]",        "{",      "}",          "|",
      ":",     ",",         ".",        "=",       "~",       "*",       "**",       "/",      "//",         "%",
      "if ",   "endif",     "for ",     " in ",    "endfor",  "else",    "elif ",    "set ",   "loop",       "ns",
      "not ",  " and ",     " or ",     " is ",    "defined", "none",    "1",        "0",      "-1",         "2.5",
      "1e308", "'x'",       "messages", "message", "content", "role",    "trim",     "length", "namespace(", "range(",
      "break", "continue",  "raw",      "endraw",  "\\",      "\\u00e9", "\xC3\xA9", "\xFF",   "tojson",     "items()",
      "join",  "recursive", "macro",    "}}}",     "{{{",
  };
  std::mt19937 rng(20240611);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  const Messages msgs = {{"system", "s"}, {"user", "u\xC3\xA9"}, {"assistant", ""}};
  int rendered = 0, failed = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string t;
    if (iter % 4 == 3) {  // pure random sequence of vocabulary pieces and bytes
      for (size_t n = pick(40); n > 0; --n)
        t += pick(5) == 0 ? std::string(1, static_cast<char>(rng())) : vocab[pick(vocab.size())];
    } else {
      t = seeds[pick(seeds.size())];
      for (size_t edits = 1 + pick(4); edits > 0; --edits) {
        size_t at = pick(t.size() + 1);
        switch (pick(4)) {
          case 0: t.erase(at, 1 + pick(8)); break;
          case 1: t.insert(at, vocab[pick(vocab.size())]); break;
          case 2: t.insert(at, t.substr(pick(t.size() + 1), pick(30))); break;
          default: t.insert(at, 1, static_cast<char>(rng())); break;
        }
      }
    }
    try {
      ChatTemplate ct(t);
      ct.render(inputs(msgs, iter % 2 == 0));
      ++rendered;
    } catch (const Error&) {
      ++failed;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-tern exception " << e.what() << " for template: " << t;
    }
  }
  EXPECT_EQ(rendered + failed, 2000);
  EXPECT_GT(rendered, 100);  // the mutations are mild enough that many still render
}

TEST(ChatTemplate, RenderIsThreadSafe) {
  ChatTemplate t(kLlama3Instruct);
  const std::string expected = t.render(inputs(kConversation));
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      for (int k = 0; k < 50; ++k) ok[i] += t.render(inputs(kConversation)) == expected;
    });
  for (auto& th : threads) th.join();
  for (int v : ok) EXPECT_EQ(v, 50);
}

}  // namespace
}  // namespace tern
