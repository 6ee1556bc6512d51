// Host-callable wrappers around single CUDA kernels, for tests/cuda (each is checked
// against its CPU reference in backend/cpu/kernels.h). Inputs and outputs are host
// vectors; every output buffer is poisoned (NaN / 0x7f7f7f7f) before the kernel runs,
// so an unwritten element shows up. Throws tern::Error on CUDA errors.
#pragma once
#include <cstdint>
#include <vector>

#include "model/head_i8.h"
#include "model/model.h"

namespace tern::cuda::testing {

struct Quantized {
  int64_t padded = 0;          // n rounded up to 128
  std::vector<int8_t> q;       // [M][padded], natural order
  std::vector<float> s;        // [M]
  std::vector<int32_t> qsum;   // [M]
};
// Prefill quantization kernel: RMSNorm(x_m) * w then int8 absmax, M rows of n.
Quantized norm_quant(const float* x, const float* w, int64_t M, int64_t n, float eps);

// Exact int32 dots [M][rows] of w with int8 activations q [M][padded_cols] (zero
// padded): M == 1 without use_gemm runs the decode GEMV, otherwise the tensor-core GEMM.
std::vector<int32_t> ternary_dots(const TernaryMatrix& w, const int8_t* q, int64_t M, bool use_gemm);

// y[m] = W . quant(RMSNorm(x_m) * normw) (+ init[m] when add): M == 1 through the decode
// GEMV with its fused norm+quant prologue, M > 1 through norm_quant + GEMM.
std::vector<float> ternary_linear(const TernaryMatrix& w, const float* x, const float* normw, int64_t M, float eps, bool add,
                                  const std::vector<float>& init);

// Decode GEMV gate/up epilogue: h = act(gate . xq) * (up . xq), act 0 relu2, 1 silu, 2 gelu.
std::vector<float> gate_up(const TernaryMatrix& gate, const TernaryMatrix& up, const float* x, const float* normw, float eps,
                           int act);

// Prefill attention: q [M][n_heads*hd] already roped, k/v [pos0+M][n_kv*hd];
// query m attends to positions 0..pos0+m. Returns [M][n_heads*hd].
std::vector<float> attention_prefill(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                     int n_heads, int n_kv, int hd, int M, int pos0);

// Decode attention at position pos with `splits` context splits: qkv_raw = un-roped
// [q | k | v] of the new token, k/v caches hold pos roped rows. Returns the attention
// output [n_heads*hd]; *k_row / *v_row get the cache rows written at pos.
std::vector<float> attention_decode(const std::vector<float>& qkv_raw, const std::vector<float>& k_cache,
                                    const std::vector<float>& v_cache, int n_heads, int n_kv, int hd, int pos, float theta,
                                    int splits, std::vector<float>* k_row, std::vector<float>* v_row);

// LM head: logits [M][V] = emb . (RMSNorm(x_m) * normw) and each row's argmax (computed on
// the device). gemm: the cuBLAS path (HeadGemm) instead of the CUDA-core GEMV. i8: the
// int8 head (model/head_i8.h) made from emb.
struct HeadResult {
  std::vector<float> logits;
  std::vector<int32_t> argmax;
};
HeadResult lm_head(const FloatMatrix& emb, const float* x, const float* normw, int64_t M, float eps, bool gemm = false,
                   const HeadI8* i8 = nullptr);

// Training loss over the tied head (head_loss.cu): loss and dx [M][H] for x [M][H].
struct HeadLossResult {
  double loss = 0;
  std::vector<float> dx;
};
// fast: the training loss of --precision tf32 (HeadGemm's fast terms, one-term split_gemm).
HeadLossResult head_loss(const FloatMatrix& emb, const float* x, const float* normw, const int32_t* labels, int64_t M, int64_t n_norm,
                         float eps, bool fast = false);

// STE backward of a ternary linear on the GPU: dx [M][cols] = scale * dy [M][rows] . Wq.
std::vector<float> ternary_linear_bwd(const TernaryMatrix& w, const float* dy, int64_t M);
// split_gemm with a random-access F16/BF16/F32 W: C [M][K] = alpha * A [M][N] . W [N][K].
std::vector<float> split_gemm(const float* A, int64_t M, int64_t N, const FloatMatrix& W, float alpha);

// TrainBlas::split_gemm with LoraDx parts (F16 W [N][K] of small integers given as floats):
// C [M][K] (+)= alpha A [M][N] . W + for each part, in order, mask ? (du . A_p) * keep : 0
// (du [M][r], A_p [r][K], bits rows of (K + 31) / 32 words, empty: every element kept).
struct LoraDxPart {
  std::vector<float> du, A;
  std::vector<uint32_t> bits;
};
std::vector<float> split_gemm_lora(const std::vector<float>& A, int M, int N, const std::vector<float>& W, int K, float alpha, int r,
                                   const std::vector<LoraDxPart>& parts, float keep, const std::vector<float>& c_in, bool accumulate,
                                   bool tf32);

// lora_dy_pass on dy [M][N] (parts as DyPart: columns [beg, end), B [end - beg][r] and u
// [M][r], B empty: no LoRA there): du per part, dB per part (starting from dB_in), and
// with rscale non-empty the F16 split (bits) with column segments seg_end / seg_scale.
struct DyPassPart {
  int beg = 0, end = 0;
  std::vector<float> B, u, dB_in;
};
struct DyPassResult {
  bool applied = false;
  std::vector<std::vector<float>> du, dB;
  std::vector<uint16_t> split;
};
// dy16 (with rscale): dy given as that F16 split instead (DyPass::dy_f16; `dy` unused).
DyPassResult lora_dy_pass(const std::vector<float>& dy, int M, int N, int r, float scaling, const std::vector<DyPassPart>& parts,
                          const std::vector<float>& rscale, const std::vector<int>& seg_end, const std::vector<float>& seg_scale,
                          const std::vector<uint16_t>* dy16 = nullptr);

// launch_i8_to_f16_rows: int8 [rows][lds] -> F16 bits [rows][K].
std::vector<uint16_t> i8_to_f16_rows(const std::vector<int8_t>& src, int rows, int K, int lds);

// launch_train_norm_quant: x [M][n] (gated: [M][2n] = [gate | up], act 0 relu2 1 silu 2 gelu).
struct TrainQuantized {
  std::vector<float> h, xn, s, rs;  // h only when gated; rs: each row's inverse RMS
  std::vector<int32_t> q;           // [M][n]
  std::vector<int32_t> pad;         // each row's padding up to the GEMM stride (must be 0)
  std::vector<uint16_t> x16;        // F16 [M][n]: v * rs (x16_out)
  std::vector<uint16_t> gu16;       // F16 [M][2n], gated only: the input (gu16_out)
};
TrainQuantized train_norm_quant(const std::vector<float>& x, const std::vector<float>& w, int M, int n, bool gated, int act, float eps);

// launch_linear_epilogue on int32 sums y [M][N] (up to 3 column segments ending at
// seg_end with seg_scale; u[k] [M][r] and B[k] [segment width][r] empty: no LoRA there);
// resid empty: the floats written over y, else resid + the linear.
std::vector<float> linear_epilogue(const std::vector<int32_t>& y, int M, int N, const std::vector<float>& s, const std::vector<int>& seg_end,
                                   const std::vector<float>& seg_scale, int r, float scaling, const std::vector<std::vector<float>>& u,
                                   const std::vector<std::vector<float>>& B, const std::vector<float>& resid, bool tf32 = false);

// train_ops.cu round trips (host vectors in and out; see kernels.h).
// rscale (optional): the kernel's split row scales of dx.
std::vector<float> rmsnorm_bwd(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& dy, int M, int n,
                               float eps, const std::vector<float>& dx_in, bool accumulate, std::vector<float>* rscale = nullptr);
// launch_gated_rmsnorm_bwd on gu [M][2n] = [gate | up], dy [M][n]: [M][2n] = [d gate | d up].
// gu_f16: gu goes to the device as F16 (its values should be exact in F16 to compare).
// split (needs rscale): the F16 split written instead of dgu, returned there (bits).
std::vector<float> gated_rmsnorm_bwd(const std::vector<float>& gu, const std::vector<float>& w, const std::vector<float>& dy, int M, int n,
                                     int act, float eps, std::vector<float>* rscale = nullptr, float s_gate = 1.0f, float s_up = 1.0f,
                                     bool gu_f16 = false, std::vector<uint16_t>* split = nullptr);
struct LoraGrads {
  std::vector<float> u, y, dx, dA, dB;
};
// lora_fwd_gpu then lora_bwd_gpu with dy; y starts as y_in (accumulate), dx as dx_in, dA/dB
// as given; dropout masks from the seed as train::dropout_mask(M * in, p, seed), stored as
// bits by the forward and read by the backward when `bits` (as the training step does).
// tf32: the --precision tf32 products (lora_mma.cu's tensor-core kernels where they apply).
// norm_rs [M], norm_w [in] (each nullable): the LoRA input is x * norm_rs[m] * norm_w[c]
// (DropoutSpec::norm_rs; tf32 only); x_f16: x goes to the device as F16 (DropoutSpec::x_f16).
LoraGrads lora_round_trip(const std::vector<float>& x, const std::vector<float>& A, const std::vector<float>& B, int M, int in, int r,
                          int out, float scaling, uint64_t seed, float p, const std::vector<float>& y_in, const std::vector<float>& dy,
                          const std::vector<float>& dx_in, const std::vector<float>& dA_in, const std::vector<float>& dB_in,
                          bool bits = false, bool tf32 = false, const std::vector<float>* norm_rs = nullptr,
                          const std::vector<float>* norm_w = nullptr, bool x_f16 = false);

// train_attention.cu round trips: RoPE backward in place on dy [M][nh*hd] (positions
// pos0..), and attention forward + backward of B sequences of T positions (rows b*T + t).
std::vector<float> rope_bwd(const std::vector<float>& dy, int M, int nh, int hd, int pos0, float theta);
struct AttnGrads {
  std::vector<float> out, dq, dk, dv;
};
// train_attention_fwd then _bwd on q, k, v side by side in one buffer; rope_theta > 0: q
// and k unrotated, RoPE applied by the attention (the gradients w.r.t. the unrotated ones).
AttnGrads attention_train(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                          const std::vector<float>& dout, int B, int T, int nh, int nkv, int hd, bool tf32 = false,
                          float rope_theta = 0.0f);

}  // namespace tern::cuda::testing
