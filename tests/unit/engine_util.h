// Runs a token sequence through any Engine in chunks of `step` tokens (1 = decode,
// all = prefill) and returns the logits of every position, [n, vocab].
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "runtime/engine.h"

namespace tern::test {

inline std::vector<float> all_logits(Engine& e, const std::vector<int32_t>& toks, int64_t step) {
  const int64_t V = e.config().vocab;
  std::vector<float> out(toks.size() * V);
  for (size_t i = 0; i < toks.size(); i += step) {
    const size_t len = std::min<size_t>(step, toks.size() - i);
    e.forward(std::span<const int32_t>(toks.data() + i, len), out.data() + i * V, Logits::All);
  }
  return out;
}

// The same on a fresh CPU engine sized for the sequence.
inline std::vector<float> cpu_logits(const Model& m, const std::vector<int32_t>& toks, int64_t step, int threads = 2) {
  EngineOptions eo;
  eo.threads = threads;
  eo.ctx = static_cast<int64_t>(toks.size());
  auto e = make_cpu_engine(m, eo);
  return all_logits(*e, toks, step);
}

}  // namespace tern::test
