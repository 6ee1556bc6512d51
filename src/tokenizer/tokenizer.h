// Byte-level BPE tokenizer (GPT-2 / LLaMA-3 family), built from the TokenizerData a
// checkpoint carries (GGUF metadata or an HF tokenizer.json).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/model.h"

namespace tern {

class Tokenizer {
 public:
  explicit Tokenizer(const TokenizerData& data);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // HF tokenizers' behaviour: special/added tokens found in the text first (unless
  // parse_special is false), the LLaMA-3 pre-tokenizer regex, byte-level mapping, BPE by
  // merge rank with ignore_merges. Throws tern::Error on invalid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = true) const;
  // Exact bytes of the ids; throws tern::Error naming an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids) const;
  // Raw bytes of one token (specials decode to their text).
  std::string token_bytes(int32_t id) const;
  int64_t vocab_size() const;
  int32_t bos() const;
  int32_t eos() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads an HF tokenizer.json (and, if present beside it, tokenizer_config.json for
// add_bos / chat_template / bos / eos). Throws tern::Error naming the file and field.
TokenizerData load_tokenizer_json(const std::string& tokenizer_json_path);
// Serialises TokenizerData as HF tokenizer.json / tokenizer_config.json text.
std::string to_tokenizer_json(const TokenizerData& t);
std::string to_tokenizer_config_json(const TokenizerData& t);
// A byte-level tokenizer of `vocab` ids for synthetic models: the 256 byte tokens,
// LLaMA-3-named specials (<|begin_of_text|>, <|end_of_text|>, <|eot_id|>, reserved),
// and merges built from common English pairs to fill the rest. vocab >= 260.
TokenizerData synth_tokenizer(int64_t vocab);

}  // namespace tern
