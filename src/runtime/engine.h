// The engine interface every backend implements (CPU now, CUDA next): one sequence,
// a KV cache, tokens in, logits out. Prefill passes many tokens in one call; decode
// passes one. Both append to the cache and must give the same logits.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "model/model.h"

namespace tern {

struct EngineOptions {
  std::string backend = "cpu";  // "cpu" ("auto" resolves to the best available)
  int threads = 0;              // <= 0: all cores
  int64_t ctx = 0;              // KV cache length; <= 0: the model's context length
};

enum class Logits { None, Last, All };

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string name() const = 0;
  // Runs tokens at positions position() .. position()+n-1. Writes `logits` as
  // [n, vocab] (All), [vocab] (Last) or nothing (None). Throws tern::Error if a token
  // id is out of range or the context would overflow; the cache is then unchanged.
  virtual void forward(std::span<const int32_t> tokens, float* logits, Logits which) = 0;
  virtual void reset() = 0;  // empties the cache
  // Keeps the first n cached positions and drops the rest (n >= position() is a no-op),
  // so a chat can reuse the prompt prefix it shares with the previous turn.
  virtual void truncate(int64_t n) = 0;
  virtual int64_t position() const = 0;
  virtual int64_t context_length() const = 0;
};

// The checks every Engine::forward makes before touching its cache: token ids inside the
// vocabulary and pos + n within the context. Throws tern::Error.
void check_forward_args(const ModelConfig& c, std::span<const int32_t> tokens, int64_t pos, int64_t ctx);

std::unique_ptr<Engine> make_cpu_engine(const Model& model, const EngineOptions& opts);
// The CUDA backend (backend/cuda/cuda_engine.cu): defined only in builds with
// TERN_HAVE_CUDA. make_cuda_engine throws tern::Error when no device is usable;
// cuda_available() is false when the driver finds no device.
std::unique_ptr<Engine> make_cuda_engine(const Model& model, const EngineOptions& opts);
bool cuda_available();
// Picks the backend named in opts ("auto" = CUDA when built and a GPU is present).
std::unique_ptr<Engine> make_engine(const Model& model, const EngineOptions& opts);

}  // namespace tern
