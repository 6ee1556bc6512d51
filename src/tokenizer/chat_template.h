// Chat templates: renders a conversation into the prompt text a model was trained on,
// from the Jinja template its checkpoint carries (tokenizer_config.json "chat_template"
// or GGUF "tokenizer.chat_template"). The output equals what HF transformers'
// apply_chat_template(..., tokenize=False) produces for the templates BitNet, LLaMA-3,
// Mistral, Zephyr and ChatML-style models ship: the renderer implements the Jinja2
// subset they use, with jinja2's whitespace rules under transformers' options
// (trim_blocks, lstrip_blocks) and transformers' extra globals (raise_exception,
// strftime_now) and tojson. Unsupported constructs (macros, includes, ...) are
// rejected when the template is parsed, with the line and column.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace tern {

namespace jinja {
struct Template;
}

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

struct ChatTemplateInputs {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;  // end with the assistant's turn header
  std::string bos_token;
  std::string eos_token;
};

class ChatTemplate {
 public:
  // Parses once; throws tern::Error "chat template: line L col C: <what>" on syntax
  // errors or unsupported constructs.
  explicit ChatTemplate(const std::string& source);
  // Thread-safe (the parsed template is immutable). Throws tern::Error "chat template:
  // line L col C: <what>" on runtime errors (e.g. arithmetic on an undefined value) and
  // "chat template: <message>" when the template calls raise_exception(message).
  std::string render(const ChatTemplateInputs& inputs) const;

 private:
  std::shared_ptr<const jinja::Template> tmpl_;
};

// microsoft/bitnet-b1.58-2B-4T's template (kBitNetChatTemplate).
std::string default_chat_template();
// The checkpoint's template, or the default when it carries none (empty or blank).
std::string chat_template_or_default(const std::string& from_checkpoint);

}  // namespace tern
