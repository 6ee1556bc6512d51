#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>

#include "tern/error.h"

namespace tern {

namespace {

// -log softmax(logits)[target], in double for the log-sum-exp.
double nll(const float* logits, int64_t vocab, int32_t target) {
  float mx = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - mx);
  return std::log(sum) + mx - logits[target];
}

struct Accumulator {
  double sum = 0, sum2 = 0;
  int64_t n = 0;
  void add(double x) {
    sum += x;
    sum2 += x * x;
    ++n;
  }
  double ppl() const { return std::exp(sum / n); }
  double stderr_ppl() const {
    if (n < 2) return 0;
    double mean = sum / n, var = sum2 / n - mean * mean;
    return ppl() * std::sqrt(std::max(0.0, var) / (n - 1));
  }
};

}  // namespace

PerplexityResult perplexity(Engine& engine, std::span<const int32_t> tokens, int64_t n_ctx, int64_t stride, int32_t bos,
                            const std::function<void(int64_t, double)>& on_chunk) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t V = engine.config().vocab;
  if (n_ctx < 2) fail("--ctx must be at least 2");
  if (n_ctx > engine.context_length()) fail("--ctx {} exceeds the engine's context {}", n_ctx, engine.context_length());
  if (stride < 0 || stride > n_ctx) fail("--stride must be between 1 and --ctx ({})", n_ctx);
  std::vector<float> logits(n_ctx * V);
  std::vector<int32_t> chunk(n_ctx);
  Accumulator acc;
  PerplexityResult res;
  if (stride == 0) {
    const int64_t n_chunks = n / n_ctx;
    if (n_chunks < 1 || n < 2 * n_ctx) {
      fail("the text has {} tokens; perplexity with --ctx {} needs at least {} (use a smaller --ctx)", n, n_ctx, 2 * n_ctx);
    }
    for (int64_t c = 0; c < n_chunks; ++c) {
      std::copy_n(tokens.begin() + c * n_ctx, n_ctx, chunk.begin());
      if (bos >= 0) chunk[0] = bos;
      engine.reset();
      engine.forward(chunk, logits.data(), Logits::All);
      for (int64_t j = n_ctx / 2; j < n_ctx - 1; ++j) acc.add(nll(logits.data() + j * V, V, tokens[c * n_ctx + j + 1]));
      res.running.push_back(acc.ppl());
      if (on_chunk) on_chunk(c, acc.ppl());
    }
  } else {
    if (n < 2) fail("the text has {} tokens; perplexity needs at least 2", n);
    int64_t prev_end = 0;
    for (int64_t begin = 0, w = 0; begin < n; begin += stride, ++w) {
      const int64_t end = std::min(begin + n_ctx, n);
      engine.reset();
      engine.forward(tokens.subspan(begin, end - begin), logits.data(), Logits::All);
      // Targets t in [max(prev_end, begin + 1), end), predicted from position t - 1.
      for (int64_t t = std::max(prev_end, begin + 1); t < end; ++t) acc.add(nll(logits.data() + (t - 1 - begin) * V, V, tokens[t]));
      prev_end = end;
      res.running.push_back(acc.ppl());
      if (on_chunk) on_chunk(w, acc.ppl());
      if (end == n) break;
    }
  }
  res.ppl = acc.ppl();
  res.ppl_stderr = acc.stderr_ppl();
  res.n_scored = acc.n;
  return res;
}

}  // namespace tern
