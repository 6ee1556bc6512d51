// Which tokens are "special": matched literally in text and decoded as their text.
#pragma once
#include <cstdint>
#include <string_view>

#include "model/model.h"

namespace tern {

// GGUF token types (llama.cpp's enum).
enum TokenType : int32_t {
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
  kTokenByte = 6,
};

inline bool looks_like_special(std::string_view s) {
  return s.size() >= 4 && s.starts_with("<|") && s.ends_with("|>");
}

// The type of token `id`; when the checkpoint carries no types, tokens written like
// <|...|> count as control tokens (all LLaMA-3 specials are).
inline int32_t effective_token_type(const TokenizerData& t, size_t id) {
  if (t.token_types.empty()) return looks_like_special(t.tokens[id]) ? kTokenControl : kTokenNormal;
  return id < t.token_types.size() ? t.token_types[id] : kTokenNormal;
}

inline bool is_added_type(int32_t type) { return type == kTokenControl || type == kTokenUserDefined; }

}  // namespace tern
