// ChatTemplate: the public face of the Jinja2-subset renderer (jinja_lexer, jinja_parser,
// jinja_eval, jinja_builtins). This file only builds the variables transformers passes
// to a chat template.
#include "tokenizer/chat_template.h"

#include <algorithm>

#include "model/model.h"
#include "tokenizer/jinja_eval.h"
#include "tokenizer/jinja_parser.h"

namespace tern {

ChatTemplate::ChatTemplate(const std::string& source) : tmpl_(jinja::parse_template(source)) {}

std::string ChatTemplate::render(const ChatTemplateInputs& in) const {
  using jinja::Value;
  std::vector<Value> messages;
  messages.reserve(in.messages.size());
  for (const auto& m : in.messages) {
    jinja::DictPtr d = jinja::make_dict();
    d->set("role", Value(m.role));  // insertion order as a Python dict literal: role, content
    d->set("content", Value(m.content));
    messages.emplace_back(d);
  }
  // apply_chat_template renders with messages, tools and documents (None when not given),
  // add_generation_prompt and the tokenizer's special tokens.
  std::vector<std::pair<std::string, Value>> vars = {
      {"messages", jinja::make_list(std::move(messages))},
      {"tools", Value(jinja::None{})},
      {"documents", Value(jinja::None{})},
      {"add_generation_prompt", Value(in.add_generation_prompt)},
      {"bos_token", Value(in.bos_token)},
      {"eos_token", Value(in.eos_token)},
  };
  return jinja::render(*tmpl_, vars);
}

std::string default_chat_template() { return kBitNetChatTemplate; }

std::string chat_template_or_default(const std::string& from_checkpoint) {
  bool blank = std::all_of(from_checkpoint.begin(), from_checkpoint.end(),
                           [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
  return blank ? default_chat_template() : from_checkpoint;
}

}  // namespace tern
