// Reference CPU kernels for the W1.58A8 forward pass (BITNET_FACTS "Quantization
// math"). Plain C++ written so the compiler can vectorise it; faster SIMD versions
// come later and are tested against these.
#pragma once
#include <cstdint>

#include "model/model.h"

namespace tern::cpu {

// out = x / sqrt(mean(x^2) + eps) * w   (HF BitNetRMSNorm, float32), the sum of squares
// by sum_squares.
void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out);

// sum x_i^2 in double, in a fixed order: 16 lanes (lane j takes i = j mod 16), folded in
// halves, then the tail. Double: the sum of 6912 squares must not lose the small ones
// (a float's square is exact in double, so only the additions round). Lanes: one chain
// of dependent additions ran ~4 cycles an element (2.4 us for 2560, ~0.4 ms of a 2B
// decode token on one core while the other waited); 16 chains vectorize. Shared by the
// engine and the training reference (train::rmsnorm_fwd), which must agree bit for bit.
template <class T>
inline double sum_squares(const T* x, int64_t n) {
  constexpr int kLanes = 16;
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] += static_cast<double>(x[i + j]) * static_cast<double>(x[i + j]);
  }
  for (int half = kLanes / 2; half > 0; half /= 2) {
    for (int j = 0; j < half; ++j) lane[j] += lane[j + half];
  }
  double ss = lane[0];
  for (; i < n; ++i) ss += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return ss;
}

// Per-token absmax int8 quantization at the input of every ternary linear:
// s = 127 / max(max|x|, 1e-5), q = clamp(round_half_even(x * s), -128, 127).
// q is zero-padded from n to `padded`. Returns s; *qsum = sum of q (for the dot trick).
float quantize_row_i8(const float* x, int64_t n, int64_t padded, int8_t* q, int32_t* qsum);

// Exact integer dot of one tern2 row (padded_cols weights) with int8 activations:
// sum_k (code_k - 1) * q_k = sum_k code_k * q_k - qsum. Dispatches to the widest SIMD
// variant the CPU has (simd.h).
int32_t ternary_dot(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum);

// The single-token dot (decode: every weight read once per token) may want the token's
// int8 row in another order: decode_acts returns q itself, or `scratch` (padded_cols bytes)
// holding the row as ternary_dot_decode reads it (the 512-bit kernel's pair-interleaved
// order, simd.h). ternary_dot_decode(row, decode_acts(q, ...), ...) == ternary_dot(row, q, ...).
const int8_t* decode_acts(const int8_t* q, int64_t padded_cols, int8_t* scratch);
int32_t ternary_dot_decode(const uint8_t* row, const int8_t* acts, int64_t padded_cols, int32_t qsum);
// ternary_dot_decode of four rows (out[0..3]) with the same activations: decode's loops
// give it rows from far apart (four streams; simd_avx512.cpp says why).
void ternary_dot4_decode(const uint8_t* const* rows, const int8_t* acts, int64_t padded_cols, int32_t qsum, int32_t* out);
// How many far-apart rows decode should hand the four-row dots (ternary_dot4_decode,
// dot_half4_f32) at once: 4 where they run the rows together (AVX2 and up), else 1 (the
// scalar path: four single dots, and rows one after another stream best; four quarters
// taken row by row through single dots ran the AVX2 path ~5-16 % slower).
int decode_streams();

// HF rotate_half RoPE on n_heads heads of head_dim, pairs (i, i + head_dim/2), at
// position pos: angle_i = float(pos) * inv_freq[i], rotated by std::cos / std::sin of it.
void rope_neox(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, const float* inv_freq);
// The same split in two: rope_table writes one position's cos (cs[0, half)) and sin
// (cs[half, 2 half)), rope_neox_table rotates with them. The engine computes a token's
// table once for q and k of every layer (the sines and cosines recomputed per call were
// ~1.5 % of a decode step, all on one thread). Bit for bit the one-call version.
void rope_table(int64_t pos, const float* inv_freq, int64_t half, float* cs);
void rope_neox_table(float* x, int64_t n_heads, int64_t head_dim, const float* cs);
// inv_freq[i] = 1 / theta^(2i/head_dim), computed in float32 as transformers does.
void rope_inv_freq(float theta, int64_t head_dim, float* inv_freq);

// ternary_dot of one row with 4 token rows at once (q, q + ldq, q + 2 ldq, q + 3 ldq; their
// qsums): out[t]. The prefill's inner kernel: the row's codes are unpacked once.
void ternary_dot4(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
// The same with 8 token rows (out[0..7]).
void ternary_dot8(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);

// Causal attention of one query head over `n_ctx` cached positions (keys/values with
// row stride `stride` floats); q . k by dot_f32 (train::attention_fwd's float dot too).
// `scores` is scratch of n_ctx floats.
void attention_head(const float* q, const float* k, const float* v, int64_t stride, int64_t n_ctx, int64_t head_dim,
                    float* scores, float* out);
// The same over an F16 cache (uint16_t bits): each element widened as it is read, then
// the very float ops of the F32 version (so a cache of F16-rounded floats gives the same
// result either way).
void attention_head(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n_ctx, int64_t head_dim,
                    float* scores, float* out);

// Float dot product in a fixed order whatever the build or CPU: 32 lanes of fused
// multiply-adds (lane j takes elements i = j mod 32), a fixed reduction, then the tail
// (simd.h kDotLanes says why 32).
// Dispatched (simd.h); every variant gives the same float.
float dot_f32(const float* a, const float* b, int64_t n);
// The same dot with w F16 (or BF16 when bf16) converted as it is read: equal, bit for bit,
// to dot_f32 of the converted row (the conversion is exact). The LM head's kernel.
float dot_half_f32(const uint16_t* w, bool bf16, const float* x, int64_t n);
// dot_half_f32 of four rows (out[0..3]) with one x, each the same float as alone: decode's
// LM head gives it rows from far apart (four streams, as ternary_dot4_decode).
void dot_half4_f32(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out);

// Exact int32 dot of two int8 vectors (the int8 LM head: model/head_i8.h). Exact for
// n < 2^17 (127 * 128 * n fits int32), far above any hidden size.
int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n);

// h = act(g) * u elementwise.
void gated_activation(const float* g, const float* u, int64_t n, Activation act, float* h);

}  // namespace tern::cpu
