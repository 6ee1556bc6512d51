// Backward ops of the LoRA training step on the GPU, each checked against its CPU
// reference in train/ops.h (tests/cuda/test_cuda_kernels.cpp): RMSNorm backward (frozen
// weight), the gated activation's backward, and the LoRA branch forward/backward on cuBLAS
// SGEMM (pedantic float32: the adapter's matrices are small, accuracy is what matters).
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

// train::rmsnorm_bwd: dx = r w dy - x r^3 / n sum_j w_j dy_j x_j, sums in double.
__global__ void __launch_bounds__(kThreads) rmsnorm_bwd_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                                               const float* __restrict__ dy, int n, float eps, float* dx,
                                                               int accumulate) {
  __shared__ double sd[kThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  double ss = 0.0, dot = 0.0;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    ss += static_cast<double>(x[base + i]) * x[base + i];
    dot += static_cast<double>(w[i]) * dy[base + i] * x[base + i];
  }
  ss = block_reduce<kThreads>(ss, sd, SumOp{});
  dot = block_reduce<kThreads>(dot, sd, SumOp{});
  const double r = 1.0 / sqrt(ss / n + eps);
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const float g = static_cast<float>(r * w[i] * dy[base + i] - x[base + i] * r * r * r / n * dot);
    dx[base + i] = accumulate ? dx[base + i] + g : g;
  }
}

// train::gated_act_bwd (act 0 relu^2, 1 silu, 2 gelu with the engine's constant).
__global__ void __launch_bounds__(kThreads) gated_act_bwd_kernel(const float* __restrict__ g, const float* __restrict__ u,
                                                                 const float* __restrict__ dh, int64_t n, int act,
                                                                 float* __restrict__ dg, float* __restrict__ du) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const float gi = g[i], ui = u[i], d = dh[i];
  if (act == 0) {
    const float r = fmaxf(gi, 0.0f);
    du[i] = d * (r * r);
    dg[i] = d * ui * (2.0f * r);
  } else if (act == 1) {
    const float sig = 1.0f / (1.0f + expf(-gi));
    du[i] = d * (gi / (1.0f + expf(-gi)));
    dg[i] = d * ui * (sig * (1.0f + gi * (1.0f - sig)));
  } else {
    const float c = 0.70710678f, k = 1.12837916709551257390f, z = gi * c;
    du[i] = d * (0.5f * gi * (1.0f + erff(z)));
    dg[i] = d * ui * (0.5f * (1.0f + erff(z)) + 0.5f * gi * c * k * expf(-z * z));
  }
}

// x_d = x * mask / (1 - p) (torch's inverted dropout).
__global__ void __launch_bounds__(kThreads) dropout_kernel(const float* __restrict__ x, const uint8_t* __restrict__ mask, float keep,
                                                           int64_t n, float* __restrict__ xd) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) xd[i] = mask[i] ? x[i] * keep : 0.0f;
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Row-major C [m][n] = alpha * op(A) . op(B) + beta * C on column-major cuBLAS: C^T = op(B)^T op(A)^T.
void gemm_rm(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb,
             float beta, float* C, int ldc, const char* what) {
  check_cublas(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, B, ldb, A, lda, &beta, C, ldc),
               what);
}

struct Handle {
  cublasHandle_t h = nullptr;
  explicit Handle(cudaStream_t st) {
    check_cublas(cublasCreate(&h), "create");
    check_cublas(cublasSetStream(h, st), "set stream");
    check_cublas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "set math mode");
  }
  ~Handle() { cublasDestroy(h); }
};

}  // namespace

void launch_rmsnorm_bwd(const float* x, const float* w, const float* dy, int M, int n, float eps, float* dx, bool accumulate,
                        cudaStream_t st) {
  if (M <= 0) return;
  rmsnorm_bwd_kernel<<<M, kThreads, 0, st>>>(x, w, dy, n, eps, dx, accumulate ? 1 : 0);
  TERN_CUDA_LAUNCHED("rmsnorm_bwd_kernel");
}

void launch_gated_act_bwd(const float* g, const float* u, const float* dh, int64_t n, int act, float* dg, float* du, cudaStream_t st) {
  if (n <= 0) return;
  gated_act_bwd_kernel<<<blocks_for(n), kThreads, 0, st>>>(g, u, dh, n, act, dg, du);
  TERN_CUDA_LAUNCHED("gated_act_bwd_kernel");
}

void lora_fwd_gpu(const float* x, const float* A, const float* B, int M, int in, int r, int out, float scaling, const uint8_t* mask,
                  float p, float* u, float* y, bool accumulate, cudaStream_t st) {
  Handle h(st);
  DevBuf xd_buf;
  const float* xd = x;
  if (p > 0.0f) {
    xd_buf = DevBuf(static_cast<size_t>(M) * in * sizeof(float));
    dropout_kernel<<<blocks_for(static_cast<int64_t>(M) * in), kThreads, 0, st>>>(x, mask, 1.0f / (1.0f - p), static_cast<int64_t>(M) * in,
                                                                                  xd_buf.as<float>());
    TERN_CUDA_LAUNCHED("dropout_kernel");
    xd = xd_buf.as<float>();
  }
  gemm_rm(h.h, false, true, M, r, in, 1.0f, xd, in, A, in, 0.0f, u, r, "lora u = x_d A^T");
  gemm_rm(h.h, false, true, M, out, r, scaling, u, r, B, r, accumulate ? 1.0f : 0.0f, y, out, "lora y += s u B^T");
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));
}

void lora_bwd_gpu(const float* x, const float* A, const float* B, const float* u, const float* dy, int M, int in, int r, int out,
                  float scaling, const uint8_t* mask, float p, float* dx, float* dA, float* dB, bool accumulate, cudaStream_t st) {
  Handle h(st);
  DevBuf du(static_cast<size_t>(M) * r * sizeof(float));
  DevBuf xd_buf;
  const float* xd = x;
  const float keep = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
  if (p > 0.0f) {
    xd_buf = DevBuf(static_cast<size_t>(M) * in * sizeof(float));
    dropout_kernel<<<blocks_for(static_cast<int64_t>(M) * in), kThreads, 0, st>>>(x, mask, keep, static_cast<int64_t>(M) * in, xd_buf.as<float>());
    TERN_CUDA_LAUNCHED("dropout_kernel");
    xd = xd_buf.as<float>();
  }
  gemm_rm(h.h, false, false, M, r, out, scaling, dy, out, B, r, 0.0f, du.as<float>(), r, "lora du = s dy B");
  gemm_rm(h.h, true, false, out, r, M, scaling, dy, out, u, r, 1.0f, dB, r, "lora dB += s dy^T u");
  gemm_rm(h.h, true, false, r, in, M, 1.0f, du.as<float>(), r, xd, in, 1.0f, dA, in, "lora dA += du^T x_d");
  if (dx != nullptr) {
    if (p > 0.0f) {
      // dx (+)= (du A) * mask * keep: through a scratch row block, then the dropout mask.
      DevBuf t(static_cast<size_t>(M) * in * sizeof(float));
      gemm_rm(h.h, false, false, M, in, r, 1.0f, du.as<float>(), r, A, in, 0.0f, t.as<float>(), in, "lora du A");
      dropout_kernel<<<blocks_for(static_cast<int64_t>(M) * in), kThreads, 0, st>>>(t.as<float>(), mask, keep, static_cast<int64_t>(M) * in,
                                                                                    t.as<float>());
      TERN_CUDA_LAUNCHED("dropout_kernel");
      const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
      check_cublas(cublasSgeam(h.h, CUBLAS_OP_N, CUBLAS_OP_N, in, M, &one, t.as<float>(), in, &beta, dx, in, dx, in), "lora dx add");
      TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    } else {
      gemm_rm(h.h, false, false, M, in, r, 1.0f, du.as<float>(), r, A, in, accumulate ? 1.0f : 0.0f, dx, in, "lora dx (+)= du A");
    }
  }
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace tern::cuda
