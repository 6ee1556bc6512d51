// Conversation -> prompt token ids, the way HF does it: render the model's chat
// template, then tokenize with special tokens parsed and BOS added by the tokenizer
// (unless the template already wrote it, which would give a double BOS).
#pragma once
#include <cstdint>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace tern {

class ChatPrompter {
 public:
  explicit ChatPrompter(const TokenizerData& t);
  std::vector<int32_t> encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) const;

 private:
  ChatTemplate tmpl_;
  std::string bos_, eos_;
  bool add_bos_;
};

}  // namespace tern
