// SIMD variants of the CPU kernels, chosen at run time (issue 6): the widest instruction
// set the CPU has, or the portable scalar code everywhere else, and TERN_CPU_SIMD=scalar
// forces the scalar path (tests use it to check both on one machine). Every variant
// computes exactly what the scalar one does (integer dots are exact).
#pragma once
#include <cstdint>

#include "util/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tern::cpu {

// "avx512", "avx-vnni", "avx512-vnni", "avx2" or "scalar": what the dispatching kernels
// (cpu::ternary_dot, ...) run. "avx512": 512-bit decode and float dots (AVX-512 F, BW, VL
// and VNNI), the prefill tiles as "avx-vnni" (or "avx512-vnni" without AVX-VNNI).
// TERN_CPU_SIMD=avx-vnni, =avx2 or =scalar caps it; =avx512-vnni caps it at the 256-bit
// VNNI kernels in their EVEX form where both encodings exist.
const char* simd_level();

// The variants of the dispatching kernels (kernels.h), for tests. The _avx2 ones may only
// be called when has_avx2().
bool has_avx2();
int32_t ternary_dot_scalar(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum);
int32_t ternary_dot_avx2(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum);
void ternary_dot4_scalar(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
void ternary_dot4_avx2(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
void ternary_dot8_scalar(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
void ternary_dot8_avx2(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
// Decode's four-row dots (rows from far apart, one token; activations in q's own order):
// per row ternary_dot's sum. dot_half4_f32_avx2: per row dot_half_f32's float.
void ternary_dot4_decode_scalar(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols, int32_t qsum, int32_t* out);
void ternary_dot4_decode_avx2(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols, int32_t qsum, int32_t* out);
void ternary_dot4_decode_vnni(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols, int32_t qsum, int32_t* out);
void ternary_dot4_decode_vnni512(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols, int32_t qsum, int32_t* out);
void dot_half4_f32_avx2(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out);
float dot_f32_scalar(const float* a, const float* b, int64_t n);
float dot_f32_avx2(const float* a, const float* b, int64_t n);
float dot_half_f32_scalar(const uint16_t* w, bool bf16, const float* x, int64_t n);
float dot_half_f32_avx2(const uint16_t* w, bool bf16, const float* x, int64_t n);
// AVX-VNNI (has_avxvnni(): AVX2 + the VEX vpdpbusd) variants of the ternary dots, and the
// same code for AVX512-VNNI + AVX512VL (has_avx512vnni(): the EVEX vpdpbusd, 256-bit).
bool has_avxvnni();
int32_t ternary_dot_vnni(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum);
void ternary_dot4_vnni(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
void ternary_dot8_vnni(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
bool has_avx512vnni();
int32_t ternary_dot_vnni512(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum);
void ternary_dot4_vnni512(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
void ternary_dot8_vnni512(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out);
// AVX-512 with 512-bit registers (simd_avx512.cpp; has_avx512(): F, BW, VL and VNNI): the
// decode dot over the pair-interleaved activations of interleave_block_pairs, and the float
// dots (two 16-lane registers: kDotLanes in one step).
bool has_avx512();
void interleave_block_pairs(const int8_t* q, int64_t padded_cols, int8_t* out);
int32_t ternary_dot_decode_avx512(const uint8_t* row, const int8_t* acts, int64_t padded_cols, int32_t qsum);
void ternary_dot4_decode_avx512(const uint8_t* const* rows, const int8_t* acts, int64_t padded_cols, int32_t qsum, int32_t* out);
float dot_f32_avx512(const float* a, const float* b, int64_t n);
float dot_half_f32_avx512(const uint16_t* w, bool bf16, const float* x, int64_t n);
void dot_half4_f32_avx512(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out);

// The float dots' fixed order, shared by every variant (kernels.h dot_f32): kDotLanes
// lanes, lane j accumulating the elements i = j mod kDotLanes with fused multiply-adds,
// then reduce_dot_lanes (a fixed tree), then the tail's own fused chain added last. 32
// lanes: four 8-lane AVX2 chains or two 16-lane AVX-512 ones, enough independent chains
// that the LM head's dot runs faster than memory delivers its rows (16 lanes, two chains,
// read ~28 GB/s per core from L2: about one core's share of the bandwidth).
constexpr int kDotLanes = 32;
float reduce_dot_lanes(const float* acc, float tail);
#if defined(__x86_64__) || defined(__i386__)
// Decode reads each weight row once: its dots prefetch 2 KB ahead of where they read in
// each stream (T0; the four-row F16 head dot read ~50-56 GB/s without, 57-69 with; 1-2 KB
// best, 512 B no gain, 4 KB less; Zen 5 VM, 2 threads, 2026-11-27; the ternary dots a few
// % more). A hint: past the end of a row it reads nothing and faults nothing.
constexpr int kPrefetchAhead = 2048;
static inline void prefetch_ahead(const void* p) { _mm_prefetch(static_cast<const char*>(p) + kPrefetchAhead, _MM_HINT_T0); }

// Its steps after the first, in registers, on a[0..7] (s0) and a[8..15] (s1): the same
// additions in the same order. Inline: clang rejects 256-bit arguments to a function
// declared without AVX.
__attribute__((target("avx2"))) static inline float reduce_halves_avx2(__m256 s0, __m256 s1, float tail) {
  const __m256 b = _mm256_add_ps(s0, s1);                                              // a[j] += a[j + 8]
  const __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));  // a[j] += a[j + 4]
  const __m128 d = _mm_add_ps(c, _mm_movehl_ps(c, c));                                  // a0 + a2, a1 + a3
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d))) + tail;
}
#endif
// Element i of a float (KIND 0), F16 (1) or BF16 (2) vector.
template <int KIND>
inline float dot_elem(const void* w, int64_t i) {
  if constexpr (KIND == 0) {
    return static_cast<const float*>(w)[i];
  } else if constexpr (KIND == 1) {
    return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
  } else {
    return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
  }
}

}  // namespace tern::cpu
