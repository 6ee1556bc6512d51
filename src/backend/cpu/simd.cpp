#include "backend/cpu/simd.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TERN_X86 1
#endif

#include "backend/cpu/kernels.h"

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

#ifdef TERN_X86
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

// Per 128-weight block: the 32 bytes hold the codes of columns j, j+32, j+64, j+96 in
// bits 7-6, 5-4, 3-2, 1-0 (tern2). Shifting 16-bit lanes and masking with 3 gives each
// group's 32 codes (0..2) as bytes; maddubs multiplies them with the 32 int8 activations
// of that group into int16 pair sums (|sum| <= 4 groups * 2 * 2 * 128 = 2048), madd
// widens to int32. One horizontal sum per row.
// (A named function, not a lambda: GCC does not give a lambda its enclosing function's
// target attribute, and without -mavx2 the intrinsics would not inline.)
__attribute__((target("avx2"))) static inline __m256i avx2_group(__m256i w, int shift, const int8_t* x) {
  const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(w, shift), _mm256_set1_epi8(3));
  return _mm256_maddubs_epi16(codes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}

__attribute__((target("avx2"))) int32_t ternary_dot_avx2(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (int64_t b = 0; b < padded_cols / 128; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
    const int8_t* x = q + b * 128;
    const __m256i s = _mm256_add_epi16(_mm256_add_epi16(avx2_group(w, 6, x), avx2_group(w, 4, x + 32)),
                                       _mm256_add_epi16(avx2_group(w, 2, x + 64), avx2_group(w, 0, x + 96)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
  }
  __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4e));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xb1));
  return _mm_cvtsi128_si32(v) - qsum;
}
#else
bool has_avx2() { return false; }
int32_t ternary_dot_avx2(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) {
  return ternary_dot_scalar(row, q, padded_cols, qsum);
}
#endif

namespace {

bool force_scalar() {
  const char* v = std::getenv("TERN_CPU_SIMD");
  return v != nullptr && std::strcmp(v, "scalar") == 0;
}

using TernaryDot = int32_t (*)(const uint8_t*, const int8_t*, int64_t, int32_t);
const TernaryDot kTernaryDot = !force_scalar() && has_avx2() ? ternary_dot_avx2 : ternary_dot_scalar;

}  // namespace

const char* simd_level() { return kTernaryDot == ternary_dot_avx2 && has_avx2() ? "avx2" : "scalar"; }

int32_t ternary_dot(const uint8_t* row, const int8_t* q, int64_t padded_cols, int32_t qsum) { return kTernaryDot(row, q, padded_cols, qsum); }

}  // namespace tern::cpu
