// SIMD variants of the CPU kernels, chosen at run time (issue 6): the widest instruction
// set the CPU has, or the portable scalar code everywhere else, and TERN_CPU_SIMD=scalar
// forces the scalar path (tests use it to check both on one machine). Every variant
// computes exactly what the scalar one does (integer dots are exact).
#pragma once
#include <cstdint>

namespace tern::cpu {

// "avx-vnni", "avx512-vnni", "avx2" or "scalar": what the dispatching kernels
// (cpu::ternary_dot, ...) run. TERN_CPU_SIMD=avx2 or =scalar caps it; =avx512-vnni picks
// the EVEX kernels where both encodings exist.
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

}  // namespace tern::cpu
