#include "runtime/engine.h"
#include "tern/error.h"

namespace tern {

void check_forward_args(const ModelConfig& c, std::span<const int32_t> tokens, int64_t pos, int64_t ctx) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab) {
      fail("token id {} at position {} is outside the vocabulary (size {})", tokens[i], pos + static_cast<int64_t>(i), c.vocab);
    }
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (pos + n > ctx) fail("{} tokens at position {} exceed the context length {}", n, pos, ctx);
}

std::unique_ptr<Engine> make_engine(const Model& model, const EngineOptions& opts) {
  if (opts.backend == "cpu") return make_cpu_engine(model, opts);
  if (opts.backend == "auto") {
#ifdef TERN_HAVE_CUDA
    if (cuda_available()) return make_cuda_engine(model, opts);
#endif
    return make_cpu_engine(model, opts);
  }
  if (opts.backend == "cuda") {
#ifdef TERN_HAVE_CUDA
    if (!cuda_available()) fail("--backend cuda: no CUDA device found");
    return make_cuda_engine(model, opts);
#else
    fail("--backend cuda: this build has no CUDA backend (build with nvcc and -DTERN_CUDA=ON)");
#endif
  }
  fail("--backend: unknown backend '{}' (expected cpu, cuda or auto)", opts.backend);
}

}  // namespace tern
