// C = alpha * A . W for a float32 A on 16-bit tensor cores without losing float32
// accuracy (the training backward: dlogits . E, dy . Wq). Each row of A is scaled by an
// exact power of two (so values down to ~1e-9 keep their bits in F16) and split into
// 16-bit terms whose sum is the scaled row to ~22 bits (store_split); all terms go
// through ONE cuBLAS GEMM as extra rows, so W is read once; a combine kernel adds the
// terms and undoes the scale. Every product of a 16-bit term with a 16-bit weight is exact
// in the float32 accumulator. F32 weights use SGEMM (pedantic: no TF32).
#include <cublas_v2.h>

#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/weights.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_error(std::string("cuBLAS ") + what + " failed: " + cublasGetStatusString(s));
}

template <int TYPE>
__global__ void __launch_bounds__(kThreads) split_rows_kernel(const float* __restrict__ A, int M, int N, void* split,
                                                              float* __restrict__ rscale) {
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  const float* row = A + static_cast<int64_t>(m) * N;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < N; i += kThreads) amax = fmaxf(amax, fabsf(row[i]));
  amax = block_reduce<kThreads>(amax, sf, MaxOp{});
  const int e = amax > 0.0f ? -ilogbf(amax) : 0;  // 2^e * amax in [1, 2)
  const int64_t stride = static_cast<int64_t>(M) * N;
  for (int i = threadIdx.x; i < N; i += kThreads) store_split<TYPE>(split, static_cast<int64_t>(m) * N + i, stride, ldexpf(row[i], e));
  if (threadIdx.x == 0) rscale[m] = ldexpf(1.0f, -e);
}

__global__ void __launch_bounds__(kThreads) combine_kernel(const float* __restrict__ acc, int terms, int M, int K,
                                                           const float* __restrict__ rscale, float alpha, float* __restrict__ C) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(M) * K) return;
  const int m = static_cast<int>(idx / K);
  const int64_t stride = static_cast<int64_t>(M) * K;
  float s = acc[idx];
  for (int t = 1; t < terms; ++t) s += acc[idx + t * stride];
  C[idx] = alpha * (s * rscale[m]);
}

}  // namespace

void split_gemm(const float* A, int M, int N, const void* W, int type, int K, float alpha, float* C, cudaStream_t st) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "create");
  struct Guard {
    cublasHandle_t h;
    ~Guard() { cublasDestroy(h); }
  } guard{h};
  check_cublas(cublasSetStream(h, st), "set stream");
  check_cublas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "set math mode");
  // Row-major C [M][K] = A [M][N] . W [N][K] is, column-major, C^T (K x M) = W^T (K x N) . A^T (N x M):
  // both operands as stored, op N.
  if (type == 0) {
    const float beta = 0.0f;
    check_cublas(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, &alpha, static_cast<const float*>(W), K, A, N, &beta, C, K),
                 "split_gemm SGEMM");
    return;
  }
  const int terms = type == 1 ? 2 : 3;
  DevBuf split(static_cast<size_t>(terms) * M * N * 2), acc(static_cast<size_t>(terms) * M * K * sizeof(float)), rscale(M * sizeof(float));
  if (type == 1) {
    split_rows_kernel<1><<<M, kThreads, 0, st>>>(A, M, N, split.as<void>(), rscale.as<float>());
  } else {
    split_rows_kernel<2><<<M, kThreads, 0, st>>>(A, M, N, split.as<void>(), rscale.as<float>());
  }
  TERN_CUDA_LAUNCHED("split_rows_kernel");
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType t = type == 1 ? CUDA_R_16F : CUDA_R_16BF;
  check_cublas(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, K, terms * M, N, &one, W, t, K, split.as<void>(), t, N, &zero, acc.as<float>(),
                            CUDA_R_32F, K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "split_gemm GEMM");
  const int64_t n = static_cast<int64_t>(M) * K;
  combine_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, st>>>(acc.as<float>(), terms, M, K, rscale.as<float>(),
                                                                                           alpha, C);
  TERN_CUDA_LAUNCHED("combine_kernel");
  // The scratch buffers are freed when this returns: finish using them first.
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace tern::cuda
