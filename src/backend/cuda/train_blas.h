// cuBLAS and scratch memory for the GPU training step (lora_train.cu) and its kernels'
// tests: one handle (float32 GEMMs in float32: TF32 only where a call asks for it), scratch buffers
// that grow to the largest request and are then reused (growing synchronizes the stream
// first, so a buffer is never freed under a running kernel), and the GEMM shapes the
// step needs, all row-major.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <functional>

#include "backend/cuda/weights.h"

namespace tern::cuda {

// Per-column scales of a [M][N] operand: columns [0, end[0]) get scale[0], [end[0],
// end[1]) scale[1], ... (a fused q|k|v or gate|up gradient, each part with its matrix
// scale). n == 0: no scaling.
struct ColScales {
  int n = 0;
  int end[3] = {0, 0, 0};
  float scale[3] = {1.0f, 1.0f, 1.0f};
#ifdef __CUDACC__
  // Column c's scale (1 without segments).
  __device__ __forceinline__ float at(int c) const {
    if (n == 0) return 1.0f;
    return c < end[0] ? scale[0] : (n < 2 || c < end[1]) ? scale[1] : scale[2];
  }
#endif
};

// The LoRA input gradients of a linear's adapted parts, which split_gemm's combine pass
// adds to its output (so dx is read and written once, not once more per part): for parts
// p = 0 .. n-1 in order, C[m][k] += kept_p(m, k) ? (du_p[m] . A_p[:, k]) * keep : 0, each
// addition rounded on its own, as lora_bwd_gpu's masked dx kernel does. du_p [M][r], A_p
// [r][K]; kept_p from the dropout mask bits (rows of (K + 31) / 32 words) or always (null).
struct LoraDx {
  int n = 0, r = 0;
  const float* du[3] = {nullptr, nullptr, nullptr};
  const float* A[3] = {nullptr, nullptr, nullptr};
  const uint32_t* bits[3] = {nullptr, nullptr, nullptr};
  float keep = 1.0f;
  bool tf32 = false;  // rank 16 with one GEMM term: du A on TF32 tensor cores
  // Whether split_gemm fuses n parts of rank r into C [.][K] (A's columns live in
  // registers; rows are streamed 16 bytes at a time).
  static bool fusable(int r, int n, int K, const float* C, int ldc) {
    return n >= 1 && n <= 3 && (r == 8 || r == 16 || (r == 32 && n == 1)) && K % 4 == 0 && ldc % 4 == 0 &&
           reinterpret_cast<uintptr_t>(C) % 16 == 0;
  }
};

class TrainBlas {
 public:
  explicit TrainBlas(cudaStream_t st);
  ~TrainBlas();
  TrainBlas(const TrainBlas&) = delete;
  TrainBlas& operator=(const TrainBlas&) = delete;

  cudaStream_t stream() const { return st_; }
  // Profiling hook (TERN_TRAIN_PROFILE=2): ops name their sub-steps; a no-op unless set.
  std::function<void(const char*)> on_mark;
  void mark(const char* what) const {
    if (on_mark) on_mark(what);
  }
  // Scratch slot i (< kSlots) of at least `bytes`; valid until the next request of slot i.
  static constexpr int kSlots = 12;
  void* scratch(int slot, size_t bytes);
  // Bytes of device memory the scratch slots hold now.
  size_t scratch_bytes() const;

  // C [m][n] = alpha op(A) op(B) + beta C, float32 (row-major; lda/ldb/ldc in elements).
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb, float beta, float* C,
            int ldc, bool tf32 = false);
  // The same over `batch` matrices at fixed element strides (sa, sb, sc) from A, B, C.
  void gemm_strided(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, int64_t sa, const float* B, int ldb,
                    int64_t sb, float beta, float* C, int ldc, int64_t sc, int batch, bool tf32 = false);
  // C [M][N] (int32) = A [M][K] . W [N][K]^T, int8 inputs on int8 tensor cores, exact
  // (K a multiple of 4: pad rows with zeros). ~1.8x the F16 GEMM's rate (bench/gemm_int8.cu).
  void gemm_i8_nt(const int8_t* A, int M, int K, const int8_t* W, int N, int32_t* C, int ldc);
  // C [M][K] (+)= alpha * (A [M][N] with column scales cs) . W [N][K], W row-major in type
  // 0 F32, 1 F16 or 2 BF16, to float32 accuracy on tensor cores (split_gemm.cu). tf32:
  // ~10-bit accuracy instead (one F16 term, two BF16 terms, TF32 for F32): half the work.
  // lora (LoraDx::fusable; F16 W, or BF16 with tf32: at most two terms): its parts' input
  // gradients added by the combine.
  void split_gemm(const float* A, int lda, int M, int N, const ColScales& cs, const void* W, int type, int K, float alpha, float* C,
                  int ldc, bool accumulate, bool tf32 = false, const LoraDx* lora = nullptr);
  // split_gemm's second half, for a caller that wrote the terms itself (head_loss.cu):
  // `terms` [terms][M][N] 16-bit arrays as store_split / split_terms(type, tf32) lays them
  // out (rows lds apart, 0: N), row m scaled by 1 / rscale[m].
  void terms_gemm(const void* split, int terms, const float* rscale, int M, int N, const void* W, int type, int K, float alpha, float* C,
                  int ldc, bool accumulate, const LoraDx* lora = nullptr, int lds = 0);
  // How many 16-bit terms split_gemm uses for W of type 1 (F16) or 2 (BF16).
  static int split_terms(int type, bool tf32) { return (type == 1 ? 2 : 3) - (tf32 ? 1 : 0); }

 private:
  cudaStream_t st_;
  void* handle_ = nullptr;  // cublasHandle_t
  std::array<DevBuf, kSlots> slots_;
};

// Scratch slots: which caller uses which (a slot's contents die at its next request).
enum TrainSlot : int {
  kSlotSplitA = 0,  // split_gemm: 16-bit terms of A
  kSlotSplitAcc,    // split_gemm: per-term products
  kSlotSplitScale,  // split_gemm: row scales
  kSlotLoraU,       // LoRA backward: du
  kSlotLoraX,       // LoRA: dropout(x) / (du A) rows
  kSlotAttnS,       // attention: scores / probabilities
  kSlotAttnDP,      // attention backward: dP / dS
  kSlotHead,        // head loss: logits of a chunk
  kSlotAttnHeads,   // attention: q, k, v, out (or their gradients) head-major
  kSlotSplitK,      // LoRA: per-chunk partial products
  kSlotDuPart,      // lora_dy_pass: per-strip partials of du
  kSlotWeightF16,   // training backward: one linear's F16 weights
};

}  // namespace tern::cuda
