// Perplexity over a token sequence, in the two ways users know:
//  - llama-perplexity (stride 0): non-overlapping chunks of n_ctx tokens, the first
//    token of each chunk replaced by BOS (when the tokenizer adds one), and only the
//    second half of each chunk scored, so every scored token sees >= n_ctx/2 context;
//  - HF's sliding window (stride > 0, transformers' perplexity guide): windows of
//    n_ctx tokens advancing by `stride`, each token scored once, by the first window
//    that contains it as a target, token-weighted.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "runtime/engine.h"

namespace tern {

struct PerplexityResult {
  double ppl = 0;
  double ppl_stderr = 0;  // ppl * standard error of the mean NLL
  int64_t n_scored = 0;
  std::vector<double> running;  // ppl after each chunk / window
};

// bos < 0: no BOS substitution. on_chunk(i, running_ppl) is called after each chunk.
PerplexityResult perplexity(Engine& engine, std::span<const int32_t> tokens, int64_t n_ctx, int64_t stride, int32_t bos,
                            const std::function<void(int64_t, double)>& on_chunk);

}  // namespace tern
