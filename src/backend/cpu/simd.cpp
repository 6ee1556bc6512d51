#include "backend/cpu/simd.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define TERN_X86 1
#endif

#include "backend/cpu/kernels.h"
#include "util/half.h"

namespace tern::cpu {

int32_t ternary_dot_scalar(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) {
  int32_t acc = 0;
  for (int64_t b = 0; b < padded_cols / 128; ++b) {
    const uint8_t* p = row + b * 32;
    const int8_t* x = q + b * 128;
    int32_t blk = 0;
    for (int j = 0; j < 32; ++j) {
      const int byte = p[j];
      blk += (byte >> 6) * x[j] + ((byte >> 4) & 3) * x[j + 32] + ((byte >> 2) & 3) * x[j + 64] + (byte & 3) * x[j + 96];
    }
    acc += blk;
  }
  return acc - qsum;
}

void ternary_dot4_scalar(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out) {
  for (int t = 0; t < 4; ++t) out[t] = ternary_dot_scalar(row, q + t * ldq, padded_cols, qsum[t]);
}

void ternary_dot8_scalar(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out) {
  for (int t = 0; t < 8; ++t) out[t] = ternary_dot_scalar(row, q + t * ldq, padded_cols, qsum[t]);
}

void ternary_dot4_decode_scalar(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols, int32_t qsum, int32_t* out) {
  for (int r = 0; r < 4; ++r) out[r] = ternary_dot_scalar(rows[r], q, padded_cols, qsum);
}

namespace {

template <int KIND>
float dot_lanes_scalar(const void* w, const float* x, int64_t n) {
  float acc[kDotLanes] = {};
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    for (int j = 0; j < kDotLanes; ++j) acc[j] = std::fma(dot_elem<KIND>(w, i + j), x[i + j], acc[j]);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail = std::fma(dot_elem<KIND>(w, i), x[i], tail);
  return reduce_dot_lanes(acc, tail);
}

}  // namespace

float reduce_dot_lanes(const float* acc, float tail) {
  float a[16];
  for (int j = 0; j < 16; ++j) a[j] = acc[j] + acc[j + 16];
  for (int j = 0; j < 8; ++j) a[j] += a[j + 8];
  for (int j = 0; j < 4; ++j) a[j] += a[j + 4];
  return (a[0] + a[2]) + (a[1] + a[3]) + tail;
}

float dot_f32_scalar(const float* a, const float* b, int64_t n) { return dot_lanes_scalar<0>(a, b, n); }
float dot_half_f32_scalar(const uint16_t* w, bool bf16, const float* x, int64_t n) {
  return bf16 ? dot_lanes_scalar<2>(w, x, n) : dot_lanes_scalar<1>(w, x, n);
}

#ifdef TERN_X86
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

// Helpers are named functions, not lambdas: GCC does not give a lambda its enclosing
// function's target attribute, and without -mavx2 the intrinsics would not inline.
__attribute__((target("avx2"))) static inline __m256i ld(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

__attribute__((target("avx2"))) static inline int32_t hsum_avx2(__m256i acc) {
  __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4e));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xb1));
  return _mm_cvtsi128_si32(v);
}

__attribute__((target("avx2"))) static inline __m256i avx2_group(__m256i w, int shift, __m256i x) {
  return _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, shift), _mm256_set1_epi8(3)), x);
}
// One block's int16 pair sums over its four groups (x0..x3: the groups' activations).
__attribute__((target("avx2"))) static inline __m256i avx2_block(__m256i w, __m256i x0, __m256i x1, __m256i x2, __m256i x3) {
  return _mm256_add_epi16(_mm256_add_epi16(avx2_group(w, 6, x0), avx2_group(w, 4, x1)),
                          _mm256_add_epi16(avx2_group(w, 2, x2), avx2_group(w, 0, x3)));
}

// Per 128-weight block: the 32 bytes hold the codes of columns j, j+32, j+64, j+96 in
// bits 7-6, 5-4, 3-2, 1-0 (tern2). Shifting 16-bit lanes and masking with 3 gives each
// group's 32 codes (0..2) as bytes; maddubs multiplies them with the 32 int8 activations
// of that group into int16 pair sums (|sum| <= 4 groups * 2 * 2 * 128 = 2048), madd
// widens to int32. One horizontal sum per row.
__attribute__((target("avx2"))) int32_t ternary_dot_avx2(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (int64_t b = 0; b < padded_cols / 128; ++b) {
    prefetch_ahead(row + b * 32);
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
    const int8_t* x = q + b * 128;
    const __m256i s = avx2_block(w, ld(x), ld(x + 32), ld(x + 64), ld(x + 96));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
  }
  return hsum_avx2(acc) - qsum;
}
// Decode: four rows from far apart (four streams a thread, as the 512-bit path) against one
// token's activations, loaded once per block for all four. Fewer operations per block than
// ternary_dot_avx2 (decode on AVX2 is bound by them, not by memory): one shift instead of
// three (the groups masked in place: codes * 1 for groups 3 and 1, * 4 for 2 and 0), and the
// int16 sums kept over up to 7 blocks before they are widened (per block a lane of the x4
// sum gathers 2 groups x 2 x 8 x 128 = 4096, 7 blocks 28672 < 32768).
__attribute__((target("avx2"))) void ternary_dot4_decode_avx2(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols,
                                                             int32_t qsum, int32_t* out) {
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12), ones = _mm256_set1_epi16(1), fours = _mm256_set1_epi16(4);
  __m256i acc[4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) acc[r] = _mm256_setzero_si256();
  const int64_t nb = padded_cols / 128;
  for (int64_t b0 = 0; b0 < nb; b0 += 7) {
    __m256i s1[4], s4[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) s1[r] = s4[r] = _mm256_setzero_si256();
    for (int64_t b = b0; b < std::min<int64_t>(nb, b0 + 7); ++b) {
      const int8_t* x = q + b * 128;
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        if ((b & 1) == 0) prefetch_ahead(rows[r] + b * 32);  // (one per 64-byte line)
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + b * 32));
        const __m256i h = _mm256_srli_epi16(w, 4);
        s1[r] = _mm256_add_epi16(s1[r], _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, m3), ld(x + 96)),
                                                         _mm256_maddubs_epi16(_mm256_and_si256(h, m3), ld(x + 32))));
        s4[r] = _mm256_add_epi16(s4[r], _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, m12), ld(x + 64)),
                                                         _mm256_maddubs_epi16(_mm256_and_si256(h, m12), ld(x))));
      }
    }
    // 4 x (the x1 sums) + the x4 sums: four times the blocks' sums, exactly.
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) acc[r] = _mm256_add_epi32(acc[r], _mm256_add_epi32(_mm256_madd_epi16(s1[r], fours), _mm256_madd_epi16(s4[r], ones)));
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) out[r] = (hsum_avx2(acc[r]) >> 2) - qsum;
}
// 1 weight row x 4 token rows: each block's codes are unpacked once for four tokens
// (the unpacking is a third of the single dot's instructions); the activations of the
// four tokens, 128 bytes each per block, stay in L1 across the rows of a token block.
__attribute__((target("avx2"))) void ternary_dot4_avx2(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols,
                                                      const int32_t* qsum, int32_t* out) {
  const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  const int8_t *x0 = q, *x1 = q + ldq, *x2 = q + 2 * ldq, *x3 = q + 3 * ldq;
  for (int64_t b = 0; b < padded_cols / 128; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
    const int64_t o = b * 128;
    __m256i p0, p1, p2, p3;
    {
      const __m256i c = _mm256_and_si256(_mm256_srli_epi16(w, 6), mask);
      p0 = _mm256_maddubs_epi16(c, ld(x0 + o));
      p1 = _mm256_maddubs_epi16(c, ld(x1 + o));
      p2 = _mm256_maddubs_epi16(c, ld(x2 + o));
      p3 = _mm256_maddubs_epi16(c, ld(x3 + o));
    }
    for (int g = 1; g < 4; ++g) {
      const __m256i c = _mm256_and_si256(_mm256_srli_epi16(w, 6 - 2 * g), mask);
      const int64_t og = o + 32 * g;
      p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(c, ld(x0 + og)));
      p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(c, ld(x1 + og)));
      p2 = _mm256_add_epi16(p2, _mm256_maddubs_epi16(c, ld(x2 + og)));
      p3 = _mm256_add_epi16(p3, _mm256_maddubs_epi16(c, ld(x3 + og)));
    }
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ones));
    acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(p2, ones));
    acc3 = _mm256_add_epi32(acc3, _mm256_madd_epi16(p3, ones));
  }
  out[0] = hsum_avx2(acc0) - qsum[0];
  out[1] = hsum_avx2(acc1) - qsum[1];
  out[2] = hsum_avx2(acc2) - qsum[2];
  out[3] = hsum_avx2(acc3) - qsum[3];
}

// 1 weight row x 8 token rows: the codes unpacked once for eight tokens, and each token's
// maddubs pair sums kept in int16 over up to 16 blocks before they are widened (per block
// a lane gathers 4 groups x |2 x 128 + 2 x 128| <= 2048, so 16 blocks stay within int16:
// -32768 at worst). Per 512 weight-tokens that is ~37 instructions instead of the 4-token
// tile's ~45 (the AVX2 prefill is bound by instruction throughput).
__attribute__((target("avx2"))) void ternary_dot8_avx2(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols,
                                                      const int32_t* qsum, int32_t* out) {
  const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc[8];
#pragma GCC unroll 8
  for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_si256();
  const int64_t nb = padded_cols / 128;
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    const int64_t b1 = std::min<int64_t>(nb, b0 + 16);
    __m256i p[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) p[t] = _mm256_setzero_si256();
    for (int64_t b = b0; b < b1; ++b) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
      const int8_t* x = q + b * 128;
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        const __m256i c = _mm256_and_si256(_mm256_srli_epi16(w, 6 - 2 * g), mask);
        const int8_t* xg = x + 32 * g;
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) p[t] = _mm256_add_epi16(p[t], _mm256_maddubs_epi16(c, ld(xg + t * ldq)));
        // Keep the eight sums in registers here: left free, GCC gathers all four groups'
        // products first (32 live values for 16 registers) and spills the sums every block.
        asm("" : "+x"(p[0]), "+x"(p[1]), "+x"(p[2]), "+x"(p[3]), "+x"(p[4]), "+x"(p[5]), "+x"(p[6]), "+x"(p[7]));
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p[t], ones));
  }
#pragma GCC unroll 8
  for (int t = 0; t < 8; ++t) out[t] = hsum_avx2(acc[t]) - qsum[t];
}

// AVX-VNNI (VEX vpdpbusd: u8 x s8, four products summed into each int32 lane, exact): one
// instruction per group instead of maddubs, the int16 add and the widening madd.
// CPUID leaf 7 sub-leaf 1, EAX bit 4 (not every compiler's __builtin_cpu_supports knows
// "avxvnni"); the OS saving the YMM state is part of the avx2 check.
bool has_avxvnni() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return has_avx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) != 0 && ((a >> 4) & 1u) != 0;
  }();
  return yes;
}

#define TERN_VNNI_TARGET "avx2,avxvnni"
#define TERN_VNNI_NAME(base) base##_vnni
#define TERN_DPBUSD _mm256_dpbusd_avx_epi32
#include "backend/cpu/simd_vnni.inc"
#undef TERN_VNNI_TARGET
#undef TERN_VNNI_NAME
#undef TERN_DPBUSD

// AVX512-VNNI with AVX512VL (the EVEX vpdpbusd on 256-bit registers); the OS saving the
// AVX-512 state is part of __builtin_cpu_supports' check.
bool has_avx512vnni() {
  static const bool yes = has_avx2() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return yes;
}

#define TERN_VNNI_TARGET "avx2,avx512vl,avx512vnni"
#define TERN_VNNI_NAME(base) base##_vnni512
#define TERN_DPBUSD _mm256_dpbusd_epi32
#include "backend/cpu/simd_vnni.inc"
#undef TERN_VNNI_TARGET
#undef TERN_VNNI_NAME
#undef TERN_DPBUSD

// Eight float elements of a float (KIND 0), F16 (1) or BF16 (2) vector from element i.
template <int KIND>
__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8_ps(const void* w, int64_t i) {
  if constexpr (KIND == 0) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (KIND == 1) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // BF16: the high half of a float
  }
}

// The float dots of dot_lanes_scalar in four 8-lane registers (lanes 0-7, ..., 24-31): the
// same fused multiply-adds in the same order, so the same float. KIND as dot_elem().
template <int KIND>
__attribute__((target("avx2,fma,f16c"))) float dot_lanes_avx2(const void* w, const float* x, int64_t n) {
  __m256 a[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) a[k] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    prefetch_ahead(static_cast<const char*>(w) + (KIND == 0 ? 4 : 2) * i);  // (float rows: every other line)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) a[k] = _mm256_fmadd_ps(load8_ps<KIND>(w, i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), a[k]);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail = std::fma(dot_elem<KIND>(w, i), x[i], tail);
  // reduce_dot_lanes in registers (a store and 31 scalar adds per LM-head row were ~2 % of
  // decode): lane j + 16 onto lane j, then the halves as there.
  return reduce_halves_avx2(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]), tail);
}

// dot_lanes_avx2 of two rows at once (eight chains: four rows' 32 lanes would need all 16
// registers for the sums alone), each row the single dot's float.
template <int KIND>
__attribute__((target("avx2,fma,f16c"))) static void dot2_lanes_avx2(const void* w0, const void* w1, const float* x, int64_t n, float* out) {
  __m256 a[4], b[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) a[k] = b[k] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    prefetch_ahead(static_cast<const char*>(w0) + (KIND == 0 ? 4 : 2) * i);
    prefetch_ahead(static_cast<const char*>(w1) + (KIND == 0 ? 4 : 2) * i);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256 xk = _mm256_loadu_ps(x + i + 8 * k);
      a[k] = _mm256_fmadd_ps(load8_ps<KIND>(w0, i + 8 * k), xk, a[k]);
      b[k] = _mm256_fmadd_ps(load8_ps<KIND>(w1, i + 8 * k), xk, b[k]);
    }
  }
  float t0 = 0.0f, t1 = 0.0f;
  for (int64_t j = i; j < n; ++j) t0 = std::fma(dot_elem<KIND>(w0, j), x[j], t0);
  for (int64_t j = i; j < n; ++j) t1 = std::fma(dot_elem<KIND>(w1, j), x[j], t1);
  out[0] = reduce_halves_avx2(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]), t0);
  out[1] = reduce_halves_avx2(_mm256_add_ps(b[0], b[2]), _mm256_add_ps(b[1], b[3]), t1);
}

void dot_half4_f32_avx2(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out) {
  for (int p = 0; p < 4; p += 2) {  // rows 0 and 1, then 2 and 3
    bf16 ? dot2_lanes_avx2<2>(w[p], w[p + 1], x, n, out + p) : dot2_lanes_avx2<1>(w[p], w[p + 1], x, n, out + p);
  }
}

float dot_f32_avx2(const float* a, const float* b, int64_t n) { return dot_lanes_avx2<0>(a, b, n); }
float dot_half_f32_avx2(const uint16_t* w, bool bf16, const float* x, int64_t n) {
  return bf16 ? dot_lanes_avx2<2>(w, x, n) : dot_lanes_avx2<1>(w, x, n);
}
#else
bool has_avx2() { return false; }
float dot_f32_avx2(const float* a, const float* b, int64_t n) { return dot_f32_scalar(a, b, n); }
float dot_half_f32_avx2(const uint16_t* w, bool bf16, const float* x, int64_t n) { return dot_half_f32_scalar(w, bf16, x, n); }
void dot_half4_f32_avx2(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out) {
  for (int r = 0; r < 4; ++r) out[r] = dot_half_f32_scalar(w[r], bf16, x, n);
}
bool has_avxvnni() { return false; }
bool has_avx512vnni() { return false; }
// Off x86 every SIMD name runs the scalar kernel (the dispatch never picks them there).
#define TERN_SCALAR_TERNARY(path)                                                                                          \
  int32_t ternary_dot_##path(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) {                     \
    return ternary_dot_scalar(row, q, padded_cols, qsum);                                                                  \
  }                                                                                                                        \
  void ternary_dot4_##path(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out) { \
    ternary_dot4_scalar(row, q, ldq, padded_cols, qsum, out);                                                              \
  }                                                                                                                        \
  void ternary_dot8_##path(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out) { \
    ternary_dot8_scalar(row, q, ldq, padded_cols, qsum, out);                                                              \
  }                                                                                                                        \
  void ternary_dot4_decode_##path(const uint8_t* const* rows, const int8_t* q, int64_t padded_cols, int32_t qsum, int32_t* out) { \
    ternary_dot4_decode_scalar(rows, q, padded_cols, qsum, out);                                                           \
  }
TERN_SCALAR_TERNARY(avx2)
TERN_SCALAR_TERNARY(vnni)
TERN_SCALAR_TERNARY(vnni512)
#undef TERN_SCALAR_TERNARY
#endif

namespace {

// TERN_CPU_SIMD caps the level: scalar 0, avx2 1, avx-vnni or avx512-vnni 2 (tests and
// measurements of each path); anything else (or unset) leaves the widest the CPU has.
int forced_cap() {
  const char* v = std::getenv("TERN_CPU_SIMD");
  if (v == nullptr) return 3;
  if (std::strcmp(v, "scalar") == 0) return 0;
  if (std::strcmp(v, "avx2") == 0) return 1;
  return std::strcmp(v, "avx-vnni") == 0 || std::strcmp(v, "avx512-vnni") == 0 ? 2 : 3;
}

// TERN_CPU_SIMD=avx512-vnni: the EVEX kernels even where the VEX ones exist (to compare them).
bool forced_evex() {
  const char* v = std::getenv("TERN_CPU_SIMD");
  return v != nullptr && std::strcmp(v, "avx512-vnni") == 0;
}

// 0 scalar, 1 AVX2 (with FMA and F16C: every AVX2 CPU has them), 2 AVX2 + vpdpbusd on
// 256-bit registers, VEX (AVX-VNNI) where the CPU has it, else EVEX (AVX512-VNNI + VL),
// 3 the same prefill tiles plus the 512-bit decode dot and float dots (has_avx512()).
const int kLevel = std::min(forced_cap(), has_avx512()                        ? 3
                                          : has_avxvnni() || has_avx512vnni() ? 2
                                          : has_avx2()                        ? 1
                                                                              : 0);
const bool kVex = has_avxvnni() && !(forced_evex() && has_avx512vnni());
using DotF32 = float (*)(const float*, const float*, int64_t);
const DotF32 kDotF32 = kLevel >= 3 ? dot_f32_avx512 : kLevel >= 1 ? dot_f32_avx2 : dot_f32_scalar;
using DotHalf = float (*)(const uint16_t*, bool, const float*, int64_t);
const DotHalf kDotHalf = kLevel >= 3 ? dot_half_f32_avx512 : kLevel >= 1 ? dot_half_f32_avx2 : dot_half_f32_scalar;
using TernaryDot = int32_t (*)(const uint8_t*, const int8_t*, int64_t, int32_t);
const TernaryDot kTernaryDot = kLevel >= 2   ? (kVex ? ternary_dot_vnni : ternary_dot_vnni512)
                               : kLevel == 1 ? ternary_dot_avx2
                                             : ternary_dot_scalar;
const TernaryDot kTernaryDotDecode = kLevel >= 3 ? ternary_dot_decode_avx512 : kTernaryDot;
using TernaryDot4Decode = void (*)(const uint8_t* const*, const int8_t*, int64_t, int32_t, int32_t*);
const TernaryDot4Decode kTernaryDot4Decode = kLevel >= 3   ? ternary_dot4_decode_avx512
                                             : kLevel == 2 ? (kVex ? ternary_dot4_decode_vnni : ternary_dot4_decode_vnni512)
                                             : kLevel == 1 ? ternary_dot4_decode_avx2
                                                           : ternary_dot4_decode_scalar;
using TernaryDot4 = void (*)(const uint8_t*, const int8_t*, int64_t, int64_t, const int32_t*, int32_t*);
const TernaryDot4 kTernaryDot4 = kLevel >= 2   ? (kVex ? ternary_dot4_vnni : ternary_dot4_vnni512)
                                 : kLevel == 1 ? ternary_dot4_avx2
                                               : ternary_dot4_scalar;
const TernaryDot4 kTernaryDot8 = kLevel >= 2   ? (kVex ? ternary_dot8_vnni : ternary_dot8_vnni512)
                                 : kLevel == 1 ? ternary_dot8_avx2
                                               : ternary_dot8_scalar;

}  // namespace

const char* simd_level() { return kLevel == 3 ? "avx512" : kLevel == 2 ? (kVex ? "avx-vnni" : "avx512-vnni") : kLevel == 1 ? "avx2" : "scalar"; }

int32_t ternary_dot(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) { return kTernaryDot(row, q, padded_cols, qsum); }

const int8_t* decode_acts(const int8_t* q, int64_t padded_cols, int8_t* scratch) {
  if (kLevel < 3) return q;
  interleave_block_pairs(q, padded_cols, scratch);
  return scratch;
}

int32_t ternary_dot_decode(const uint8_t* row, const int8_t* acts, int64_t padded_cols, int32_t qsum) {
  return kTernaryDotDecode(row, acts, padded_cols, qsum);
}

int decode_streams() { return kLevel >= 1 ? 4 : 1; }

void ternary_dot4_decode(const uint8_t* const* rows, const int8_t* acts, int64_t padded_cols, int32_t qsum, int32_t* out) {
  kTernaryDot4Decode(rows, acts, padded_cols, qsum, out);
}

float dot_f32(const float* a, const float* b, int64_t n) { return kDotF32(a, b, n); }

float dot_half_f32(const uint16_t* w, bool bf16, const float* x, int64_t n) { return kDotHalf(w, bf16, x, n); }

void dot_half4_f32(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out) {
  if (kLevel >= 3) {
    dot_half4_f32_avx512(w, bf16, x, n, out);
  } else if (kLevel >= 1) {
    dot_half4_f32_avx2(w, bf16, x, n, out);
  } else {
    for (int r = 0; r < 4; ++r) out[r] = kDotHalf(w[r], bf16, x, n);
  }
}

void ternary_dot4(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out) {
  kTernaryDot4(row, q, ldq, padded_cols, qsum, out);
}

void ternary_dot8(const uint8_t* row, const int8_t* q, int64_t ldq, int64_t padded_cols, const int32_t* qsum, int32_t* out) {
  kTernaryDot8(row, q, ldq, padded_cols, qsum, out);
}

}  // namespace tern::cpu
