// The 512-bit kernels (simd.h: has_avx512, level "avx512"): decode's ternary dot and the
// float dots. Decode reads every weight once per token, so its dots must run faster than
// memory delivers the rows: on a Zen 5 vCPU the 256-bit VNNI dot ran ~17-25 GB/s per core
// from L2 and the 16-lane F16 head dot ~28, against ~26 GB/s a core streams from DRAM;
// these two run ~50 and ~60 (a throwaway microbenchmark, 2026-11-27).
// Like simd.cpp this file is built for the baseline ISA; each kernel carries its target.
#include <cmath>

#include "backend/cpu/simd.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TERN_X86 1
#endif

// GCC 12's avx512fintrin.h makes its "undefined" vectors by initialising them from
// themselves, which -Wuninitialized reports at every inlined use (not in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tern::cpu {

// Within each 256 columns (two 128-blocks, 64 bytes of tern2 codes), group g's 32
// activations of both blocks side by side: out[256k + 64g + 32h + j] = q[256k + 128h +
// 32g + j]. A block's byte j holds the codes of columns j, j+32, j+64, j+96 (groups 0-3,
// bits 7-6 .. 1-0), so one 64-byte load of codes and one of activations feed a 512-bit
// vpdpbusd for a group of two blocks. A last odd block keeps its place.
void interleave_block_pairs(const int8_t* q, int64_t padded_cols, int8_t* out) {
  const int64_t pairs = padded_cols / 256;
  for (int64_t k = 0; k < pairs; ++k) {
    for (int h = 0; h < 2; ++h) {
      for (int g = 0; g < 4; ++g) {
        const int8_t* src = q + 256 * k + 128 * h + 32 * g;
        int8_t* dst = out + 256 * k + 64 * g + 32 * h;
        for (int j = 0; j < 32; ++j) dst[j] = src[j];
      }
    }
  }
  for (int64_t i = pairs * 256; i < padded_cols; ++i) out[i] = q[i];
}

#ifdef TERN_X86
bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return yes;
}

#define TERN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))

// One 128-block group on 256 bits (a named function: GCC does not give lambdas their
// enclosing function's target).
TERN_AVX512 static inline __m256i masked_group(__m256i w, int mask, const int8_t* x) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(w, _mm256_set1_epi8(static_cast<char>(mask))),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}

// 64 bytes of codes as two 32-byte loads: streamed from memory, one 64-byte load per line
// read ~35 GB/s against ~47 for two 32-byte ones (a plain sum over the model's rows, Zen 5
// VM, 2 threads; the 512-bit work after the load is the same).
TERN_AVX512 static inline __m512i load_codes(const uint8_t* p) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), 1);
}

// Each group's codes are masked in place (0xC0, 0x30, 0x0C, 0x03) instead of shifted
// down: the u8 operand is then code * 4^(3-g) (at most 128 < 256), its products with the
// activations are exact multiples of 4^(3-g), and one arithmetic shift per group's
// accumulator at the end undoes the scale exactly. |lane| <= 4 * 128 * 128 per step, far
// inside int32 for any row that fits memory.
struct Acc4 {
  __m512i g0, g1, g2, g3;
};

TERN_AVX512 static inline void dot_step(Acc4& a, __m512i w, __m512i x0, __m512i x1, __m512i x2, __m512i x3) {
  a.g0 = _mm512_dpbusd_epi32(a.g0, _mm512_and_si512(w, _mm512_set1_epi8(static_cast<char>(0xC0))), x0);
  a.g1 = _mm512_dpbusd_epi32(a.g1, _mm512_and_si512(w, _mm512_set1_epi8(0x30)), x1);
  a.g2 = _mm512_dpbusd_epi32(a.g2, _mm512_and_si512(w, _mm512_set1_epi8(0x0C)), x2);
  a.g3 = _mm512_dpbusd_epi32(a.g3, _mm512_and_si512(w, _mm512_set1_epi8(0x03)), x3);
}

// The row's sum: the groups unscaled, and an odd last block (in its own order) on 256 bits.
TERN_AVX512 static inline int32_t finish(const Acc4& a, const uint8_t* row, const int8_t* acts, int64_t padded_cols) {
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_srai_epi32(a.g0, 6), _mm512_srai_epi32(a.g1, 4)),
                                     _mm512_add_epi32(_mm512_srai_epi32(a.g2, 2), a.g3));
  int32_t sum = _mm512_reduce_add_epi32(s);
  if (padded_cols % 256 != 0) {
    const int64_t pairs = padded_cols / 256;
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 64 * pairs));
    const int8_t* x = acts + 256 * pairs;
    const __m256i t = _mm256_add_epi32(_mm256_add_epi32(_mm256_srai_epi32(masked_group(w, 0xC0, x), 6), _mm256_srai_epi32(masked_group(w, 0x30, x + 32), 4)),
                                       _mm256_add_epi32(_mm256_srai_epi32(masked_group(w, 0x0C, x + 64), 2), masked_group(w, 0x03, x + 96)));
    sum += _mm512_reduce_add_epi32(_mm512_zextsi256_si512(t));
  }
  return sum;
}

TERN_AVX512 int32_t ternary_dot_decode_avx512(const uint8_t* row, const int8_t* acts, int64_t padded_cols, int32_t qsum) {
  Acc4 a{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int64_t k = 0; k < padded_cols / 256; ++k) {
    const int8_t* x = acts + 256 * k;
    dot_step(a, load_codes(row + 64 * k), _mm512_loadu_si512(x), _mm512_loadu_si512(x + 64), _mm512_loadu_si512(x + 128),
             _mm512_loadu_si512(x + 192));
  }
  return finish(a, row, acts, padded_cols) - qsum;
}

// Four rows at once, each its own stream: the activations are loaded once for all four,
// and a core keeps four sequential streams going (rows from the four quarters of a
// thread's rows, not neighbours: neighbours interleaved 640 bytes apart streamed at a third
// of the rate). More streams in flight is what a core's share of the bandwidth needs: a
// plain sum over the model's rows read ~45 GB/s on 2 threads, this dot over one / two /
// four streams ~41 / ~46 / ~49 (Zen 5 VM, each thread one half of every matrix). Per row
// the same sums as the single dot.
TERN_AVX512 void ternary_dot4_decode_avx512(const uint8_t* const* rows, const int8_t* acts, int64_t padded_cols, int32_t qsum,
                                            int32_t* out) {
  Acc4 a[4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) a[r] = Acc4{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int64_t k = 0; k < padded_cols / 256; ++k) {
    const int8_t* x = acts + 256 * k;
    const __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 64), x2 = _mm512_loadu_si512(x + 128),
                  x3 = _mm512_loadu_si512(x + 192);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      prefetch_ahead(rows[r] + 64 * k);  // (simd.h; one line per line read)
      dot_step(a[r], load_codes(rows[r] + 64 * k), x0, x1, x2, x3);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) out[r] = finish(a[r], rows[r], acts, padded_cols) - qsum;
}

// Sixteen float elements of a float (KIND 0), F16 (1) or BF16 (2) vector from element i.
template <int KIND>
TERN_AVX512 static inline __m512 load16_ps(const void* w, int64_t i) {
  if constexpr (KIND == 0) {
    return _mm512_loadu_ps(static_cast<const float*>(w) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (KIND == 1) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// dot_lanes_scalar's order in two 16-lane registers (lanes 0-15, 16-31).
template <int KIND>
TERN_AVX512 static float dot_lanes_avx512(const void* w, const float* x, int64_t n) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    lo = _mm512_fmadd_ps(load16_ps<KIND>(w, i), _mm512_loadu_ps(x + i), lo);
    hi = _mm512_fmadd_ps(load16_ps<KIND>(w, i + 16), _mm512_loadu_ps(x + i + 16), hi);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail = std::fma(dot_elem<KIND>(w, i), x[i], tail);
  const __m512 a = _mm512_add_ps(lo, hi);  // reduce_dot_lanes' first step, then the rest as simd.cpp does it
  return reduce_halves_avx2(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)), tail);
}

// dot_lanes_avx512 of four rows against one x, rows from far apart (four streams, x loaded
// once for all: the LM head on 2 threads, each half of the rows in quarters, read ~56 GB/s
// against ~51 one row at a time; Zen 5 VM). Each row's float is the single dot's.
template <int KIND>
TERN_AVX512 static void dot4_lanes_avx512(const void* const* w, const float* x, int64_t n, float* out) {
  __m512 lo[4], hi[4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      // One line a step for 16-bit rows (32 elements); a float row's second line is left to
      // the hardware (F32 heads are rare).
      prefetch_ahead(static_cast<const char*>(w[r]) + (KIND == 0 ? 4 : 2) * i);
      lo[r] = _mm512_fmadd_ps(load16_ps<KIND>(w[r], i), x0, lo[r]);
      hi[r] = _mm512_fmadd_ps(load16_ps<KIND>(w[r], i + 16), x1, hi[r]);
    }
  }
  for (int r = 0; r < 4; ++r) {
    float tail = 0.0f;
    for (int64_t j = i; j < n; ++j) tail = std::fma(dot_elem<KIND>(w[r], j), x[j], tail);
    const __m512 a = _mm512_add_ps(lo[r], hi[r]);
    out[r] = reduce_halves_avx2(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)), tail);
  }
}

void dot_half4_f32_avx512(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out) {
  const void* rows[4] = {w[0], w[1], w[2], w[3]};
  bf16 ? dot4_lanes_avx512<2>(rows, x, n, out) : dot4_lanes_avx512<1>(rows, x, n, out);
}

float dot_f32_avx512(const float* a, const float* b, int64_t n) { return dot_lanes_avx512<0>(a, b, n); }
float dot_half_f32_avx512(const uint16_t* w, bool bf16, const float* x, int64_t n) {
  return bf16 ? dot_lanes_avx512<2>(w, x, n) : dot_lanes_avx512<1>(w, x, n);
}
#else
bool has_avx512() { return false; }
// Never dispatched off x86 (has_avx512() is false there), but correct: the plain loop over
// the interleaved order.
int32_t ternary_dot_decode_avx512(const uint8_t* row, const int8_t* acts, int64_t padded_cols, int32_t qsum) {
  const int64_t pairs = padded_cols / 256;
  int32_t acc = 0;
  for (int64_t b = 0; b < padded_cols / 128; ++b) {
    for (int g = 0; g < 4; ++g) {
      const int8_t* x = b / 2 < pairs ? acts + 256 * (b / 2) + 64 * g + 32 * (b % 2) : acts + 128 * b + 32 * g;
      for (int j = 0; j < 32; ++j) acc += ((row[32 * b + j] >> (6 - 2 * g)) & 3) * x[j];
    }
  }
  return acc - qsum;
}
void ternary_dot4_decode_avx512(const uint8_t* const* rows, const int8_t* acts, int64_t padded_cols, int32_t qsum, int32_t* out) {
  for (int r = 0; r < 4; ++r) out[r] = ternary_dot_decode_avx512(rows[r], acts, padded_cols, qsum);
}
void dot_half4_f32_avx512(const uint16_t* const* w, bool bf16, const float* x, int64_t n, float* out) {
  for (int r = 0; r < 4; ++r) out[r] = dot_half_f32_scalar(w[r], bf16, x, n);
}
float dot_f32_avx512(const float* a, const float* b, int64_t n) { return dot_f32_scalar(a, b, n); }
float dot_half_f32_avx512(const uint16_t* w, bool bf16, const float* x, int64_t n) { return dot_half_f32_scalar(w, bf16, x, n); }
#endif

}  // namespace tern::cpu
