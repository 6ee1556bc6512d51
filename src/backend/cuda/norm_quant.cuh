// Block-wide fused RMSNorm + per-token int8 absmax quantization, used as the prologue
// of every decode GEMV (each block quantizes the input itself, so no separate launch)
// and by the prefill quantization kernel (norm_quant.cu).
// CPU reference: cpu::rmsnorm then cpu::quantize_row_i8 (backend/cpu/kernels.cpp),
// reproduced bit for bit: sum of squares in double, r = 1/sqrtf(float(ss/n) + eps),
// y = w * (x * r), s = 127 / max(amax, 1e-5), q = clamp(rint(y * s)) (ties to even).
#pragma once
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

// r = 1 / sqrt(mean(x^2) + eps) over n values from load(i); all threads get it.
template <int NT, class Load>
__device__ __forceinline__ float block_rms_inv(Load load, int n, float eps, NormScratch& sc) {
  double ss = 0;
  for (int i = threadIdx.x; i < n; i += NT) {
    const float v = load(i);
    ss += static_cast<double>(v) * v;
  }
  ss = block_reduce<NT>(ss, sc.d, SumOp{});
  return 1.0f / sqrtf(static_cast<float>(ss / n) + eps);
}

// Quantizes RMSNorm(x) * w into kwords permuted words at dst (shared or global).
// Thread 0 writes the scale and the sum of the int8 values.
template <int NT, class Load>
__device__ __forceinline__ void block_norm_quant(Load load, const float* __restrict__ w, int n, int kwords, float eps,
                                                 uint32_t* __restrict__ dst, float* s_out, int32_t* qsum_out,
                                                 NormScratch& sc) {
  const float r = block_rms_inv<NT>(load, n, eps, sc);
  float amax = 0.0f;
  for (int i = threadIdx.x; i < n; i += NT) amax = fmaxf(amax, fabsf(w[i] * (load(i) * r)));
  amax = block_reduce<NT>(amax, sc.f, MaxOp{});
  const float s = 127.0f / fmaxf(amax, 1e-5f);
  int sum = 0;
  for (int wd = threadIdx.x; wd < kwords; wd += NT) {
    uint32_t packed = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = wd * 4 + j;
      int q = 0;
      if (i < n) {
        const float y = w[i] * (load(i) * r);
        q = static_cast<int>(fminf(127.0f, fmaxf(-128.0f, rintf(y * s))));
      }
      sum += q;
      packed |= static_cast<uint32_t>(q & 0xff) << (8 * j);
    }
    dst[perm_word(wd)] = packed;
  }
  sum = block_reduce<NT>(sum, sc.i, SumOp{});
  if (threadIdx.x == 0) {
    *s_out = s;
    *qsum_out = sum;
  }
}

}  // namespace tern::cuda
