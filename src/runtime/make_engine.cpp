#include "runtime/engine.h"
#include "tern/error.h"

namespace tern {

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
