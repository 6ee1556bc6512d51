#include "runtime/engine.h"
#include "tern/error.h"

namespace tern {

std::unique_ptr<Engine> make_engine(const Model& model, const EngineOptions& opts) {
  if (opts.backend == "cpu" || opts.backend == "auto") return make_cpu_engine(model, opts);
  if (opts.backend == "cuda") fail("--backend cuda: this build has no CUDA backend yet");
  fail("--backend: unknown backend '{}' (expected cpu, cuda or auto)", opts.backend);
}

}  // namespace tern
