#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "runtime/engine.h"
#include "tern/error.h"

namespace tern {

void check_forward_args(const ModelConfig& c, int seq, int n_seq, std::span<const int32_t> tokens, int64_t pos, int64_t ctx) {
  if (seq < 0 || seq >= n_seq) fail("sequence {} is out of range (the engine has {} sequence{})", seq, n_seq, n_seq == 1 ? "" : "s");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab) {
      fail("token id {} at position {} is outside the vocabulary (size {})", tokens[i], pos + static_cast<int64_t>(i), c.vocab);
    }
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (pos + n > ctx) fail("{} tokens at position {} exceed the context length {}", n, pos, ctx);
}

// An empty batch is a valid no-op; a sequence twice in one step would need its second
// token to see the first one's KV entry, which a single batched step cannot give. The
// seen-set lives on the stack up to 4096 sequences: decode steps allocate nothing.
void check_decode_shape(int n_seq, std::span<const int> seqs, std::span<const int32_t> tokens) {
  if (seqs.size() != tokens.size()) fail("decode: {} sequences but {} tokens (one token per sequence)", seqs.size(), tokens.size());
  constexpr int kStackSeqs = 4096;
  std::array<uint64_t, kStackSeqs / 64> stack{};
  std::vector<uint64_t> heap(n_seq > kStackSeqs ? (n_seq + 63) / 64 : 0);
  uint64_t* seen = n_seq > kStackSeqs ? heap.data() : stack.data();
  for (int s : seqs) {
    if (s < 0 || s >= n_seq) fail("decode: sequence {} is out of range (the engine has {} sequence{})", s, n_seq, n_seq == 1 ? "" : "s");
    const uint64_t bit = uint64_t{1} << (s % 64);
    if (seen[s / 64] & bit) fail("decode: sequence {} appears more than once in one step", s);
    seen[s / 64] |= bit;
  }
}

int32_t argmax(const float* v, int64_t n) {
  // NaN compares false with everything, so it can neither win nor displace a number;
  // a row with only NaNs gives 0.
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(v[i])) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return static_cast<int32_t>(best < 0 ? 0 : best);
}

std::string resolve_backend(const std::string& backend) {
  if (backend == "cpu") return "cpu";
  if (backend == "auto") {
#ifdef TERN_HAVE_CUDA
    if (cuda_available()) return "cuda";
#endif
    return "cpu";
  }
  if (backend == "cuda") {
#ifdef TERN_HAVE_CUDA
    if (!cuda_available()) fail("--backend cuda: no CUDA device found");
    return "cuda";
#else
    fail("--backend cuda: this build has no CUDA backend (build with nvcc and -DTERN_CUDA=ON)");
#endif
  }
  fail("--backend: unknown backend '{}' (expected cpu, cuda or auto)", backend);
}

std::unique_ptr<Engine> make_engine(const Model& model, const EngineOptions& opts) {
#ifdef TERN_HAVE_CUDA
  // An F16 cache is a CPU option: "auto" then means the CPU ("cuda" still refuses it).
  const bool cpu_only = opts.kv_type == KvType::F16;
  if (!(cpu_only && opts.backend == "auto") && resolve_backend(opts.backend) == "cuda") return make_cuda_engine(model, opts);
#else
  resolve_backend(opts.backend);  // throws for cuda / unknown names
#endif
  return make_cpu_engine(model, opts);
}

}  // namespace tern
