// C = alpha * A . W for a float32 A on 16-bit tensor cores without losing float32
// accuracy (the training backward: dlogits . E, dy . Wq). Each row of A is scaled by an
// exact power of two (so values down to ~1e-9 keep their bits in F16) and split into
// 16-bit terms whose sum is the scaled row to ~22 bits (store_split); all terms go
// through ONE cuBLAS GEMM as extra rows, so W is read once; a combine kernel adds the
// terms and undoes the scale. Every product of a 16-bit term with a 16-bit weight is exact
// in the float32 accumulator. F32 weights use SGEMM (float32, no TF32).
#include <cublas_v2.h>

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float col_scale(const ColScales& cs, int c) {
  if (cs.n == 0) return 1.0f;
  return c < cs.end[0] ? cs.scale[0] : (cs.n < 2 || c < cs.end[1]) ? cs.scale[1] : cs.scale[2];
}

// v as TERMS 16-bit terms (the first TERMS of store_split's), term t at out[at + t * stride].
template <int TYPE, int TERMS>
__device__ __forceinline__ void store_terms(void* out, int64_t at, int64_t stride, float v) {
  if constexpr (TERMS == (TYPE == 1 ? 2 : 3)) {
    store_split<TYPE>(out, at, stride, v);
  } else if constexpr (TYPE == 1) {
    static_cast<__half*>(out)[at] = __float2half_rn(v);
  } else {
    __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out);
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    o[at] = hi;
    o[at + stride] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
}

// Row m of A (column-scaled) -> terms; rscale[m] undoes the power-of-two row scale.
template <int TYPE, int TERMS>
__global__ void __launch_bounds__(kThreads) split_rows_kernel(const float* __restrict__ A, int lda, int M, int N, const ColScales cs,
                                                              void* split, float* __restrict__ rscale) {
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  const float* row = A + static_cast<int64_t>(m) * lda;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < N; i += kThreads) amax = fmaxf(amax, fabsf(row[i] * col_scale(cs, i)));
  amax = block_reduce<kThreads>(amax, sf, MaxOp{});
  const int e = amax > 0.0f ? -ilogbf(amax) : 0;  // 2^e * amax in [1, 2)
  const int64_t stride = static_cast<int64_t>(M) * N;
  for (int i = threadIdx.x; i < N; i += kThreads) {
    store_terms<TYPE, TERMS>(split, static_cast<int64_t>(m) * N + i, stride, ldexpf(row[i] * col_scale(cs, i), e));
  }
  if (threadIdx.x == 0) rscale[m] = ldexpf(1.0f, -e);
}

// Block (x, y): columns 256x.. of rows y, y + gridDim.y, ... (no per-element division).
__global__ void __launch_bounds__(kThreads) combine_kernel(const float* __restrict__ acc, int terms, int M, int K,
                                                           const float* __restrict__ rscale, float alpha, float* __restrict__ C, int ldc,
                                                           int accumulate) {
  const int k = blockIdx.x * kThreads + threadIdx.x;
  if (k >= K) return;
  const int64_t stride = static_cast<int64_t>(M) * K;
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    const int64_t idx = static_cast<int64_t>(m) * K + k;
    float s = acc[idx];
    for (int t = 1; t < terms; ++t) s += acc[idx + t * stride];
    const float v = alpha * (s * rscale[m]);
    float& c = C[static_cast<int64_t>(m) * ldc + k];
    c = accumulate ? c + v : v;
  }
}

__global__ void __launch_bounds__(kThreads) scale_cols_kernel(const float* __restrict__ A, int lda, int M, int N, const ColScales cs,
                                                              float* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(M) * N) return;
  const int m = static_cast<int>(idx / N), c = static_cast<int>(idx % N);
  out[idx] = A[static_cast<int64_t>(m) * lda + c] * col_scale(cs, c);
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void TrainBlas::split_gemm(const float* A, int lda, int M, int N, const ColScales& cs, const void* W, int type, int K, float alpha,
                           float* C, int ldc, bool accumulate, bool tf32) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (type == 0) {
    const float* a = A;
    int la = lda;
    if (cs.n > 0) {
      auto* t = static_cast<float*>(scratch(kSlotSplitA, static_cast<size_t>(M) * N * sizeof(float)));
      scale_cols_kernel<<<blocks(static_cast<int64_t>(M) * N), kThreads, 0, st_>>>(A, lda, M, N, cs, t);
      TERN_CUDA_LAUNCHED("scale_cols_kernel");
      a = t, la = N;
    }
    gemm(false, false, M, K, N, alpha, a, la, static_cast<const float*>(W), K, accumulate ? 1.0f : 0.0f, C, ldc, tf32);
    return;
  }
  const int terms = (type == 1 ? 2 : 3) - (tf32 ? 1 : 0);
  void* split = scratch(kSlotSplitA, static_cast<size_t>(terms) * M * N * 2);
  auto* acc = static_cast<float*>(scratch(kSlotSplitAcc, static_cast<size_t>(terms) * M * K * sizeof(float)));
  auto* rscale = static_cast<float*>(scratch(kSlotSplitScale, static_cast<size_t>(M) * sizeof(float)));
  if (type == 1) {
    if (tf32) {
      split_rows_kernel<1, 1><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
    } else {
      split_rows_kernel<1, 2><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
    }
  } else if (tf32) {
    split_rows_kernel<2, 2><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
  } else {
    split_rows_kernel<2, 3><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
  }
  TERN_CUDA_LAUNCHED("split_rows_kernel");
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType t = type == 1 ? CUDA_R_16F : CUDA_R_16BF;
  const cublasStatus_t s = cublasGemmEx(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_N, CUBLAS_OP_N, K, terms * M, N, &one, W, t, K, split,
                                        t, N, &zero, acc, CUDA_R_32F, K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) throw_error(std::string("cuBLAS split_gemm GEMM failed: ") + cublasGetStatusString(s));
  const dim3 grid((K + kThreads - 1) / kThreads, std::min(M, 65535));
  combine_kernel<<<grid, kThreads, 0, st_>>>(acc, terms, M, K, rscale, alpha, C, ldc, accumulate ? 1 : 0);
  TERN_CUDA_LAUNCHED("combine_kernel");
}

void split_gemm(const float* A, int M, int N, const void* W, int type, int K, float alpha, float* C, cudaStream_t st) {
  TrainBlas blas(st);
  blas.split_gemm(A, N, M, N, ColScales{}, W, type, K, alpha, C, K, false);
}

}  // namespace tern::cuda
