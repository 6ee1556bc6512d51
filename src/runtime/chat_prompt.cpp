#include "runtime/chat_prompt.h"

namespace tern {

namespace {
std::string token_text(const TokenizerData& t, int32_t id) {
  return id >= 0 && id < static_cast<int32_t>(t.tokens.size()) ? t.tokens[id] : "";
}
}  // namespace

ChatPrompter::ChatPrompter(const TokenizerData& t)
    : tmpl_(chat_template_or_default(t.chat_template)), bos_(token_text(t, t.bos)), eos_(token_text(t, t.eos)), add_bos_(t.add_bos) {}

std::vector<int32_t> ChatPrompter::encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt) const {
  ChatTemplateInputs in;
  in.messages = messages;
  in.add_generation_prompt = add_generation_prompt;
  in.bos_token = bos_;
  in.eos_token = eos_;
  const std::string text = tmpl_.render(in);
  const bool has_bos = !bos_.empty() && text.starts_with(bos_);
  return tok.encode(text, add_bos_ && !has_bos, true);
}

}  // namespace tern
