// Host-side launch API of the LoRA training kernels (issue 5). Each one has a CPU
// reference in train/ops.h with the same arguments and accumulate rules, checked in
// tests/cuda/test_cuda_kernels.cpp; lora_train.cu strings them into a training step.
// Activations are row-major [M][n] with M = sequences x positions (every sequence padded
// to the same length T; row m is position m % T of sequence m / T).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"
#include "backend/cuda/train_blas.h"

namespace tern::cuda {

// ---- train_fwd.cu: the forward's norms, quantization and elementwise ops ----
// Per row m < M: v = x_m (n values at stride ldx), or with gated v = act(gate) * up from
// x_m = [gate | up] (n each; h_out[m] = v, [M][n], nullable); xn_out[m] = RMSNorm(v) * w
// (nullable); q8 row m (stride ldq >= n) = the int8 absmax quantization of RMSNorm(v) * w,
// then zeros up to ldq (the int8 GEMM's padded K), and s[m] its scale (cpu::rmsnorm +
// cpu::gated_activation + cpu::quantize_row_i8, bit for bit); q8 null: neither q8 nor s.
// rs_out (nullable): each row's inverse RMS, RMSNorm(v) = v * rs * w (DropoutSpec::norm_rs).
// x16_out (nullable, F16 [M][n]): v * rs rounded to F16, RMSNorm(v) without its weight
// (DropoutSpec::x_f16 with norm_w). gu16_out (nullable, gated, F16 [M][2n]): [gate | up]
// rounded to F16 (launch_gated_rmsnorm_bwd's gu_f16).
void launch_train_norm_quant(const float* x, int ldx, bool gated, int act, const float* w, int n, float eps, int M, float* h_out,
                             float* xn_out, int8_t* q8, int ldq, float* s, cudaStream_t st, float* rs_out = nullptr,
                             void* x16_out = nullptr, void* gu16_out = nullptr);
// dst [rows][ldd] int8 = src [rows][K] F16 integers, zeros in columns K..ldd (the ternary
// weights for the int8 GEMM, from their F16 copy).
void launch_f16_to_i8_rows(const void* src, int64_t rows, int K, int8_t* dst, int ldd, cudaStream_t st);
// The reverse: int8 rows [rows][lds] (lds % 16 == 0, >= K) -> F16 [rows][K].
void launch_i8_to_f16_rows(const int8_t* src, int64_t rows, int K, int lds, void* dst, cudaStream_t st);
// The LoRA branches of a fused linear, per column segment of ColScales (null u: that
// part has no adapter): y += scaling * B u with u [M][r] (lora_fwd_gpu without y) and
// B [segment rows][r].
struct LoraEpilogue {
  int r = 0;  // 0: no LoRA
  float scaling = 0.0f;
  const float* u[3] = {nullptr, nullptr, nullptr};
  const float* B[3] = {nullptr, nullptr, nullptr};
  bool tf32 = false;  // B u on TF32 tensor cores (rank 16)
};
// The ternary linear's epilogue on y [M][N] (row stride ld) holding the int8 GEMM's
// exact int32 sums: v = float(y) / s[m] * cs.scale(column) (as cpu: float(dot) / s *
// scale), plus the LoRA branches (scaling * B u, u [M][r]); written over y as floats, or
// with resid (a [M][N] residual stream) out = resid + v instead (out [M][N], y left).
void launch_linear_epilogue(float* y, int ld, int M, int N, const float* s, const ColScales& cs, const LoraEpilogue& lora,
                            const float* resid, float* out, cudaStream_t st);
// out[i] = x[idx[i]] / out[idx[i]] = x[i] (rows of n floats): the head loss runs on the
// rows that have a label only.
void launch_gather_rows(const float* x, int n, const int32_t* idx, int count, float* out, cudaStream_t st);
void launch_scatter_rows(const float* x, int n, const int32_t* idx, int count, float* out, cudaStream_t st);

// peft's LoRA dropout, generated on the device exactly as train::dropout_mask: element
// (m, c) of the [M][n] input is element t * n + c (t = m % period) of the mask of seed
// seq_seed[m / period] + salt. Hashing is most of a dropout
// pass's cost, so the first pass over an input can store the mask as bits (one uint32
// per 32 columns, rows of dropout_words(n)) and later passes read them.
struct DropoutSpec {
  float p = 0.0f;
  const uint64_t* seq_seed = nullptr;  // device, one per sequence
  uint64_t salt = 0;
  int period = 1;
  uint32_t* bits = nullptr;  // null: hash every time
  bool write_bits = false;   // this pass hashes and fills `bits`; else it reads them
  // The LoRA input passed as its RMSNorm's input x (lora_mma.cu's kernels only, tf32):
  // element (m, c) of the input is x[m][c] * norm_rs[m] * norm_w[c], the norm's inverse RMS
  // and weight (either may be null: 1), so the training step writes no normalized copy for
  // the LoRA products. The mask and 1 / (1 - p) apply as always.
  const float* norm_rs = nullptr;
  const float* norm_w = nullptr;
  // x holds F16 values (the `const float*` x is an F16 array; lora_mma.cu only, K % 8 == 0).
  bool x_f16 = false;
};
// Whether the input needs lora_mma.cu's kernels (no other path reads these inputs).
inline bool folded(const DropoutSpec& d) { return d.norm_rs != nullptr || d.norm_w != nullptr || d.x_f16; }
__host__ __device__ inline int dropout_words(int n) { return (n + 31) / 32; }
// out[m][c] (+)= keep(m, c) ? src[m][c] / (1 - p) : 0 (rows of n, strides lds / ldo).
void launch_dropout(const float* src, int lds, int M, int n, const DropoutSpec& d, float* out, int ldo, bool accumulate, cudaStream_t st);
// train::dropout_threshold(p): the keep test's 16-bit threshold (dropout_keep in device_util.cuh).
uint64_t dropout_threshold(float p);

// ---- train_ops.cu: backward ops and the LoRA branch ----
// train::rmsnorm_bwd (x, dy, dx rows of n). rscale (optional, [M]): the row scales
// split_gemm would compute for dx (its one-term F16 split then happens in lora_dy_pass).
void launch_rmsnorm_bwd(const float* x, const float* w, const float* dy, int M, int n, float eps, float* dx, bool accumulate,
                        cudaStream_t st, float* rscale = nullptr);
// The feed-forward sub-norm and gating backward on M rows: h = act(gate) * up from
// gu = [gate | up] (F each, row stride ldi), dy [M][F] the gradient w.r.t. RMSNorm(h) * w;
// dgu = [d gate | d up] (row stride ldo) = train::rmsnorm_bwd then train::gated_act_bwd,
// the same arithmetic as launch_rmsnorm_bwd (act 0 relu2, 1 silu, 2 gelu). rscale as
// launch_rmsnorm_bwd's, for dgu with column scales s_gate | s_up. gu_f16: gu holds F16
// values (launch_train_norm_quant's gu16_out). split (F16 [M][2F], row stride ldo; needs
// rscale): instead of dgu, split_rows_kernel's one-term split of it with those scales
// (lora_dy_pass's dy_f16, TrainBlas::terms_gemm), half the bytes of dgu.
void launch_gated_rmsnorm_bwd(const float* gu, int ldi, int act, const float* w, const float* dy, int M, int F, float eps, float* dgu, int ldo,
                              cudaStream_t st, float* rscale = nullptr, float s_gate = 1.0f, float s_up = 1.0f, bool gu_f16 = false,
                              void* split = nullptr);
// train::lora_fwd: u [M][r] = dropout(x) A^T, y (+)= scaling u B^T (y row stride ldy;
// x [M][in] contiguous; y null: u only). tf32: the products on TF32 tensor cores.
void lora_fwd_gpu(TrainBlas& blas, const float* x, const float* A, const float* B, int M, int in, int r, int out, float scaling,
                  const DropoutSpec& d, float* u, float* y, int ldy, bool accumulate, bool tf32 = false);
// train::lora_bwd: dA, dB accumulate; dx [M][in] (+)= ... unless null; dy row stride ldy.
// The dropout mask is hashed again, or read from d.bits when the forward stored it.
// du_in: du = scaling dy B already computed (lora_du_gpu), e.g. for split_gemm's LoraDx.
void lora_bwd_gpu(TrainBlas& blas, const float* x, const float* A, const float* B, const float* u, const float* dy, int ldy, int M, int in,
                  int r, int out, float scaling, const DropoutSpec& d, float* dx, float* dA, float* dB, bool accumulate, bool tf32 = false,
                  const float* du_in = nullptr);
// du [M][r] = scaling * dy B (dy row stride ldy, B [out][r]).
void lora_du_gpu(TrainBlas& blas, const float* dy, int ldy, const float* B, int M, int r, int out, float scaling, float* du, bool tf32);

// ---- lora_skinny.cu: the LoRA branch's masked products in one pass over the activation ----
// U [M][r] = drop(X) A^T for X [M][K], A [r][K] (the mask hashed, stored as bits when
// d.write_bits, or read from d.bits); G [r][K] += alpha * U^T drop(X) (mask hashed or read
// from d.bits; scratch slot kSlotSplitK). Deterministic. Both return false, doing nothing,
// for what they do not cover (r > 64, K not a multiple of 4 / of the lane width,
// misaligned rows): the caller takes the cuBLAS path. TERN_TRAIN_LORA=cublas turns them
// off (for comparisons; lora_skinny_enabled() says which). tf32: lora_mma.cu's tensor-core
// kernels where they apply (r <= 32).
bool lora_rows_product(TrainBlas& blas, const float* X, int M, int K, const float* A, int r, const DropoutSpec& d, float* U,
                       bool tf32 = false);
bool lora_cols_product(TrainBlas& blas, const float* U, const float* X, int M, int K, int r, float alpha, const DropoutSpec& d, float* G,
                       bool tf32 = false);
bool lora_skinny_enabled();
// out[i] (+)= alpha * sum over s < S of P[s * stride + i] (stride 0: n), in s order (per-chunk partials),
// times row_scale[i / row_len] and col_scale[i % ncols] where given (a folded RMSNorm's scales).
void launch_partials_sum(const float* P, int S, int64_t n, float alpha, float* out, bool accumulate, cudaStream_t st, int64_t stride = 0,
                         const float* row_scale = nullptr, int row_len = 1, const float* col_scale = nullptr, int ncols = 1);

// ---- lora_dy.cu: one pass over a linear's output gradient for its LoRA parts (tf32) ----
// For dy [M][N] (row stride N) of a linear whose adapted parts p own columns [beg, end):
// du_p [M][r] = scaling dy_p B_p (B_p [end - beg][r]) and dB_p += scaling dy_p^T u_p,
// reading dy once (du and dB each read it on their own before). With split: also the
// one-term F16 split of dy that TrainBlas::split_gemm would make (split [M][N] __half,
// rows scaled by rscale from dy's producer, columns by cs), for TrainBlas::terms_gemm.
// Returns false, doing nothing, where it does not apply (r > 16, part bounds not multiples
// of 128, misaligned rows; TERN_TRAIN_DYPASS=0): the caller takes the separate passes.
struct DyPart {
  int beg = 0, end = 0;
  const float* B = nullptr;  // null: no LoRA on these columns (split only)
  const float* u = nullptr;
  float* du = nullptr;
  float* dB = nullptr;
};
struct DyPass {
  int n = 0, r = 0;
  DyPart part[3];
  float scaling = 1.0f;
  const float* rscale = nullptr;  // with split or dy_f16
  ColScales cs;
  void* split = nullptr;
  // dy is that split already (F16 [M][N], written by its producer; dy = split * rscale / cs,
  // cs one value per part): du and dB from it, no split written.
  bool dy_f16 = false;
};
bool lora_dy_pass(TrainBlas& blas, const float* dy, int M, int N, const DyPass& p);

// ---- lora_mma.cu: the same thin products on TF32 tensor cores (r <= 32, K % 4 == 0) ----
// U [M][r] = alpha * drop(X) A^T for X [M][K], A [r][K]. Masks as
// lora_rows_product (hashed, written, or read).
bool lora_rows_mma(TrainBlas& blas, const float* X, int M, int K, const float* A, int r, float alpha, const DropoutSpec& d,
                   float* U);
// G [r][K] += alpha * U^T drop(X) for X [M][K] (row stride ldx, 0: K), U [M][r]; g_kr: G is
// [K][r] (dB += s dy^T u). The mask read from d.bits or hashed.
bool lora_cols_mma(TrainBlas& blas, const float* U, const float* X, int M, int K, int r, float alpha, const DropoutSpec& d, float* G,
                   int ldx = 0, bool g_kr = false);

// ---- train_attention.cu ----
// RoPE in place on M rows (row stride ld) of n_heads x hd, row m at position
// pos0 + m % period (rope = rope_table); inverse: the backward (rotation by -angle).
void launch_rope_rows(float* x, int ld, int M, int n_heads, int hd, int period, int pos0, const float* rope, bool inverse, cudaStream_t st);
// train::rope_neox_bwd on one sequence's rows [M][n_heads * hd].
void launch_rope_bwd(float* dy, int M, int n_heads, int hd, int pos0, const float* rope, cudaStream_t st);
// Causal GQA attention of B sequences of T positions: q, k, v rows m = b * T + t with row
// stride ld (already roped), out rows at stride ldo. tf32: the products on TF32 tensor
// cores (~1e-3 relative) instead of float32.
struct TrainAttnShape {
  int B = 1, T = 0, nh = 0, nkv = 0, hd = 0;
};
// lse (optional, [nh][B*T]): the tf32 forward's log-sum-exp per head and row (log2 units)
// for the tf32 backward; only written where the flash forward applies. rope (optional,
// rope_table's [T][hd/2] cos, sin): q and k are the projections before RoPE; the forward
// rotates them in place (position: row % T; they stay rotated for the backward), and the
// backward's dq, dk are the gradients w.r.t. the unrotated projections. The flash kernels
// do this as they go; the cuBLAS path with launch_rope_rows before and after.
void train_attention_fwd(TrainBlas& blas, const TrainAttnShape& sh, float* q, float* k, const float* v, int ld, float* out, int ldo,
                         bool tf32 = false, float* lse = nullptr, const float* rope = nullptr);
// flash_attention.cu: the forward on F16 tensor cores (train_attention_fwd's tf32 path for
// head dims 64 and 128, 16-byte aligned rows); scratch: 4 floats on the device. False when
// it does not apply (nothing done then).
bool flash_attention_fwd(const TrainAttnShape& sh, float* q, float* k, const float* v, int ld, float* out, int ldo, float* lse,
                         const float* rope, float* scratch, cudaStream_t st);
// dq, dk, dv (row stride ldd) are written; the probabilities are recomputed. With tf32 and
// the forward's out (row stride ldo, as dout) and lse: flash_attention_bwd where it applies.
void train_attention_bwd(TrainBlas& blas, const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld,
                         const float* dout, int ldo, float* dq, float* dk, float* dv, int ldd, bool tf32 = false,
                         const float* out = nullptr, const float* lse = nullptr, const float* rope = nullptr);
// flash_attention_bwd.cu: the tf32 backward on F16 tensor cores (head dims 64 and 128,
// 16-byte aligned rows); scratch: flash_attention_bwd_scratch(sh) floats on the device.
// False when it does not apply.
size_t flash_attention_bwd_scratch(const TrainAttnShape& sh);
bool flash_attention_bwd(const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld, const float* out,
                         const float* dout, int ldo, const float* lse, float* dq, float* dk, float* dv, int ldd, const float* rope,
                         float* scratch, cudaStream_t st);

// ---- train_optimizer.cu: train/optimizer.cpp on the device, bit for bit ----
// Sum of squares of n floats in double (deterministic order); scratch: >= 1025 doubles on
// the device. Synchronizes st (the sum comes back to the host).
double grad_sq_sum(const float* g, size_t n, double* scratch, cudaStream_t st);
// The per-element constants of Optimizer::step and clip_grad_norm (computed on the host
// exactly as there).
struct OptimizerArgs {
  int sgd = 0;
  int clip = 0;          // g *= coef first (clip_grad_norm scaled)
  float coef = 1.0f;
  float lr = 0, wd = 0;  // SGD
  int decay_on = 0;      // AdamW: p *= decay
  float decay = 1, w1 = 0, b2 = 0, w2 = 0, eps = 0, bc2_sqrt = 1, neg_step = 0;
};
void launch_optimizer_update(float* p, const float* g, float* m, float* v, size_t n, const OptimizerArgs& a, cudaStream_t st);

// ---- split_gemm.cu ----
// C [M][K] = alpha * A [M][N] . W [N][K] to float32 accuracy (TrainBlas::split_gemm with
// a temporary context; synchronizes st).
void split_gemm(const float* A, int M, int N, const void* W, int type, int K, float alpha, float* C, cudaStream_t st);

// ---- head_loss.cu ----
// loss = sum over rows m with labels[m] >= 0 of -log softmax(RMSNorm(x_m) E^T)[labels[m]],
// divided by n_norm (train::cross_entropy_fwd_bwd's convention: labels already aligned,
// -100 ignored), and dx [M][H] = its gradient w.r.t. x (through the output RMSNorm with
// weight normw) unless dx is null (loss only). `head` computes the logits (its weights
// must be hw, exact head). Row m's share of the loss goes to loss_rows[m] (device
// doubles; the caller sums them in order: deterministic). Does not synchronize.
// tf32: dx through TrainBlas::split_gemm's tf32 mode (the logits keep what `head` computes:
// exact, or ~1e-4 with HeadGemm's fast terms).
void head_loss_rows(TrainBlas& blas, HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps,
                    const int32_t* labels, int M, int64_t n_norm, float* dx, double* loss_rows, bool tf32 = false);
// The same for one call: returns the loss (synchronizes st).
double head_loss_fwd_bwd(HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps, const int32_t* labels,
                         int M, int64_t n_norm, float* dx, cudaStream_t st, bool tf32 = false);

}  // namespace tern::cuda
