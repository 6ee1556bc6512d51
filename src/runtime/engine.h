// The engine interface every backend implements (CPU, CUDA): n_seq() independent
// sequences, each with its own KV cache; tokens in, logits out. Prefill passes many
// tokens of one sequence in one call, decode one. Both append to that sequence's cache
// and must give the same logits. decode() advances several sequences by one token each
// in one step (batched decode, for servers and `tern bench`).
// The overloads without a sequence index work on sequence 0 (the single-sequence API
// generate, chat and perplexity use).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"

namespace tern {

enum class LmHead { Exact, Int8 };
// The KV cache's element type. F16 (CPU backend): half the memory (2B model, 2k context:
// 315 -> 157 MB), K and V rounded to F16 as they are stored (llama.cpp's default cache).
enum class KvType { F32, F16 };

struct LoraAdapter;  // train/lora_adapter.h
// An adapter applied at inference (--lora DIR[:scale]): each adapted linear adds
// scale * adapter.scaling() * B(A(x)) on its float input.
struct LoraRef {
  std::shared_ptr<const LoraAdapter> adapter;
  float scale = 1.0f;
};

struct EngineOptions {
  std::string backend = "cpu";  // "cpu", "cuda" or "auto" (CUDA when a GPU is present)
  int threads = 0;              // <= 0: all cores
  int64_t ctx = 0;              // KV cache length per sequence; <= 0: the model's context length
  int n_seq = 1;                // independent sequences (KV caches)
  // Exact: the tied head in its stored F16/BF16/F32. Int8: rows quantized to int8 with a
  // per-row scale and the normed input to int8 per token (quantize_head_i8): half the
  // bytes of an F16 head, logits within ~1e-2 relative of the exact head.
  LmHead lm_head = LmHead::Exact;
  KvType kv_type = KvType::F32;
  std::vector<LoraRef> loras;  // applied in order; empty: the base model
};

enum class Logits { None, Last, All };

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string name() const = 0;
  virtual int n_seq() const = 0;
  // Runs tokens of sequence seq at positions position(seq) .. position(seq)+n-1. Writes
  // `logits` as [n, vocab] (All), [vocab] (Last) or nothing (None). Throws tern::Error if
  // seq or a token id is out of range or the context would overflow; the cache is then
  // unchanged.
  virtual void forward(int seq, std::span<const int32_t> tokens, float* logits, Logits which) = 0;
  // One token for each sequence seqs[i] (distinct), all in one step. logits: [n, vocab]
  // or null; argmax: [n] greedy next tokens (lowest id on ties, computed by the backend
  // so that only ids need to come back) or null. Checks like forward.
  virtual void decode(std::span<const int> seqs, std::span<const int32_t> tokens, float* logits, int32_t* argmax) = 0;
  virtual void reset(int seq) = 0;  // empties that sequence's cache
  // Keeps the first n cached positions of seq and drops the rest (n >= position(seq) is a
  // no-op), so a chat can reuse the prompt prefix it shares with the previous turn.
  virtual void truncate(int seq, int64_t n) = 0;
  virtual int64_t position(int seq) const = 0;
  virtual int64_t context_length() const = 0;  // per sequence

  // Sequence 0.
  void forward(std::span<const int32_t> tokens, float* logits, Logits which) { forward(0, tokens, logits, which); }
  void reset() { reset(0); }
  void truncate(int64_t n) { truncate(0, n); }
  int64_t position() const { return position(0); }
};

// The checks every Engine::forward makes before touching its cache: seq in range, token
// ids inside the vocabulary and pos + n within the context. Throws tern::Error.
void check_forward_args(const ModelConfig& c, int seq, int n_seq, std::span<const int32_t> tokens, int64_t pos, int64_t ctx);
// Engine::decode's checks: as many tokens as sequences, distinct sequence ids in range,
// ids in the vocabulary, room for one more position in each (pos_of(seq) gives it).
template <class PosOf>
void check_decode_args(const ModelConfig& c, int n_seq, std::span<const int> seqs, std::span<const int32_t> tokens,
                       int64_t ctx, PosOf pos_of);
void check_decode_shape(int n_seq, std::span<const int> seqs, std::span<const int32_t> tokens);

template <class PosOf>
void check_decode_args(const ModelConfig& c, int n_seq, std::span<const int> seqs, std::span<const int32_t> tokens,
                       int64_t ctx, PosOf pos_of) {
  check_decode_shape(n_seq, seqs, tokens);
  for (size_t i = 0; i < seqs.size(); ++i) check_forward_args(c, seqs[i], n_seq, tokens.subspan(i, 1), pos_of(seqs[i]), ctx);
}

// Index of the largest value, the lowest index on ties (what every backend's argmax returns).
int32_t argmax(const float* v, int64_t n);

std::unique_ptr<Engine> make_cpu_engine(const Model& model, const EngineOptions& opts);
// The CUDA backend (backend/cuda/cuda_engine.cu): defined only in builds with
// TERN_HAVE_CUDA. make_cuda_engine throws tern::Error when no device is usable;
// cuda_available() is false when the driver finds no device.
std::unique_ptr<Engine> make_cuda_engine(const Model& model, const EngineOptions& opts);
bool cuda_available();
// Device-to-device copy bandwidth of the current GPU in bytes/s, read + write counted
// (the decode roofline `tern bench` compares against). CUDA builds only.
double cuda_copy_bandwidth();
// "cpu" or "cuda": what make_engine builds for a --backend value ("auto" = CUDA when built
// and a GPU is present). Throws tern::Error for unknown or unavailable backends.
std::string resolve_backend(const std::string& backend);
// Picks the backend named in opts ("auto" with a CPU-only option, --cache-type f16: the CPU).
std::unique_ptr<Engine> make_engine(const Model& model, const EngineOptions& opts);

}  // namespace tern
