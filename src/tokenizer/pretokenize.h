// The LLaMA-3 pre-tokenizer: splits text into the pieces BPE runs on.
#pragma once
#include <string_view>
#include <vector>

namespace tern {

// The LLaMA-3 split regex (HF tokenizer.json "Split" pattern).
extern const char* const kLlama3Pattern;

// Throws tern::Error "invalid UTF-8 in input at byte N" (N = offset of the first bad
// sequence): overlong forms, surrogates, code points past U+10FFFF, truncation.
void validate_utf8(std::string_view text);

// Appends the regex pieces of `text` (valid UTF-8) to out, in order; they cover the
// text exactly (HF "Isolated" behaviour: unmatched stretches become pieces too).
void pretokenize(std::string_view text, std::vector<std::string_view>& out);

}  // namespace tern
