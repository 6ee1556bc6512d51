// The generation loop shared by `tern generate` and `tern chat`: feed the prompt in
// one prefill call, then sample token by token, streaming complete UTF-8 text and
// stopping at end-of-sequence tokens, stop strings, -n, or a full context.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace tern {

struct GenerateOptions {
  int64_t n_predict = 128;  // < 0: until a stop condition or the context is full
  SamplingParams sampling;
  std::vector<std::string> stop_strings;
  std::vector<int32_t> stop_tokens;  // EOS, end of turn
};

enum class StopReason { Length, StopToken, StopString, ContextFull };
std::string stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (stop token excluded)
  std::string text;             // what was streamed (stop string excluded)
  StopReason reason = StopReason::Length;
  int64_t n_prompt = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  uint64_t seed = 0;
};

// Runs `prompt` after whatever the engine already holds. on_text gets printable text
// as soon as it is safe to show (no half characters, no partial stop strings).
GenerateResult generate(Engine& engine, const Tokenizer& tok, std::span<const int32_t> prompt, const GenerateOptions& opts,
                        const std::function<void(std::string_view)>& on_text);

// Tokens at which a chat turn or a completion ends: EOS, <|eot_id|>, <|end_of_text|>.
std::vector<int32_t> default_stop_tokens(const TokenizerData& t);

}  // namespace tern
