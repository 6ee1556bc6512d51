// Conversation -> ids: BOS exactly once, whether or not the template writes it.
#include <gtest/gtest.h>

#include "model/model.h"
#include "runtime/chat_prompt.h"

namespace tern {
namespace {

TEST(ChatPrompt, BitNetTemplateGetsOneBosFromTheTokenizer) {
  TokenizerData t = load_tokenizer_data(std::string(TERN_FIXTURES) + "/tiny/hf_packed");
  Tokenizer tok(t);
  std::vector<int32_t> ids = ChatPrompter(t).encode(tok, {{"user", "Hey, are you conscious?"}});
  EXPECT_EQ(ids, tok.encode("<|begin_of_text|>User: Hey, are you conscious?<|eot_id|>Assistant: ", false));
  EXPECT_EQ(ids.front(), 509);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 509), 1);
}

TEST(ChatPrompt, TemplateThatWritesBosIsNotDoubled) {
  TokenizerData t = load_tokenizer_data(std::string(TERN_FIXTURES) + "/tiny/hf_packed");
  t.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}";
  Tokenizer tok(t);
  std::vector<int32_t> ids = ChatPrompter(t).encode(tok, {{"system", "S"}, {"user", "U"}});
  EXPECT_EQ(ids, tok.encode("<|begin_of_text|>system: S\nuser: U\n", false));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 509), 1);
}

TEST(ChatPrompt, FallsBackToBitNetTemplate) {
  TokenizerData t = load_tokenizer_data(std::string(TERN_FIXTURES) + "/tiny/hf_packed");
  t.chat_template.clear();
  Tokenizer tok(t);
  EXPECT_EQ(ChatPrompter(t).encode(tok, {{"user", "Hi"}}), tok.encode("User: Hi<|eot_id|>Assistant: ", true));
}

}  // namespace
}  // namespace tern
