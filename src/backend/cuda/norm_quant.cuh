// Block-wide fused RMSNorm + per-token int8 absmax quantization, used as the prologue
// of every decode GEMV (each block quantizes the input itself, so no separate launch)
// and by the prefill quantization kernel (norm_quant.cu).
// CPU reference: cpu::rmsnorm then cpu::quantize_row_i8 (backend/cpu/kernels.cpp),
// reproduced bit for bit: sum of squares in double, r = 1/sqrtf(float(ss/n) + eps),
// y = w * (x * r), s = 127 / max(amax, 1e-5), q = clamp(rint(y * s)) (ties to even).
//
// The input is staged in registers (4 consecutive elements per slot, all loads issued
// at once): a loop of dependent L2 round trips made the first version's prologue cost
// ~8 us per GEMV.
#pragma once
#include <cstdint>

#include "backend/cuda/device_util.cuh"

namespace tern::cuda {

// Word i of a natural-order int8 row (bytes 4i..4i+3) lands at this word of the permuted
// row: per 128-block b, lane group t (bytes 4t.. of each 16) owns 8 contiguous words
// ordered (s=0,h=0),(0,1),(1,0),(1,1),...,(3,1) where k = 128b + 32s + 16h + 4t.
__host__ __device__ __forceinline__ int perm_word(int i) {
  const int b = i >> 5, wi = i & 31;
  return (b << 5) + ((wi & 3) << 3) + ((wi >> 3) << 1) + ((wi >> 2) & 1);
}

struct NormScratch {
  double d[32];
  float f[32];
  int i[32];
};

// Elements 4g..4g+3 of a float row of length n (zeros past n), 16-byte loads when the
// row allows it.
__device__ __forceinline__ float4 load_group(const float* __restrict__ p, int n, int g) {
  const int i = 4 * g;
  if ((n & 3) == 0 && (reinterpret_cast<uintptr_t>(p) & 15) == 0) return reinterpret_cast<const float4*>(p)[g];
  float4 r;
  r.x = i < n ? p[i] : 0.0f;
  r.y = i + 1 < n ? p[i + 1] : 0.0f;
  r.z = i + 2 < n ? p[i + 2] : 0.0f;
  r.w = i + 3 < n ? p[i + 3] : 0.0f;
  return r;
}

struct PlainRow {
  const float* x;
  int n;
  __device__ __forceinline__ float4 operator()(int g) const { return load_group(x, n, g); }
};

// h = act(gate) * up on the fly (the FFN down input), CPU: cpu::gated_activation.
struct GatedRow {
  const float* g;
  const float* u;
  int n;
  int act;
  __device__ __forceinline__ float4 operator()(int grp) const {
    const float4 a = load_group(g, n, grp), b = load_group(u, n, grp);
    return make_float4(gated(a.x, b.x, act), gated(a.y, b.y, act), gated(a.z, b.z, act), gated(a.w, b.w, act));
  }
};

__device__ __forceinline__ double sq4(const float4 v) {
  return static_cast<double>(v.x) * v.x + static_cast<double>(v.y) * v.y + static_cast<double>(v.z) * v.z +
         static_cast<double>(v.w) * v.w;
}

__device__ __forceinline__ float4 norm4(const float4 x, const float4 w, float r) {
  return make_float4(w.x * (x.x * r), w.y * (x.y * r), w.z * (x.z * r), w.w * (x.w * r));
}

__device__ __forceinline__ int q8(float y, float s) { return static_cast<int>(fminf(127.0f, fmaxf(-128.0f, rintf(y * s)))); }

// PER slots of 4 elements per thread: n <= 4 * NT * PER. DEFER_QSUM: the sum of the
// int8 values is left as per-warp partials in sc.i[0 .. NT/32) for the caller to add
// after its next barrier (saves the decode GEMV a block reduction); qsum_out unused.
template <int NT, int PER, class Row, bool DEFER_QSUM = false>
__device__ __forceinline__ void norm_quant_regs(Row row, const float* __restrict__ w, int n, int kwords, float eps,
                                                uint32_t* __restrict__ dst, float* s_out, int32_t* qsum_out, NormScratch& sc) {
  const int ngroups = (n + 3) / 4;
  float4 xv[PER], wv[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int g = threadIdx.x + j * NT;
    if (g < ngroups) {
      xv[j] = row(g);
      wv[j] = load_group(w, n, g);
    } else {
      xv[j] = wv[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  double ss = 0;
#pragma unroll
  for (int j = 0; j < PER; ++j) ss += sq4(xv[j]);
  ss = block_reduce<NT>(ss, sc.d, SumOp{});
  const float r = 1.0f / sqrtf(static_cast<float>(ss / n) + eps);
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    xv[j] = norm4(xv[j], wv[j], r);
    amax = fmaxf(amax, fmaxf(fmaxf(fabsf(xv[j].x), fabsf(xv[j].y)), fmaxf(fabsf(xv[j].z), fabsf(xv[j].w))));
  }
  amax = block_reduce<NT>(amax, sc.f, MaxOp{});
  const float s = 127.0f / fmaxf(amax, 1e-5f);
  int sum = 0;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int g = threadIdx.x + j * NT;
    if (g < ngroups) {
      const int a = q8(xv[j].x, s), b = q8(xv[j].y, s), c = q8(xv[j].z, s), d = q8(xv[j].w, s);
      sum += a + b + c + d;
      dst[perm_word(g)] = (static_cast<uint32_t>(a) & 0xff) | ((static_cast<uint32_t>(b) & 0xff) << 8) |
                          ((static_cast<uint32_t>(c) & 0xff) << 16) | (static_cast<uint32_t>(d) << 24);
    }
  }
  for (int g = ngroups + threadIdx.x; g < kwords; g += NT) dst[perm_word(g)] = 0;
  if constexpr (DEFER_QSUM) {
    sum = warp_sum(sum);
    if ((threadIdx.x & 31) == 0) sc.i[threadIdx.x >> 5] = sum;
    if (threadIdx.x == 0) *s_out = s;
  } else {
    sum = block_reduce<NT>(sum, sc.i, SumOp{});
    if (threadIdx.x == 0) {
      *s_out = s;
      *qsum_out = sum;
    }
  }
}

// Any n: three passes over the row (re-read from L1/L2).
template <int NT, class Row>
__device__ __forceinline__ void norm_quant_loop(Row row, const float* __restrict__ w, int n, int kwords, float eps,
                                                uint32_t* __restrict__ dst, float* s_out, int32_t* qsum_out, NormScratch& sc) {
  const int ngroups = (n + 3) / 4;
  double ss = 0;
  for (int g = threadIdx.x; g < ngroups; g += NT) ss += sq4(row(g));
  ss = block_reduce<NT>(ss, sc.d, SumOp{});
  const float r = 1.0f / sqrtf(static_cast<float>(ss / n) + eps);
  float amax = 0.0f;
  for (int g = threadIdx.x; g < ngroups; g += NT) {
    const float4 y = norm4(row(g), load_group(w, n, g), r);
    amax = fmaxf(amax, fmaxf(fmaxf(fabsf(y.x), fabsf(y.y)), fmaxf(fabsf(y.z), fabsf(y.w))));
  }
  amax = block_reduce<NT>(amax, sc.f, MaxOp{});
  const float s = 127.0f / fmaxf(amax, 1e-5f);
  int sum = 0;
  for (int g = threadIdx.x; g < kwords; g += NT) {
    uint32_t packed = 0;
    if (g < ngroups) {
      const float4 y = norm4(row(g), load_group(w, n, g), r);
      const int a = q8(y.x, s), b = q8(y.y, s), c = q8(y.z, s), d = q8(y.w, s);
      sum += a + b + c + d;
      packed = (static_cast<uint32_t>(a) & 0xff) | ((static_cast<uint32_t>(b) & 0xff) << 8) |
               ((static_cast<uint32_t>(c) & 0xff) << 16) | (static_cast<uint32_t>(d) << 24);
    }
    dst[perm_word(g)] = packed;
  }
  sum = block_reduce<NT>(sum, sc.i, SumOp{});
  if (threadIdx.x == 0) {
    *s_out = s;
    *qsum_out = sum;
  }
}

// Quantizes RMSNorm(row) * w into kwords permuted words at dst (shared or global).
// Thread 0 writes the scale and the sum of the int8 values. All NT threads must call.
template <int NT, class Row>
__device__ __forceinline__ void block_norm_quant(Row row, const float* __restrict__ w, int n, int kwords, float eps,
                                                 uint32_t* __restrict__ dst, float* s_out, int32_t* qsum_out,
                                                 NormScratch& sc) {
  if (n <= 4 * NT) {
    norm_quant_regs<NT, 1>(row, w, n, kwords, eps, dst, s_out, qsum_out, sc);
  } else if (n <= 12 * NT) {
    norm_quant_regs<NT, 3>(row, w, n, kwords, eps, dst, s_out, qsum_out, sc);
  } else if (n <= 28 * NT) {
    norm_quant_regs<NT, 7>(row, w, n, kwords, eps, dst, s_out, qsum_out, sc);
  } else {
    norm_quant_loop<NT>(row, w, n, kwords, eps, dst, s_out, qsum_out, sc);
  }
}

// r = 1 / sqrt(mean(x^2) + eps) over a float row of n; all threads get it (LM head).
template <int NT>
__device__ __forceinline__ float block_rms_inv(const float* __restrict__ x, int n, float eps, NormScratch& sc) {
  double ss = 0;
  for (int i = threadIdx.x; i < n; i += NT) ss += static_cast<double>(x[i]) * x[i];
  ss = block_reduce<NT>(ss, sc.d, SumOp{});
  return 1.0f / sqrtf(static_cast<float>(ss / n) + eps);
}

}  // namespace tern::cuda
