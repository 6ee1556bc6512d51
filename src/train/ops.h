// Reference forward and backward passes of every op in a BitNet b1.58 block, for LoRA
// fine-tuning (issue 5). Plain C++ on the CPU, templated on T = float (training) and
// T = double (finite-difference gradient checks); both are explicitly instantiated in
// ops_*.cpp. Gradients are checked op by op in tests/unit/test_train_ops.cpp.
//
// Conventions
// - Matrices are row-major. Activations are [M][n]: M tokens (rows) of n features.
// - A backward function takes what its forward saved plus dy (the gradient of the loss
//   w.r.t. the forward's output) and returns dx (and the gradients of trainable params).
//   dx is written (overwritten), unless the function has an `accumulate` flag and it is
//   set, in which case dx += the gradient (for fan-in: q/k/v share one normed input, the
//   residual stream adds). Parameter gradients (LoRA dA, dB) are always ACCUMULATED
//   (+=), so micro-batches and positions sum; zero them at the start of a step.
// - Frozen tensors (ternary weights, norm weights, the tied embedding) get no gradient.
// - The float forwards compute what the inference engine computes (same kernels or the
//   same operation order as src/backend/cpu/kernels.cpp), so the training forward is the
//   inference forward; the tests compare each against cpu:: kernels and a whole-model
//   composition against the CPU engine's logits.
//
// Straight-through estimator (BITNET_FACTS "Training"). The ternary linear's forward
// quantizes its input per token to int8 (quantize_row_i8), takes the exact integer dot
// with the ternary weights Wq and rescales: y = (Wq . xq) / s * m. Rounding has zero
// derivative almost everywhere, so training treats the activation quantizer (and the
// already-applied weight quantizer) as identity: the backward is the exact gradient of
// the UNQUANTIZED surrogate y = m * Wq x, i.e. dx = m * Wq^T dy. The tests check that
// backward against finite differences of the surrogate (ActQuant::None) in float64; the
// quantized forward itself is not differentiable and is never finite-differenced.
//
// What each op saves for its backward (nothing else is needed):
//   rmsnorm            x (the input); r = 1/rms is recomputed.
//   ternary_linear     nothing (W is frozen; dx = m * Wq^T dy needs only dy).
//   lora               x (its float input, before the ternary linear's quantizer), the
//                      dropout mask if p > 0, and u = A x_d [M][r] from the forward.
//   gated_act          g and u (the gate and up projections' outputs, pre-activation).
//   rope_neox          nothing but the positions (it is a rotation: the backward is the
//                      inverse rotation of dy). Applied in place.
//   attention          q, k, v (roped) and lse [T][n_heads], the per-(query, head)
//                      log-sum-exp of the scaled scores. The softmax probabilities are
//                      NOT kept: the backward recomputes them as exp(s - lse)
//                      (flash-attention style, O(T * n_heads) saved instead of O(T^2)).
//   cross_entropy      xn (the final-normed hidden) and lse [M] (double); the backward
//                      recomputes the logits (cross_entropy_fwd_bwd does both in one
//                      pass over the head when the loss is the end of the graph).
//   residual add       nothing (dy passes to both branches); embedding lookup: no
//                      trainable params, no op here.
#pragma once
#include <cmath>
#include <cstdint>

#include "model/model.h"
#include "model/ternary.h"

namespace tern::train {

// ---------------------------------------------------------------------------------------
// RMSNorm (HF BitNetRMSNorm): y = x / sqrt(mean(x^2) + eps) * w over each of M rows of n.
// The sum of squares is accumulated in double (as cpu::rmsnorm). w is frozen.
template <class T>
void rmsnorm_fwd(const T* x, const float* w, int64_t M, int64_t n, float eps, T* y);
// dx_i = r * w_i dy_i - x_i * r^3 / n * sum_j w_j dy_j x_j,  r = 1/sqrt(mean(x^2) + eps).
template <class T>
void rmsnorm_bwd(const T* x, const float* w, const T* dy, int64_t M, int64_t n, float eps, T* dx,
                 bool accumulate = false);

// ---------------------------------------------------------------------------------------
// Ternary linear y[M][W.rows] = BitLinear(x[M][W.cols]).
enum class ActQuant {
  Int8,  // the engine's forward: per-token absmax int8, exact int dot, / s * m. For
         // T = double the same float arithmetic runs on float(x) (not differentiable).
  None,  // the STE surrogate y = m * Wq x, computed in T (what the backward differentiates).
};
template <class T>
void ternary_linear_fwd(const T* x, const TernaryMatrix& W, int64_t M, T* y, ActQuant quant = ActQuant::Int8,
                        bool accumulate = false);
// STE: dx[M][W.cols] = m * Wq^T dy (dy [M][W.rows]). Needs nothing saved.
template <class T>
void ternary_linear_bwd(const TernaryMatrix& W, const T* dy, int64_t M, T* dx, bool accumulate = false);

// ---------------------------------------------------------------------------------------
// LoRA branch (peft): y = scaling * B (A x_d), x_d = dropout(x) = x * mask / (1 - p).
// x [M][in], A [r][in], B [out][r], u [M][r] (written: A x_d, saved for the backward),
// y [M][out]. mask [M][in] (1 keep, 0 drop) is used only when p > 0 (nullptr allowed
// when p == 0). A and B are float32 (the adapter's storage) for T = float, double for
// T = double (so they can be finite-differenced). With accumulate, y += the branch (the
// way it adds onto the frozen linear's output).
template <class T>
void lora_fwd(const T* x, const T* A, const T* B, int64_t M, int64_t in, int64_t r, int64_t out, float scaling,
              const uint8_t* mask, float p, T* u, T* y, bool accumulate = false);
// du = scaling * dy B; dB += scaling * dy^T u; dA += du^T x_d; dx (+)= (du A) * mask / (1-p).
// dA [r][in] and dB [out][r] are accumulated. dx may be nullptr (input needs no gradient).
template <class T>
void lora_bwd(const T* x, const T* A, const T* B, const T* u, const T* dy, int64_t M, int64_t in, int64_t r,
              int64_t out, float scaling, const uint8_t* mask, float p, T* dx, T* dA, T* dB, bool accumulate = false);
// A dropout mask like torch's nn.Dropout: each element kept (1) with probability 1 - p,
// from a splitmix64 stream of `seed` (reproducible across platforms): element i is kept
// when 16-bit lane i % 4 of output i / 4 is >= dropout_threshold(p). One 64-bit hash per
// four elements: the hash was most of a dropout pass's cost on the GPU, which generates
// the same masks (device_util.cuh). p is resolved to 1/65536.
void dropout_mask(int64_t n, float p, uint64_t seed, uint8_t* mask);
inline uint32_t dropout_threshold(float p) { return static_cast<uint32_t>(std::ceil(static_cast<double>(p) * 65536.0)); }

// ---------------------------------------------------------------------------------------
// Gated activation h = act(g) * u elementwise over n values (cpu::gated_activation):
// Relu2 (BitNet: relu(g)^2), Silu, Gelu (erf form, the engine's constant 0.70710678f).
template <class T>
void gated_act_fwd(const T* g, const T* u, int64_t n, Activation act, T* h);
// dg = dh * u * act'(g), du = dh * act(g).
template <class T>
void gated_act_bwd(const T* g, const T* u, const T* dh, int64_t n, Activation act, T* dg, T* du);
template <class T>
inline void relu2_gate_fwd(const T* g, const T* u, int64_t n, T* h) {
  gated_act_fwd(g, u, n, Activation::Relu2, h);
}
template <class T>
inline void relu2_gate_bwd(const T* g, const T* u, const T* dh, int64_t n, T* dg, T* du) {
  gated_act_bwd(g, u, dh, n, Activation::Relu2, dg, du);
}

// ---------------------------------------------------------------------------------------
// NeoX / rotate_half RoPE in place on M rows of n_heads * head_dim, row i at position
// pos0 + i, pairs (j, j + head_dim/2), inv_freq from cpu::rope_inv_freq (head_dim/2
// floats). The angle is computed in float exactly as the engine does; cos/sin in T.
template <class T>
void rope_neox_fwd(T* x, int64_t M, int64_t n_heads, int64_t head_dim, int64_t pos0, const float* inv_freq);
// The inverse rotation (angle -> -angle) applied in place to dy: dx = R^T dy.
template <class T>
void rope_neox_bwd(T* dy, int64_t M, int64_t n_heads, int64_t head_dim, int64_t pos0, const float* inv_freq);

// ---------------------------------------------------------------------------------------
// Causal GQA attention of one sequence of T tokens starting at position 0:
// q [T][n_heads*hd], k, v [T][n_kv*hd] (already roped), query head h uses KV head
// h / (n_heads / n_kv); scores scaled by 1/sqrt(hd); query t sees keys 0..t.
// out [T][n_heads*hd]; lse [T][n_heads] (saved: log-sum-exp of the scaled scores).
template <class T>
void attention_fwd(const T* q, const T* k, const T* v, int64_t Tn, int64_t n_heads, int64_t n_kv, int64_t hd, T* out,
                   T* lse);
// Recomputes p = exp(s - lse). dq [T][n_heads*hd], dk, dv [T][n_kv*hd] are written;
// dk/dv sum over the query heads sharing a KV head.
template <class T>
void attention_bwd(const T* q, const T* k, const T* v, const T* lse, const T* dout, int64_t Tn, int64_t n_heads,
                   int64_t n_kv, int64_t hd, T* dq, T* dk, T* dv);

// ---------------------------------------------------------------------------------------
// Tied LM head and causal-LM cross entropy. E is the embedding [V][H] (any stored
// precision, frozen), xn [M][H] the final-normed hidden states.
// logits[M][V] = xn E^T. For T = float each logit is cpu::dot_f32(E_v, xn_i, H), the
// engine's exact head.
template <class T>
void lm_head_logits(const T* xn, const FloatMatrix& E, int64_t M, T* logits);

// The labels are ALREADY ALIGNED: labels[i] is the target of position i (HF's causal-LM
// loss shifts labels by one first: labels[i] = input_ids[i + 1]; the caller does that).
// kIgnore (-100) positions are skipped. loss = sum over kept i of (lse_i - logit_i[label_i])
// / n_norm, where n_norm = the number of kept positions when passed <= 0 (HF's mean), or
// the given count (to normalise several calls, e.g. micro-batches, by one global count).
// No kept position gives loss 0 and dxn = 0 (HF would give NaN). Labels outside
// [0, V) other than kIgnore throw tern::Error. The log-sum-exp is max-subtracted with
// the sum of exponentials and the loss accumulated in double. Only kept rows go through
// the head (SFT masks whole prompts); lse [M] is written, 0 for kIgnore rows.
constexpr int32_t kIgnore = -100;
template <class T>
double cross_entropy_fwd(const T* xn, const FloatMatrix& E, const int32_t* labels, int64_t M, int64_t n_norm,
                         double* lse);
// dxn[M][H] = E^T dlogits, dlogits_i = dloss * (softmax_i - onehot(label_i)) / n_norm
// (zero rows for kIgnore), recomputing the logits. dxn is written.
template <class T>
void cross_entropy_bwd(const T* xn, const FloatMatrix& E, const int32_t* labels, const double* lse, int64_t M,
                       int64_t n_norm, double dloss, T* dxn);
// Both in one pass over the head (the logits are computed once): returns the loss and
// writes dxn for dloss (1 for plain training).
template <class T>
double cross_entropy_fwd_bwd(const T* xn, const FloatMatrix& E, const int32_t* labels, int64_t M, int64_t n_norm,
                             double dloss, T* dxn);

}  // namespace tern::train
