#!/usr/bin/env python3
"""Generate the text-side golden fixtures for `tern` (tokenizer, chat templates, perplexity).

    python3 tools/make_text_fixtures.py --tokenizer .cache/llama3/tokenizer.json \
        --tiny tests/fixtures/tiny --out OUTDIR
        # needs tokenizers, transformers, torch, numpy (run on the GPU machine; CPU only is used)
    python3 tools/make_text_fixtures.py --check
        # stdlib only: validates the corpus and the vocabulary-truncation / perplexity logic

Everything is deterministic (except hf_tokenizer_speed.json, a timing).  Outputs in OUTDIR:

    tokenizer_corpus.json        [{text, ids, ids_no_special, decoded}] for the real LLaMA-3
                                 tokenizer.json: ids = encode(text, add_special_tokens=False).ids;
                                 ids_no_special = the same with encode_special_tokens = True (special
                                 token text is NOT matched, it is split like ordinary text), null if
                                 the tokenizers version lacks that switch; decoded =
                                 decode(ids, skip_special_tokens=False)
    tokenizer_trunc.json         a valid tokenizer.json: the real one cut to the first N = 3000 BPE
                                 ids (merges kept iff both parts and the result are < N, original
                                 order), the 256 added tokens renumbered N, N+1, ... in original order
    tokenizer_trunc_corpus.json  [{text, ids}] with tokenizer_trunc.json (add_special_tokens=False)
    chat_templates.json          [{template_name, template, template_source, messages,
                                   add_generation_prompt, bos_token, eos_token, rendered, ids}]
                                 rendered by transformers' apply_chat_template(tokenize=False);
                                 ids = tokenizer(rendered, add_special_tokens=False).input_ids
    ppl.txt                      the English text scored for perplexity (UTF-8, exact bytes)
    tiny_model.json              tests/fixtures/tiny/hf_packed (BitNetForCausalLM, CPU float32):
                                 tokens of ppl.txt, llama-perplexity-style and sliding-window
                                 perplexity (n_ctx 64), greedy continuations of 3 prompts
    bench_text.txt               ~2 MB benchmark text (written only if the total stays < 3 MB)
    hf_tokenizer_speed.json      HF tokenizers single-thread Tokenizer.encode speed on bench text
    text_manifest.json           versions, truncation stats, round-trip failures, chat problems

Perplexity definitions (token list `tok` includes the BOS the tokenizer adds; n = len(tok)):
  llama-perplexity style, n_ctx = 64, first = n_ctx / 2:
      for chunk c in 0 .. n // n_ctx - 1: window = tok[c*64 : c*64+64] with window[0] := BOS;
      logits = model(window); for j in [32, 63): nll += -log_softmax(logits[j])[tok[c*64+j+1]]
      (float64), ppl = exp(total nll / count) and the running ppl after each chunk.
  sliding window, n_ctx = 64, stride = 32 (HF "perplexity of fixed-length models"):
      prev_end = 0; for begin in 0, 32, 64, ...: end = min(begin+64, n); window = tok[begin:end];
      targets t in [max(prev_end, begin+1), end) scored from logits[t-1-begin]; prev_end = end;
      stop after the window with end == n.  ppl = exp(token-weighted mean nll).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

TRUNC_N = 3000
N_CTX = 64
STRIDE = 32
BENCH_BYTES = 2_000_000
BENCH_PIECE = 1_000_000
SIZE_LIMIT = 3_000_000  # bytes, for everything written to OUTDIR
TINY_BOS, TINY_EOS, TINY_EOT = 509, 510, 511

# ----------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------
# microsoft/bitnet-b1.58-2B-4T tokenizer_config.json "chat_template".  The real file was not
# in the reference index; this string is the one quoted as copied verbatim from that field by
# independent public sources (a Kotlin preset `ModelChatTemplates.BITNET` "copied verbatim from
# the chat_template field of microsoft/bitnet-b1.58-2B-4T tokenizer_config.json", a conversion
# script that prepends a system line to the same template), and it is identical to the one in
# tests/fixtures/tiny/hf_packed/tokenizer_config.json (written by tools/make_fixtures.py).
# Note: it does NOT emit bos_token; BOS comes from add_bos_token at tokenization time.
BITNET_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)
BITNET_TEMPLATE_SOURCE = (
    "microsoft/bitnet-b1.58-2B-4T tokenizer_config.json chat_template as quoted verbatim by public "
    "third-party copies (the original file itself was not available offline); identical to "
    "tests/fixtures/tiny/hf_packed/tokenizer_config.json"
)

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json "chat_template" (current revision,
# with the add_generation_prompt guard; the first upload appended the assistant header always).
# Sources: public copies, e.g. distilabel's MAGPIE_TEMPLATES["meta-llama/Meta-Llama-3-8B-Instruct"]
# and a Vertex AI sample citing Meta-Llama-3-70B-Instruct tokenizer_config.json#L2053.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_TEMPLATE_SOURCE = (
    "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template (current revision), "
    "from public verbatim copies (distilabel MAGPIE_TEMPLATES; Vertex AI sample citing "
    "Meta-Llama-3-70B-Instruct tokenizer_config.json)"
)

CONVERSATIONS = [
    ("single_user", [{"role": "user", "content": "Hey, are you conscious? Can you talk to me?"}]),
    (
        "multi_turn",
        [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
    ),
    (
        "with_system",
        [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "Name three primary colors."},
        ],
    ),
    (
        "whitespace",
        [
            {"role": "system", "content": "  \n You are terse.\n\n  "},
            {"role": "user", "content": "\n\n  What is 2+2?  \n"},
            {"role": "assistant", "content": " 4 \n"},
            {"role": "user", "content": "\tAnd 3 + 3?\t\r\n"},
        ],
    ),
    (
        "special_text_in_content",
        [
            {"role": "user", "content": "Print the literal string <|eot_id|> and stop."},
            {"role": "assistant", "content": "<|eot_id|>"},
            {"role": "user", "content": "Thanks! Café, naïve, 日本語, 👍🏽"},
        ],
    ),
]


def render_bitnet_manually(messages, add_generation_prompt: bool, bos_token: str) -> str:
    out = "".join(m["role"].capitalize() + ": " + m["content"].strip() + "<|eot_id|>" for m in messages)
    return out + ("Assistant: " if add_generation_prompt else "")


def render_llama3_manually(messages, add_generation_prompt: bool, bos_token: str) -> str:
    out = ""
    for i, m in enumerate(messages):
        c = "<|start_header_id|>" + m["role"] + "<|end_header_id|>\n\n" + m["content"].strip() + "<|eot_id|>"
        out += (bos_token + c) if i == 0 else c
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


TEMPLATES = [
    ("bitnet-b1.58-2B-4T", BITNET_CHAT_TEMPLATE, BITNET_TEMPLATE_SOURCE, render_bitnet_manually),
    ("Meta-Llama-3-8B-Instruct", LLAMA3_CHAT_TEMPLATE, LLAMA3_TEMPLATE_SOURCE, render_llama3_manually),
]

# ----------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------
PROSE = [
    "Hello",
    "hello",
    "HELLO",
    " Hello",
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money in my purse, I thought I would sail about a little.",
    "In the beginning God created the heaven and the earth.",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune,",
    "She sells sea-shells on the sea-shore; the shells she sells are sea-shells, I'm sure.",
    "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal, thank you very much.",
    "The U.S.A. and the U.K. signed the agreement on Jan. 5th, e.g. before the deadline (i.e. early).",
    "Wait... what?! No way!!! Are you serious???",
    "He said, \"I'll be back,\" and left; she replied, 'Fine.'",
    "\u201cSmart quotes\u201d and \u2018single ones\u2019 \u2014 plus an em dash \u2013 and an en dash\u2026",
    "Well-known, state-of-the-art, up-to-date, twenty-one, e-mail.",
    "a",
    "I",
    "A.",
    "ok",
    "OK!",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Large language models predict the next token given all previous tokens in the context window.",
    "The mitochondria is the powerhouse of the cell.",
    "Ternary weights take values in {-1, 0, +1}, so a matrix multiply needs only additions and subtractions.",
    "Please summarize the following article in three bullet points.",
    "Translate to French: Where is the train station?",
    "Q: What is the boiling point of water at sea level?\nA: 100 degrees Celsius (212 degrees Fahrenheit).",
    "Dear Sir or Madam,\n\nI am writing to inquire about the position advertised on your website.\n\nYours faithfully,\nJane Doe",
    "Once upon a time, in a land far, far away, there lived a curious little robot named Bit.",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE_CASE PascalCase",
    "iPhone eBay McDonald's O'Neill MacArthur DiCaprio",
    "HTTP/1.1 200 OK",
    "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS #@!",
    "lowercase sentence without any punctuation at all",
    "(parenthetical) [bracketed] {braced} <angled>",
    "@user #hashtag $TICKER %percent ^caret &ampersand *star",
    "C++ and C# and F# and .NET and Node.js",
    "path/to/file.txt and C:\\Windows\\System32\\drivers\\etc\\hosts",
    "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/",
    "...",
    "!!!",
    "???",
    "?!?!",
    "--",
    "---",
    "___",
    "***",
    "\u2014",
    "\u2026",
    "\u00ab\u00bb \u201e\u201c \u2039\u203a",
]

CONTRACTIONS = [
    "I'M",
    "I'm",
    "i'm",
    "you'Re",
    "you're",
    "YOU'RE",
    "DON'T",
    "don't",
    "Don'T",
    "we'll",
    "WE'LL",
    "We'Ll",
    "they've",
    "THEY'VE",
    "she'd",
    "SHE'D",
    "it's",
    "IT'S",
    "It'S",
    "'s",
    "'S",
    "'t",
    "'re 've 'm 'll 'd",
    "'RE 'VE 'M 'LL 'D",
    "I'm sure you're right, but we'll see if they've done what she'd said it's like.",
    "y'all'd've",
    "'tis the season",
    "o'clock",
    "rock'n'roll",
    "the dog's bone and James' book",
    "don\u2019t I\u2019m it\u2019s",
    "I 'm you 're",
    "''",
    "'",
    "'''quoted'''",
    "can't won't shan't ain't",
    "x's y'S z'll",
]

CODE = [
    "def main():\n    print(\"Hello, world!\")\n\nif __name__ == \"__main__\":\n    main()\n",
    "import numpy as np\n\nx = np.arange(10, dtype=np.float32)\ny = x ** 2 + 3 * x - 1\n",
    "class Foo(Base):\n    def __init__(self, a: int = 0) -> None:\n        super().__init__()\n        self.a = a\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tcontinue\n\tprint(i)\n",
    "lambda x: x[::-1] if isinstance(x, str) else [v for v in x if v]",
    "result = {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1])}",
    "@dataclass(frozen=True)\nclass Point:\n    x: float\n    y: float\n",
    "try:\n    value = int(s)\nexcept ValueError as e:\n    raise RuntimeError(f\"bad value {s!r}\") from e\n",
    "#include <iostream>\n\nint main() {\n    std::cout << \"Hello\" << std::endl;\n    return 0;\n}\n",
    "template <typename T>\nconstexpr T clamp(T v, T lo, T hi) noexcept { return v < lo ? lo : (v > hi ? hi : v); }",
    "std::vector<std::unique_ptr<Node>> nodes; nodes.emplace_back(std::make_unique<Node>(42));",
    "auto [it, ok] = map.try_emplace(key, std::move(value));",
    "for (size_t i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "__global__ void k(float* __restrict__ y, const int8_t* x) { y[threadIdx.x] = x[threadIdx.x]; }",
    "namespace tern::cpu {\n// TODO(someone): fix this\n}  // namespace tern::cpu\n",
    "{\"name\": \"tern\", \"version\": \"0.1.0\", \"tags\": [\"llm\", \"bitnet\"], \"ok\": true, \"n\": null}",
    "{\n  \"a\": 1,\n  \"b\": [1, 2, 3],\n  \"c\": {\"d\": \"e\"}\n}",
    "[{\"id\":1,\"score\":0.95},{\"id\":2,\"score\":-1.5e-3}]",
    "{\"escaped\": \"line\\nbreak \\\"quote\\\" \\u00e9\"}",
    "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do\n  echo \"$f\" | tr 'a-z' 'A-Z'\ndone\n",
    "ls -la /usr/local/bin | grep -E '^-.*x' | awk '{print $9}' > out.txt 2>&1",
    "export PATH=\"$HOME/.local/bin:$PATH\" && cd ~/src && make -j$(nproc)",
    "curl -sSL https://example.com/install.sh | sh -s -- --prefix=/opt",
    "git commit -m \"Fix off-by-one in tokenizer\" && git push origin main",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name ASC LIMIT 10;",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{:?}\", v); }",
    "const add = (a, b) => a + b; console.log(`sum: ${add(1, 2)}`);",
    "x+=1;y-=2;z*=3;w/=4;a%=5;b<<=1;c>>=2;d&=e|f^g;",
    "if (a != b && c <= d || !e) { return -1; }",
    "    indented with four spaces",
    "\tindented with a tab",
    "        eight spaces",
    "\t\t\ttabs\t\tinside\ttext",
]

_NUM_DIGITS = "12345678901234567890123456789"
NUMBERS = (
    [_NUM_DIGITS[:k] for k in range(1, 21)]
    + ["0", "00", "000", "0000", "007", "1000000", "999999999999", "3.14159265358979", "-42", "+42", "-0.001"]
    + ["1,000", "1,234,567", "1.234.567,89", "1 234 567", "1'000'000", "1_000_000", "12,34,56,789"]
    + ["1e10", "6.022e23", "1.5E-3", "0x1F", "0xDEADBEEF", "0b1010", "0o777"]
    + ["2024-01-15", "15/01/2024", "12:34:56", "12:30pm", "2024-01-15T12:34:56.789Z"]
    + ["$1,299.99", "\u20ac42", "\u00a3100", "\u00a510000", "50%", "100\u00b0C", "1st 2nd 3rd 4th 21st"]
    + ["v1.2.3", "192.168.0.1", "::1", "+1 (555) 123-4567", "ISBN 978-3-16-148410-0"]
    + ["abc123def", "a1b2c3", "x86_64", "H2O", "CO2", "COVID-19", "4K 8K 1080p"]
    + ["\u0663\u0664\u0665", "\uff11\uff12\uff13\uff14", "\u00b2\u00b3", "\u216b", "\u00bd \u00bc \u00be", "\u0967\u0968\u0969", "\u2460\u2461\u2462"]
    + ["12345 67890", "1 2 3 4 5", "1\n2\n3", "pi is 3.14, e is 2.718, and 1/3 is 0.333..."]
)

WHITESPACE = [
    "",
    " ",
    "  ",
    "   ",
    "    ",
    "\t",
    "\t\t",
    " \t ",
    "\t \t",
    "a  b",
    "a   b",
    "a    b",
    "a \t b",
    "hello   ",
    "hello\t",
    "hello \t",
    "  hello",
    "\thello",
    "\n",
    "\n\n",
    "\n\n\n",
    "\n \n",
    " \n",
    "\n ",
    "a\n\n\nb",
    "   \n   ",
    "x \n y",
    "trailing spaces at end of line   \nnext line",
    "word \n\n  word",
    "a\u000bb\u000cc",
    "a\u0085b",
    "a\u2028b\u2029c",
    " " * 17,
    "end with newline\n",
]

LINE_ENDINGS = [
    "a\r\nb",
    "a\rb",
    "\r",
    "\r\n",
    "\r\n\r\n",
    "line1\r\nline2\r\n",
    "x\r\r\ny",
    " \r\n",
    "\n\r",
    "a.\r\n",
    "end:\r",
    "\r\r\r",
    "mixed\nline\r\nendings\rhere",
    "  \r\n  indented after CRLF",
]

EMOJI = [
    "\U0001F600",
    "\U0001F44D\U0001F3FD",
    "\u270B\U0001F3FB",
    "\U0001F9D1\U0001F3FF\u200D\U0001F4BB",
    "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
    "\U0001F469\u200D\u2764\uFE0F\u200D\U0001F48B\u200D\U0001F468",
    "\U0001F3F3\uFE0F\u200D\U0001F308",
    "\U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5",
    "\U0001F1EC\U0001F1E7",
    "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F",
    "\u2764\uFE0F",
    "\u263A\uFE0E",
    "1\uFE0F\u20E3 #\uFE0F\u20E3",
    "Hello \U0001F44B world \U0001F30D!",
    "\U0001F916\U0001F916\U0001F916",
    "\U0001F600\U0001F603\U0001F604\U0001F601",
    "\U0001F642 ok",
    "\U0001F525\U0001F4AF \U0001F680",
    "I \u2764\uFE0F NY",
    "\u2600\u2601\u2602\u2603",
]

CJK = [
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u4e2d\u534e\u4eba\u6c11\u5171\u548c\u56fd",
    "\u6211\u7231\u81ea\u7136\u8bed\u8a00\u5904\u7406\u3002",
    "\u6771\u4eac\u30bf\u30ef\u30fc",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c",
    "\u30ab\u30bf\u30ab\u30ca",
    "\u3072\u3089\u304c\u306a",
    "\uff76\uff80\uff76\uff85",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002",
    "\u6f22\u5b57\u304b\u306a\u4ea4\u3058\u308a\u6587",
    "\u300c\u5f15\u7528\u300d\u300e\u4e8c\u91cd\u300f",
    "\uc548\ub155\ud558\uc138\uc694",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8 \ucc98\ub9ac",
    "\u3131\u3134\u3137",
    "\u1100\u1161\u11a8",
    "\U00020000\U00020001",
    "English \u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 mixed",
    "\u8fd9\u662f\u4e00\u4e2a\u5f88\u957f\u7684\u53e5\u5b50\uff0c\u5305\u542b\u6807\u70b9\u7b26\u53f7\u3001\u6570\u5b57123\u548c\u82f1\u6587ABC\u3002",
]

RTL = [
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0627\u0644\u0633\u0644\u0627\u0645 \u0639\u0644\u064a\u0643\u0645",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 123 English",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u05d1\u05bc\u05b0\u05e8\u05b5\u05d0\u05e9\u05b4\u05c1\u05d9\u05ea",
    "mixed \u200fRTL\u200e marks",
    "\u0641\u0627\u0631\u0633\u06cc: \u0633\u0644\u0627\u0645",
    "\u0627\u064f\u0631\u062f\u064f\u0648",
    "\u202bembedded\u202c \u202eoverride\u202c",
]

INDIC_THAI = [
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
    "\u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\u0e01\u0e23\u0e38\u0e07\u0e40\u0e17\u0e1e\u0e21\u0e2b\u0e32\u0e19\u0e04\u0e23",
    "\u0ba4\u0bae\u0bbf\u0bb4\u0bcd",
    "\u09ac\u09be\u0982\u09b2\u09be",
    "\u0a97\u0ac1\u0a9c\u0ab0\u0abe\u0aa4\u0ac0",
    "\u0c95\u0ca8\u0ccd\u0ca8\u0ca1",
    "\u1781\u17d2\u1798\u17c2\u179a",
]

OTHER_SCRIPTS = [
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0423\u041a\u0420\u0410\u0407\u041d\u0421\u042c\u041a\u0410 \u043c\u043e\u0432\u0430",
    "\u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8",
    "\u0540\u0561\u0575\u0565\u0580\u0565\u0576",
    "\u12a0\u121b\u122d\u129b",
    "\u00dcn\u00efc\u00f6d\u00e9 stra\u00dfe \u1e9e",
    "\u0130stanbul \u0131\u015f\u0131k",
    "\ufb01 ligature \ufb02ow",
    "\u01c4 \u01c5 \u01c6",
    "\u1f08\u03bd\u03b8\u03c1\u03c9\u03c0\u03bf\u03c2",
]

COMBINING = [
    "caf\u00e9",
    "cafe\u0301",
    "na\u00efve",
    "nai\u0308ve",
    "\u00c5",
    "A\u030a",
    "\u212b",
    "\u00f1 n\u0303",
    "Z\u0351\u0346\u036ba\u0327\u0302l\u0301g\u0358o",
    "s\u0323\u0307 \u1e69",
    "e\u0301\u0301\u0301\u0301",
    "\u0301",
    "a\u20dd",
    "Vi\u1ec7t Nam Ti\u00ea\u0301ng Vi\u00ea\u0323t",
]

UNICODE_SPACES = [
    "a\u00a0b",
    "100\u00a0km",
    "\u00a0",
    "\u00a0\u00a0x",
    "a\u2009b",
    "a\u3000b",
    "\u3000",
    "a\u2002b\u2003c",
    "a\u202fb",
    "x\u205fy",
    "a\u1680b",
    "word\u00a0 \u00a0word",
    "\u3000\u3000\u5168\u89d2\u7a7a\u767d",
]

ZERO_WIDTH = [
    "a\u200bb",
    "\u200b",
    "a\u200cb",
    "a\u200db",
    "\ufeffBOM at start",
    "a\u2060b",
    "\u200e\u200f",
    "soft\u00adhyphen",
    "zero\u200b\u200bwidth\u200b",
]

SPECIAL = [
    "<|begin_of_text|>",
    "<|begin_of_text|>Hello",
    "Hi<|eot_id|>",
    "<|eot_id|>",
    "<|eot_id|><|eot_id|>",
    " <|eot_id|> ",
    "abc<|eot_id|>def",
    "<|reserved_special_token_5|>",
    "<|reserved_special_token_250|>",
    "<|reserved_special_token_251|>",
    "<|eot",
    "<|eot_id",
    "<|eot_id|",
    "eot_id|>",
    "<|EOT_ID|>",
    "<<|eot_id|>>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|begin_of_text|>User: Hey, are you conscious?<|eot_id|>Assistant: ",
    "<|end_of_text|>",
    "<|",
    "|>",
    "<| eot_id |>",
    "<s></s><unk>[CLS][SEP]",
]

LONG = [
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious",
    "a" * 300,
    "ab" * 150,
    "Rindfleischetikettierungs\u00fcberwachungsaufgaben\u00fcbertragungsgesetz",
    "1234567890" * 20,
    "\u30fc" * 40,
    "\U0001F600" * 25,
    "=" * 120,
    "-" * 80 + "\n" + "=" * 80,
    "x" * 1000,
    "the " * 60,
]

URLS = [
    "https://example.com/path?query=1&b=2#frag",
    "http://localhost:8080/api/v1/users",
    "ftp://files.example.org/pub/file.tar.gz",
    "mailto:user.name+tag@example.com",
    "https://en.wikipedia.org/wiki/Byte_pair_encoding",
    "www.example.co.uk",
    "git@github.com:user/repo.git",
    "https://\u4f8b\u3048.jp/\u30d1\u30b9?q=%E6%97%A5",
    "See https://huggingface.co/microsoft/bitnet-b1.58-2B-4T for details.",
]

MARKDOWN = [
    "| Name | Age | City |\n|------|----:|:----:|\n| Alice | 30 | Paris |\n| Bob | 4 | \u6771\u4eac |\n",
    "# Heading 1\n## Heading 2\n### Heading 3\n",
    "- item one\n- item two\n  - nested item\n* star item\n1. numbered\n2. list\n",
    "**bold** *italic* ~~strike~~ `code` [link](https://example.com) ![img](a.png)",
    "```python\nprint('fenced')\n```\n",
    "> quoted line\n> another\n\n---\n",
    "Term\n: definition\n\n<details><summary>More</summary>hidden</details>",
]

MATH = [
    "\u2211_{i=1}^{n} x_i\u00b2 \u2264 \u221e",
    "\u2200x \u2208 \u211d: x\u00b2 \u2265 0",
    "E = mc\u00b2",
    "a \u2260 b \u2248 c \u2261 d",
    "\u221a2 \u2248 1.41421",
    "\u222b\u2080\u00b9 f(x) dx",
    "\u03b1 \u03b2 \u03b3 \u03b4 \u03b5 \u03bb \u03c0 \u03a9",
    "\U0001D538\U0001D539\u2102 \U0001D54F",
    "$\\frac{a}{b} + \\sqrt{x^2 + y^2}$",
    "2 + 2 = 4",
    "x^2 - 4x + 4 = 0",
    "\u2264\u2265\u2260\u00b1\u00d7\u00f7",
    "\u2202f/\u2202x",
    "\u27e8\u03c8|\u03c6\u27e9",
    "f(x) = { x if x > 0; -x otherwise }",
]

ODD = [
    "\x00",
    "a\x00b",
    "\x01\x02\x1f",
    "\x7f",
    "\ufffd",
    "\ue000",
    "\uffff",
    "\U0010fffd",
    "\u00a9 \u00ae \u2122",
    "\u0000\u0000",
]


def build_corpus() -> list[str]:
    groups = [
        PROSE, CONTRACTIONS, CODE, NUMBERS, WHITESPACE, LINE_ENDINGS, EMOJI, CJK, RTL, INDIC_THAI,
        OTHER_SCRIPTS, COMBINING, UNICODE_SPACES, ZERO_WIDTH, SPECIAL, LONG, URLS, MARKDOWN, MATH, ODD,
    ]
    out, seen = [], set()
    for g in groups:
        for s in g:
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


# ----------------------------------------------------------------------------------
# Perplexity text (plain English, ASCII)
# ----------------------------------------------------------------------------------
PPL_TEXT = """\
The history of computing is a story of people trying to make machines do arithmetic faster than they could do it by hand. Early mechanical calculators used gears and levers to add and subtract numbers, and a skilled operator could multiply by repeating additions. In the nineteenth century, Charles Babbage designed a much more ambitious machine that could follow a sequence of instructions, and Ada Lovelace wrote notes describing how it might compute the Bernoulli numbers. Neither machine was finished in their lifetimes, but the ideas survived.

In the twentieth century, engineers replaced gears with relays and then with vacuum tubes. The first electronic computers filled entire rooms, consumed enormous amounts of power, and failed often, because a single burned out tube could stop a calculation. Programs were entered by setting switches or plugging cables into boards. When the transistor was invented, computers became smaller, cheaper, and far more reliable. Integrated circuits then placed many transistors on a single chip, and the number of transistors on a chip doubled roughly every two years for several decades.

Software grew alongside the hardware. Programmers moved from writing machine code by hand to using assemblers, and then to high level languages such as Fortran, Lisp, and C. Operating systems allowed several programs to share one machine, and networks allowed machines to share data with each other. By the end of the century, personal computers were common in homes and offices, and the World Wide Web had connected millions of them.

Language models are one of the more recent chapters in this story. A language model assigns a probability to every possible next word, or more precisely to every possible next token, given the text that came before it. Modern models are neural networks with many layers, and they learn these probabilities by reading very large collections of text. During training, the model sees a passage, predicts each token from the ones before it, and adjusts its weights to make the correct tokens more likely.

Perplexity is the usual way to measure how well a language model predicts text. It is the exponential of the average negative log probability that the model gives to each correct token. A model that always assigned probability one to the right token would have a perplexity of one, while a model that guessed uniformly among a thousand tokens would have a perplexity of one thousand. Lower is better, and small changes in the way the text is split into windows can change the number, so careful evaluations always describe exactly how it was computed.

Running these models efficiently is a challenge of its own. Each generated token requires reading every weight of the network from memory, so the speed of generation is often limited by memory bandwidth rather than by arithmetic. One way to reduce the cost is to store the weights with fewer bits. Some recent models are trained so that every weight is minus one, zero, or plus one. With such ternary weights, a matrix multiplication needs no real multiplications at all, only additions and subtractions, and the whole model fits in a small fraction of the memory that a conventional model would need.

Of course, a fast engine is only useful if it is also correct. The safest way to build one is to compare its outputs against a trusted reference at every step: the tokenizer must split text into exactly the same tokens, the chat template must produce exactly the same prompt, and the model must produce the same probabilities for the same input. Small test fixtures, generated once by a reference implementation and checked into the repository, make these comparisons cheap to run every time the code changes.

None of this replaces reading the code. A test can only check what its author thought of, so the best fixtures include the awkward cases: empty input, a single character, very long words, unusual spaces, and text in many languages. When a test fails, the first question is always whether the reference or the engine is wrong.
"""

GREEDY_PROMPTS = ["Once upon a time", "The capital of France is", "def main():"]


# ----------------------------------------------------------------------------------
# Pure logic (tested by --check)
# ----------------------------------------------------------------------------------
def _split_merge(m):
    """A merges entry -> (left, right, kind); kind 'str' ("a b") or 'pair' (["a", "b"])."""
    if isinstance(m, str):
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"cannot split merge {m!r}")
        return parts[0], parts[1], "str"
    if isinstance(m, (list, tuple)) and len(m) == 2:
        return m[0], m[1], "pair"
    raise ValueError(f"unknown merge entry {m!r}")


def _remap_post_processor(pp, id_map: dict[int, int]):
    """Renumber ids in a TemplateProcessing's special_tokens (recursing into Sequence)."""
    if isinstance(pp, dict):
        out = {}
        for k, v in pp.items():
            if k == "special_tokens" and isinstance(v, dict):
                nv = {}
                for name, st in v.items():
                    st = dict(st)
                    if "ids" in st:
                        st["ids"] = [id_map.get(i, i) for i in st["ids"]]
                    nv[name] = st
                out[k] = nv
            else:
                out[k] = _remap_post_processor(v, id_map)
        return out
    if isinstance(pp, list):
        return [_remap_post_processor(v, id_map) for v in pp]
    return pp


def truncate_tokenizer(tok: dict, n: int) -> tuple[dict, dict]:
    """Cut a BPE tokenizer.json (as a dict) to the ids < n; added tokens renumbered n, n+1, ...

    Returns (new tokenizer dict, info).  Keeps normalizer / pre_tokenizer / decoder /
    post_processor (ids remapped) / model options (ignore_merges, byte_fallback, ...) as they are.
    """
    model = tok["model"]
    if model.get("type") != "BPE":
        raise ValueError("only BPE tokenizers can be truncated")
    vocab = {t: i for t, i in model["vocab"].items() if i < n}
    if sorted(vocab.values()) != list(range(n)):
        raise ValueError(f"vocab ids below {n} are not dense 0..{n - 1}")
    merges = []
    for m in model["merges"]:
        a, b, _ = _split_merge(m)
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append(m)
    added = list(tok.get("added_tokens") or [])  # original order
    id_map = {}
    new_added = []
    for k, t in enumerate(added):
        nt = dict(t)
        id_map[t["id"]] = n + k
        nt["id"] = n + k
        new_added.append(nt)
    new_model = {key: (vocab if key == "vocab" else merges if key == "merges" else copy.deepcopy(val)) for key, val in model.items()}
    out = {}
    for key, val in tok.items():
        if key == "model":
            out[key] = new_model
        elif key == "added_tokens":
            out[key] = new_added
        elif key == "post_processor":
            out[key] = _remap_post_processor(copy.deepcopy(val), id_map)
        else:
            out[key] = copy.deepcopy(val)
    info = {
        "n": n,
        "vocab_kept": len(vocab),
        "merges_kept": len(merges),
        "merges_original": len(model["merges"]),
        "added_tokens": len(new_added),
        "added_id_map_first": {str(k): v for k, v in list(id_map.items())[:3]},
        "ignore_merges": new_model.get("ignore_merges"),
    }
    return out, info


def log_softmax64(row):
    """log_softmax of a sequence of floats in float64 (pure python; used by --check)."""
    m = max(row)
    s = math.fsum(math.exp(x - m) for x in row)
    lse = m + math.log(s)
    return [x - lse for x in row]


def llama_perplexity(tokens: list[int], bos: int, logprobs_fn, n_ctx: int = N_CTX) -> dict:
    """llama.cpp `llama-perplexity` scoring.  logprobs_fn(ids) -> 2-D indexable [len(ids)][V] log-probs (float64)."""
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    nll, count = 0.0, 0
    running, chunk_nll = [], []
    for c in range(n_chunk):
        start = c * n_ctx
        window = list(tokens[start : start + n_ctx])
        window[0] = bos
        lp = logprobs_fn(window)
        cn = 0.0
        for j in range(first, n_ctx - 1):
            cn += -float(lp[j][tokens[start + j + 1]])
        nll += cn
        count += n_ctx - 1 - first
        chunk_nll.append(cn)
        running.append(math.exp(nll / count))
    return {
        "n_ctx": n_ctx,
        "first": first,
        "n_chunks": n_chunk,
        "scored_per_chunk": n_ctx - 1 - first,
        "n_scored": count,
        "nll_sum": nll,
        "ppl": math.exp(nll / count) if count else None,
        "chunk_nll_sum": chunk_nll,
        "running_ppl": running,
    }


def sliding_perplexity(tokens: list[int], logprobs_fn, n_ctx: int = N_CTX, stride: int = STRIDE) -> dict:
    n = len(tokens)
    prev_end = 0
    nll, count = 0.0, 0
    windows = []
    scored = []
    for begin in range(0, n, stride):
        end = min(begin + n_ctx, n)
        lp = logprobs_fn(list(tokens[begin:end]))
        lo = max(prev_end, begin + 1)
        wn = 0.0
        for t in range(lo, end):
            wn += -float(lp[t - 1 - begin][tokens[t]])
            scored.append(t)
        nll += wn
        count += max(0, end - lo)
        windows.append({"begin": begin, "end": end, "first_target": lo, "n_scored": max(0, end - lo), "nll_sum": wn})
        prev_end = end
        if end == n:
            break
    assert scored == list(range(1, n)), "sliding window must score every target 1..n-1 exactly once"
    return {
        "n_ctx": n_ctx,
        "stride": stride,
        "n_windows": len(windows),
        "n_scored": count,
        "nll_sum": nll,
        "ppl": math.exp(nll / count) if count else None,
        "windows": windows,
    }


def bench_text(corpus: list[str], target_bytes: int = BENCH_BYTES) -> str:
    base = PPL_TEXT + "\n" + "\n".join(corpus) + "\n"
    reps = target_bytes // len(base.encode("utf-8")) + 1
    text = base * reps
    raw = text.encode("utf-8")[:target_bytes]
    return raw.decode("utf-8", errors="ignore")


def split_pieces(text: str, piece_bytes: int = BENCH_PIECE) -> list[str]:
    """Split into round(total / piece_bytes) pieces of about equal UTF-8 size, at line ends."""
    total = len(text.encode("utf-8"))
    n_pieces = max(1, round(total / piece_bytes))
    target = total / n_pieces
    pieces, cur, cur_b = [], [], 0
    for line in text.splitlines(keepends=True):
        lb = len(line.encode("utf-8"))
        if cur and cur_b + lb > target and len(pieces) < n_pieces - 1:
            pieces.append("".join(cur))
            cur, cur_b = [], 0
        cur.append(line)
        cur_b += lb
    if cur:
        pieces.append("".join(cur))
    return pieces


def dump_list(path: Path, items: list) -> None:
    """JSON list, one element per line (compact but diffable); UTF-8, non-ASCII kept literal."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("[\n")
        for k, it in enumerate(items):
            f.write(json.dumps(it, ensure_ascii=False))
            f.write(",\n" if k + 1 < len(items) else "\n")
        f.write("]\n")


def dump_obj(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------------
# --check (stdlib only)
# ----------------------------------------------------------------------------------
def run_check() -> int:
    errors = []
    corpus = build_corpus()
    raw_total = sum(len(g) for g in [PROSE, CONTRACTIONS, CODE, NUMBERS, WHITESPACE, LINE_ENDINGS, EMOJI, CJK, RTL,
                                     INDIC_THAI, OTHER_SCRIPTS, COMBINING, UNICODE_SPACES, ZERO_WIDTH, SPECIAL, LONG,
                                     URLS, MARKDOWN, MATH, ODD])
    print(f"corpus: {len(corpus)} unique strings ({raw_total - len(corpus)} duplicates dropped)")
    if not 250 <= len(corpus) <= 500:
        errors.append(f"corpus size {len(corpus)} outside 250..500")
    for i, s in enumerate(corpus):
        if not isinstance(s, str):
            errors.append(f"corpus[{i}] is {type(s).__name__}")
            continue
        try:
            s.encode("utf-8", "strict")
        except UnicodeEncodeError as e:
            errors.append(f"corpus[{i}] {s!r}: not valid UTF-8 (lone surrogate?): {e}")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in s):
            errors.append(f"corpus[{i}] {s!r}: contains a surrogate code point")
        if json.loads(json.dumps(s, ensure_ascii=False)) != s or json.loads(json.dumps(s)) != s:
            errors.append(f"corpus[{i}] {s!r}: JSON round trip failed")
    joined = "\x1e".join(corpus)
    required = {
        "empty string": "" in corpus,
        "single space": " " in corpus,
        "CRLF": "\r\n" in joined,
        "lone CR": any("\r" in s.replace("\r\n", "") for s in corpus),
        "tab": "\t" in joined,
        "U+00A0": "\u00a0" in joined,
        "U+2009": "\u2009" in joined,
        "U+3000": "\u3000" in joined,
        "ZWJ": "\u200d" in joined,
        "ZWSP": "\u200b" in joined,
        "flag": "\U0001F1FA\U0001F1F8" in joined,
        "skin tone": "\U0001F3FD" in joined,
        "combining acute": "e\u0301" in joined,
        "precomposed e-acute": "\u00e9" in joined,
        "Hebrew": "\u05e9" in joined,
        "Arabic": "\u0645" in joined,
        "Devanagari": "\u0928" in joined,
        "Thai": "\u0e2a" in joined,
        "Hangul": "\uc548" in joined,
        "kana": "\u3053" in joined,
        "<|begin_of_text|>": "<|begin_of_text|>" in joined,
        "<|eot_id|>": "<|eot_id|>" in joined,
        "<|reserved_special_token_5|>": "<|reserved_special_token_5|>" in joined,
        "partial <|eot": "<|eot" in corpus,
        "I'M": "I'M" in corpus,
        "you'Re": "you'Re" in corpus,
        "DON'T": "DON'T" in corpus,
        "URL": any(s.startswith("https://") for s in corpus),
        "markdown table": any(s.startswith("| ") for s in corpus),
        "very long word": any(len(s) >= 300 and " " not in s for s in corpus),
        "20-digit number": "12345678901234567890" in corpus,
    }
    for k, ok in required.items():
        if not ok:
            errors.append(f"corpus lacks {k}")
    print(f"corpus: {sum(required.values())}/{len(required)} required features present, "
          f"{sum(len(s.encode('utf-8')) for s in corpus)} UTF-8 bytes in all")

    # truncation on a tiny fake tokenizer.json
    fake = {
        "version": "1.0",
        "added_tokens": [
            {"id": 9, "content": "<|a|>", "special": True},
            {"id": 10, "content": "<|b|>", "special": True},
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel"},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing", "single": [], "pair": [],
             "special_tokens": {"<|a|>": {"id": "<|a|>", "ids": [9], "tokens": ["<|a|>"]}}},
        ]},
        "decoder": {"type": "ByteLevel"},
        "model": {
            "type": "BPE", "ignore_merges": True, "byte_fallback": False,
            "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "cab": 6, "ca": 7, "bca": 8},
            "merges": ["a b", "b c", "ab c", "c ab", "c a", "bc a"],
        },
    }
    for style in ("str", "pair"):
        f = copy.deepcopy(fake)
        if style == "pair":
            f["model"]["merges"] = [m.split(" ") for m in f["model"]["merges"]]
        t, info = truncate_tokenizer(f, 6)
        # "c ab" -> cab (6) and "c a" -> ca (7) go: the result is >= N; "bc a" goes: bca is 8
        exp_merges = ["a b", "b c", "ab c"] if style == "str" else [["a", "b"], ["b", "c"], ["ab", "c"]]
        checks = {
            "vocab": t["model"]["vocab"] == {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5},
            "merges": t["model"]["merges"] == exp_merges,
            "added ids": [a["id"] for a in t["added_tokens"]] == [6, 7],
            "added contents": [a["content"] for a in t["added_tokens"]] == ["<|a|>", "<|b|>"],
            "post_processor ids": t["post_processor"]["processors"][1]["special_tokens"]["<|a|>"]["ids"] == [6],
            "ignore_merges": t["model"]["ignore_merges"] is True,
            "original untouched": f["model"]["vocab"]["cab"] == 6 and f["added_tokens"][0]["id"] == 9,
            "other keys": t["pre_tokenizer"] == f["pre_tokenizer"] and t["decoder"] == f["decoder"],
        }
        for k, ok in checks.items():
            if not ok:
                errors.append(f"truncate_tokenizer ({style} merges): {k} wrong: {t}")
        print(f"truncate_tokenizer ({style} merges): {sum(checks.values())}/{len(checks)} checks ok, info {info}")
    try:
        truncate_tokenizer({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []}}, 3)
        errors.append("truncate_tokenizer accepted a non-dense vocab")
    except ValueError:
        pass

    # perplexity bookkeeping on a fake deterministic model (vocab 7)
    V = 7

    def fake_lp(ids):
        rows = []
        for p, t in enumerate(ids):
            rows.append(log_softmax64([((t * 31 + p * 7 + v * 13) % 11) / 3.0 for v in range(V)]))
        return rows

    toks = [(i * 5 + 3) % V for i in range(200)]
    lp = llama_perplexity(toks, 6, fake_lp, n_ctx=64)
    if lp["n_chunks"] != 3 or lp["n_scored"] != 3 * 31 or len(lp["running_ppl"]) != 3:
        errors.append(f"llama_perplexity bookkeeping wrong: {lp}")
    # brute force the first chunk
    w = toks[:64]
    w[0] = 6
    rows = fake_lp(w)
    brute = -sum(rows[j][toks[j + 1]] for j in range(32, 63))
    if abs(brute - lp["chunk_nll_sum"][0]) > 1e-9:
        errors.append("llama_perplexity chunk 0 nll mismatch")
    for n in (200, 64, 65, 96, 97, 33, 2):
        sp = sliding_perplexity(toks[:n], fake_lp, 64, 32)
        if sp["n_scored"] != n - 1:
            errors.append(f"sliding_perplexity n={n}: scored {sp['n_scored']}")
    sp = sliding_perplexity(toks, fake_lp, 64, 32)
    print(f"perplexity logic: llama-style {lp['n_chunks']} chunks ppl {lp['ppl']:.4f}; sliding {sp['n_windows']} windows "
          f"{sp['n_scored']} targets ppl {sp['ppl']:.4f}")

    # bench text
    bt = bench_text(corpus, 50_000)
    pieces = split_pieces(bt, 10_000)
    if "".join(pieces) != bt or max(len(p.encode()) for p in pieces) > 10_000 + 2000:
        errors.append("split_pieces broken")

    # manual chat renderers
    r = render_bitnet_manually([{"role": "user", "content": " Hey, are you conscious? "}], True, "<|begin_of_text|>")
    if r != "User: Hey, are you conscious?<|eot_id|>Assistant: ":
        errors.append(f"bitnet manual render: {r!r}")

    if errors:
        print("CHECK FAILED:")
        for e in errors:
            print("  -", e)
        return 1
    print("check OK")
    return 0


# ----------------------------------------------------------------------------------
# Generation (needs tokenizers / transformers / torch)
# ----------------------------------------------------------------------------------
def make_corpus_fixture(real_path: str, corpus: list[str], log) -> tuple[list, dict]:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(real_path)
    tok_ns = tokenizers.Tokenizer.from_file(real_path)
    has_switch = hasattr(tok_ns, "encode_special_tokens")
    if has_switch:
        tok_ns.encode_special_tokens = True
        if not tok_ns.encode_special_tokens:
            has_switch = False
    entries, failures = [], []
    for text in corpus:
        ids = tok.encode(text, add_special_tokens=False).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        ids_ns = tok_ns.encode(text, add_special_tokens=False).ids if has_switch else None
        if dec != text:
            failures.append({"text": text, "decoded": dec, "kind": "ids"})
        if ids_ns is not None:
            dec_ns = tok_ns.decode(ids_ns, skip_special_tokens=False)
            if dec_ns != text:
                failures.append({"text": text, "decoded": dec_ns, "kind": "ids_no_special"})
        entries.append({"text": text, "ids": ids, "ids_no_special": ids_ns, "decoded": dec})
    # sanity: special tokens are matched in text by default, not with the switch on
    eot = tok.encode("<|eot_id|>", add_special_tokens=False).ids
    eot_ns = tok_ns.encode("<|eot_id|>", add_special_tokens=False).ids if has_switch else None
    info = {
        "tokenizers_version": tokenizers.__version__,
        "encode_special_tokens_supported": has_switch,
        "eot_ids": eot,
        "eot_ids_no_special": eot_ns,
        "n": len(entries),
        "roundtrip_failures": failures,
    }
    log(f"corpus: {len(entries)} strings, tokenizers {tokenizers.__version__}, encode_special_tokens "
        f"{'supported' if has_switch else 'NOT supported'}; '<|eot_id|>' -> {eot} / {eot_ns}; "
        f"round-trip failures: {len(failures)}")
    for f in failures:
        log(f"  ROUND-TRIP FAILURE ({f['kind']}): {f['text']!r} -> {f['decoded']!r}")
    return entries, info


def make_trunc_fixture(real_path: str, corpus: list[str], out: Path, log) -> tuple[list, dict]:
    import tokenizers

    with open(real_path, encoding="utf-8") as f:
        real = json.load(f)
    trunc, info = truncate_tokenizer(real, TRUNC_N)
    s = json.dumps(trunc, ensure_ascii=False, indent=1)
    tok = tokenizers.Tokenizer.from_str(s)  # must load
    (out / "tokenizer_trunc.json").write_text(s + "\n", encoding="utf-8")
    tok2 = tokenizers.Tokenizer.from_file(str(out / "tokenizer_trunc.json"))
    entries, failures, bad_ids = [], [], []
    for text in corpus:
        ids = tok2.encode(text, add_special_tokens=False).ids
        if ids != tok.encode(text, add_special_tokens=False).ids:
            failures.append({"text": text, "kind": "from_file != from_str"})
        dec = tok2.decode(ids, skip_special_tokens=False)
        if dec != text:
            failures.append({"text": text, "decoded": dec, "kind": "roundtrip"})
        if any(i >= TRUNC_N + len(trunc["added_tokens"]) for i in ids):
            bad_ids.append(text)
        entries.append({"text": text, "ids": ids})
    info["vocab_size_with_added"] = tok2.get_vocab_size(with_added_tokens=True)
    info["eot_ids"] = tok2.encode("<|eot_id|>", add_special_tokens=False).ids
    info["roundtrip_failures"] = failures
    info["out_of_range_texts"] = bad_ids
    log(f"trunc: N={TRUNC_N}, kept {info['vocab_kept']} vocab, {info['merges_kept']}/{info['merges_original']} merges, "
        f"{info['added_tokens']} added tokens renumbered from {TRUNC_N}; vocab size {info['vocab_size_with_added']}; "
        f"'<|eot_id|>' -> {info['eot_ids']}; ignore_merges {info['ignore_merges']}; round-trip failures {len(failures)}")
    for f in failures:
        log(f"  TRUNC FAILURE ({f['kind']}): {f['text']!r}")
    return entries, info


def make_chat_fixture(real_path: str, log) -> tuple[list, dict]:
    import tokenizers
    import transformers

    try:
        from transformers import PreTrainedTokenizerFast as TokCls
    except ImportError:  # pragma: no cover
        from transformers import TokenizersBackend as TokCls  # type: ignore
    bos, eos = "<|begin_of_text|>", "<|eot_id|>"
    try:
        hf = TokCls(tokenizer_file=real_path, bos_token=bos, eos_token=eos)
        how = f"{TokCls.__name__}(tokenizer_file=...)"
    except Exception as e:  # noqa: BLE001
        log(f"chat: {TokCls.__name__}(tokenizer_file=) failed ({type(e).__name__}: {e}); using tokenizer_object")
        hf = TokCls(tokenizer_object=tokenizers.Tokenizer.from_file(real_path), bos_token=bos, eos_token=eos)
        how = f"{TokCls.__name__}(tokenizer_object=...)"
    raw = tokenizers.Tokenizer.from_file(real_path)
    entries, problems = [], []
    for name, template, source, manual in TEMPLATES:
        hf.chat_template = template
        for conv_name, messages in CONVERSATIONS:
            for agp in (False, True):
                rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
                if not isinstance(rendered, str):
                    raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered)}")
                ids = list(hf(rendered, add_special_tokens=False).input_ids)
                raw_ids = raw.encode(rendered, add_special_tokens=False).ids
                expect = manual(messages, agp, bos)
                if rendered != expect:
                    problems.append(f"{name}/{conv_name}/agp={agp}: rendered != manual: {rendered!r} vs {expect!r}")
                if ids != raw_ids:
                    problems.append(f"{name}/{conv_name}/agp={agp}: transformers ids != tokenizers ids")
                entries.append({
                    "template_name": name,
                    "conversation": conv_name,
                    "template": template,
                    "template_source": source,
                    "messages": messages,
                    "add_generation_prompt": agp,
                    "bos_token": bos,
                    "eos_token": eos,
                    "rendered": rendered,
                    "ids": ids,
                })
    info = {"transformers_version": transformers.__version__, "tokenizer": how, "problems": problems,
            "note": "ids use add_special_tokens=False; the BitNet template emits no BOS (the model's tokenizer "
                    "prepends <|begin_of_text|> 128000 when add_special_tokens / add_bos_token is on)"}
    log(f"chat: {len(entries)} renders via {how} (transformers {transformers.__version__}); problems: {len(problems)}")
    for p in problems:
        log(f"  CHAT PROBLEM: {p}")
    return entries, info


def import_torch_stack():
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    import torch

    try:
        import torch._dynamo

        torch._dynamo.config.disable = True
    except Exception:  # noqa: BLE001
        pass
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import transformers

    return torch, transformers


def _load_tiny_model(path: Path, torch, transformers, log):
    attempts = [
        dict(dtype=torch.float32, attn_implementation="eager"),
        dict(torch_dtype=torch.float32, attn_implementation="eager"),
        dict(dtype=torch.float32),
        dict(torch_dtype=torch.float32),
    ]
    last = None
    for a in attempts:
        try:
            m = transformers.BitNetForCausalLM.from_pretrained(str(path), **a)
            if a is not attempts[0]:
                log(f"tiny: from_pretrained needed kwargs {sorted(a)}")
            return m.to("cpu").to(torch.float32).eval()
        except TypeError as e:
            last = e
    raise last  # type: ignore[misc]


def make_tiny_fixture(tiny: Path, out: Path, log) -> dict:
    import numpy as np

    torch, transformers = import_torch_stack()
    torch.manual_seed(0)
    hf_dir = tiny / "hf_packed"
    model = _load_tiny_model(hf_dir, torch, transformers, log)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))

    def logits_of(ids):
        with torch.no_grad():
            out_ = model(torch.tensor([ids], dtype=torch.long))
        lg = out_.logits if hasattr(out_, "logits") else out_[0]
        return lg[0].float()

    def logprobs_fn(ids):
        return torch.log_softmax(logits_of(ids).double(), dim=-1).numpy()

    # cross-check against the tiny fixture's own reference logits
    check = {}
    man_p, ref_p = tiny / "manifest.json", tiny / "logits_packed.npy"
    if man_p.exists() and ref_p.exists():
        ref_tokens = json.loads(man_p.read_text())["tokens"]
        ref = np.load(ref_p)
        got = logits_of(ref_tokens).numpy()
        diff = float(np.max(np.abs(got - ref)))
        check = {"logits_packed_max_abs_diff": diff, "ok": diff < 1e-4}
        log(f"tiny: logits vs logits_packed.npy max |diff| {diff:.3g}")
        if diff >= 1e-4:
            log("  WARNING: tiny model logits differ from tests/fixtures/tiny/logits_packed.npy")

    (out / "ppl.txt").write_bytes(PPL_TEXT.encode("utf-8"))
    enc = tok(PPL_TEXT)
    tokens = list(enc.input_ids)
    bos_id = tok.bos_token_id
    added_bos = bool(tokens) and tokens[0] == bos_id
    # the plain tokenizers library must agree with transformers (minus BOS)
    import tokenizers

    raw = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    raw_ids = raw.encode(PPL_TEXT, add_special_tokens=False).ids
    tok_agree = raw_ids == (tokens[1:] if added_bos else tokens)
    log(f"tiny: ppl text {len(PPL_TEXT)} chars -> {len(tokens)} tokens (BOS {bos_id} added: {added_bos}; "
        f"tokenizers agrees: {tok_agree})")
    t0 = time.time()
    lp = llama_perplexity(tokens, bos_id, logprobs_fn, N_CTX)
    sp = sliding_perplexity(tokens, logprobs_fn, N_CTX, STRIDE)
    log(f"tiny: llama-style ppl {lp['ppl']:.6f} over {lp['n_chunks']} chunks; sliding ppl {sp['ppl']:.6f} over "
        f"{sp['n_windows']} windows ({time.time() - t0:.1f}s)")

    greedy = []
    for prompt in GREEDY_PROMPTS:
        pids = list(tok(prompt).input_ids)
        inp = torch.tensor([pids], dtype=torch.long)
        with torch.no_grad():
            outg = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), do_sample=False,
                                  max_new_tokens=40, eos_token_id=[TINY_EOS, TINY_EOT], pad_token_id=TINY_EOS)
        seq = outg.sequences if hasattr(outg, "sequences") else outg
        new = [int(x) for x in seq[0][len(pids):].tolist()]
        stopped = bool(new) and new[-1] in (TINY_EOS, TINY_EOT)
        # manual greedy, full recompute each step, no cache
        man = []
        cur = list(pids)
        for _ in range(40):
            nxt = int(torch.argmax(logits_of(cur)[-1]).item())
            man.append(nxt)
            cur.append(nxt)
            if nxt in (TINY_EOS, TINY_EOT):
                break
        greedy.append({
            "prompt": prompt,
            "prompt_ids": pids,
            "new_ids": new,
            "stopped_at_eos": stopped,
            "text": tok.decode(new, skip_special_tokens=False),
            "manual_greedy_matches": man == new,
        })
        log(f"tiny: greedy {prompt!r}: {len(new)} new tokens, eos stop {stopped}, manual loop agrees {man == new}")

    res = {
        "model_dir": "hf_packed",
        "loader": "transformers.BitNetForCausalLM.from_pretrained, float32, CPU, eager attention, TORCHDYNAMO_DISABLE=1",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__},
        "bos_id": bos_id,
        "eos_ids": [TINY_EOS, TINY_EOT],
        "ppl_file": "ppl.txt",
        "tokenizer_added_bos": added_bos,
        "tokenizers_library_agrees": tok_agree,
        "n_tokens": len(tokens),
        "tokens": tokens,
        "perplexity_llama": lp,
        "perplexity_sliding": sp,
        "greedy": greedy,
        "generate_kwargs": {"do_sample": False, "max_new_tokens": 40, "eos_token_id": [TINY_EOS, TINY_EOT],
                            "pad_token_id": TINY_EOS},
        "reference_check": check,
    }
    return res


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(real_path: str, text: str, log) -> dict:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(real_path)
    pieces = split_pieces(text, BENCH_PIECE)
    nbytes = sum(len(p.encode("utf-8")) for p in pieces)
    tok.encode(pieces[0][:10000])  # warm up
    times, ntok = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        n = 0
        for p in pieces:
            n += len(tok.encode(p).ids)
        times.append(time.perf_counter() - t0)
        ntok = n
    best = min(times)
    res = {
        "what": "tokenizers.Tokenizer.from_file(LLaMA-3 tokenizer.json).encode(piece) over bench text pieces, best of 3",
        "env": {k: os.environ.get(k) for k in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")},
        "tokenizers_version": tokenizers.__version__,
        "cpu": cpu_model(),
        "bytes": nbytes,
        "pieces": len(pieces),
        "tokens": ntok,
        "times_s": times,
        "best_s": best,
        "MB_per_s": nbytes / 1e6 / best,
        "MiB_per_s": nbytes / 2**20 / best,
        "tokens_per_s": ntok / best,
    }
    log(f"bench: {nbytes} bytes in {len(pieces)} pieces, {ntok} tokens; best {best:.3f}s -> "
        f"{res['MB_per_s']:.2f} MB/s ({res['tokens_per_s']:.0f} tok/s) single-thread on {res['cpu']}")
    return res


def run_generate(args) -> int:
    # single-threaded tokenizers for the benchmark; must be set before tokenizers is imported
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    corpus = build_corpus()
    t0 = time.time()
    stage_errors = []

    def stage(name, fn, default):
        # a failing stage is reported and the others still run (one device call shows every problem)
        try:
            return fn()
        except Exception:  # noqa: BLE001
            import traceback

            log(f"STAGE {name} FAILED:\n{traceback.format_exc()}")
            stage_errors.append(name)
            return default

    fail_info = {"roundtrip_failures": ["stage failed"], "problems": ["stage failed"]}
    corpus_entries, corpus_info = stage("corpus", lambda: make_corpus_fixture(args.tokenizer, corpus, log), ([], fail_info))
    if corpus_entries:
        dump_list(out / "tokenizer_corpus.json", corpus_entries)
    trunc_entries, trunc_info = stage("trunc", lambda: make_trunc_fixture(args.tokenizer, corpus, out, log), ([], fail_info))
    if trunc_entries:
        dump_list(out / "tokenizer_trunc_corpus.json", trunc_entries)
    chat_entries, chat_info = stage("chat", lambda: make_chat_fixture(args.tokenizer, log), ([], fail_info))
    if chat_entries:
        dump_list(out / "chat_templates.json", chat_entries)
    tiny = stage("tiny", lambda: make_tiny_fixture(Path(args.tiny), out, log), None)
    if tiny is not None:
        dump_obj(out / "tiny_model.json", tiny)

    text = bench_text(corpus, BENCH_BYTES)
    bench = stage("bench", lambda: run_bench(args.tokenizer, text, log), {"MB_per_s": float("nan"), "cpu": cpu_model()})
    bench["bench_text_file"] = None
    dump_obj(out / "hf_tokenizer_speed.json", bench)
    meta = {
        "generator": "tools/make_text_fixtures.py",
        "corpus": {k: v for k, v in corpus_info.items()},
        "trunc": trunc_info,
        "chat": chat_info,
        "python": sys.version.split()[0],
    }
    dump_obj(out / "text_manifest.json", meta)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    bench_b = len(text.encode("utf-8"))
    if total + bench_b < SIZE_LIMIT:
        (out / "bench_text.txt").write_bytes(text.encode("utf-8"))
        bench["bench_text_file"] = "bench_text.txt"
        dump_obj(out / "hf_tokenizer_speed.json", bench)
        log(f"bench_text.txt written ({bench_b} bytes)")
    else:
        log(f"bench_text.txt NOT written: {total} + {bench_b} bytes would exceed {SIZE_LIMIT}")

    print("\n==== summary ====")
    total = 0
    for p in sorted(out.iterdir()):
        if p.is_file():
            sz = p.stat().st_size
            total += sz
            print(f"  {p.name:32s} {sz:>10d} bytes")
    print(f"  {'TOTAL':32s} {total:>10d} bytes")
    print(f"corpus round-trip failures: {len(corpus_info['roundtrip_failures'])}; trunc failures: "
          f"{len(trunc_info['roundtrip_failures'])}; chat problems: {len(chat_info['problems'])}")
    if tiny is not None:
        print(f"tiny: n_tokens {tiny['n_tokens']}, ppl llama {tiny['perplexity_llama']['ppl']:.6f}, sliding "
              f"{tiny['perplexity_sliding']['ppl']:.6f}")
    print(f"HF encode {bench['MB_per_s']:.2f} MB/s on {bench['cpu']}")
    print(f"failed stages: {stage_errors or 'none'}; elapsed {time.time() - t0:.1f}s")
    ok = (not stage_errors and not corpus_info["roundtrip_failures"] and not trunc_info["roundtrip_failures"]
          and not chat_info["problems"] and total < SIZE_LIMIT)
    return 0 if ok else 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="stdlib-only self-check of corpus and logic")
    ap.add_argument("--tokenizer", help="real LLaMA-3 tokenizer.json")
    ap.add_argument("--tiny", help="tests/fixtures/tiny (with hf_packed/)")
    ap.add_argument("--out", help="output directory")
    args = ap.parse_args()
    if args.check:
        return run_check()
    if not (args.tokenizer and args.tiny and args.out):
        ap.error("--tokenizer, --tiny and --out are required (or --check)")
    return run_generate(args)


if __name__ == "__main__":
    sys.exit(main())
