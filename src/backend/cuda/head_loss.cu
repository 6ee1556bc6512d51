// The training loss on the GPU: causal-LM cross entropy over the tied LM head and its
// gradient w.r.t. the final hidden state (before the output RMSNorm). CPU references:
// train::cross_entropy_fwd_bwd and train::rmsnorm_bwd (train/ops.h).
//
// Per chunk of rows: logits = RMSNorm(x) E^T by HeadGemm (exact to ~1e-6), one block per
// row turns them into (softmax - onehot) / n_norm in place (log-sum-exp in double), then
// dxn = dlogits E on cuBLAS tensor cores with dlogits split like the head's input: into
// 2 F16 terms after an exact power-of-two row scale (F16 cannot hold ~1e-9 otherwise),
// 3 BF16 terms, or SGEMM for an F32 head; finally the RMSNorm backward gives dx.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

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

// Row m of logits [R][V] -> dlogits in place; loss[m] = lse - logit[label] (0 if ignored).
// Then the row is split into `terms` 16-bit terms of dlogits * 2^e (e per row, so the
// row's largest |dlogit| is ~1), written to split [terms][R][V]; rscale[m] = 2^-e.
template <int TYPE>  // 0 F32 (no split), 1 F16 x2, 2 BF16 x3
__global__ void __launch_bounds__(kThreads) ce_rows_kernel(float* __restrict__ logits, int V, int R, const int32_t* __restrict__ labels,
                                                           double inv_norm, double* __restrict__ loss, void* split,
                                                           float* __restrict__ rscale) {
  __shared__ double sd[kThreads / 32];
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  float* row = logits + static_cast<int64_t>(m) * V;
  const int label = labels[m];
  if (label < 0) {
    for (int v = threadIdx.x; v < V; v += kThreads) row[v] = 0.0f;
    if (threadIdx.x == 0) loss[m] = 0.0, rscale[m] = 1.0f;
  } else {
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += kThreads) mx = fmaxf(mx, row[v]);
    mx = block_reduce<kThreads>(mx, sf, MaxOp{});
    double se = 0.0;
    for (int v = threadIdx.x; v < V; v += kThreads) se += exp(static_cast<double>(row[v]) - mx);
    se = block_reduce<kThreads>(se, sd, SumOp{});
    const double lse = mx + log(se);
    if (threadIdx.x == 0) loss[m] = (lse - row[label]) * inv_norm;
    __syncthreads();  // row[label] is read above before it is overwritten below
    for (int v = threadIdx.x; v < V; v += kThreads) {
      const double p = exp(static_cast<double>(row[v]) - lse);
      row[v] = static_cast<float>((p - (v == label ? 1.0 : 0.0)) * inv_norm);
    }
  }
  if constexpr (TYPE == 0) {
    if (threadIdx.x == 0) rscale[m] = 1.0f;
  } else {
    __syncthreads();
    float amax = 0.0f;
    for (int v = threadIdx.x; v < V; v += kThreads) amax = fmaxf(amax, fabsf(row[v]));
    amax = block_reduce<kThreads>(amax, sf, MaxOp{});
    const int e = amax > 0.0f ? -ilogbf(amax) : 0;  // 2^e * amax in [1, 2)
    const int64_t stride = static_cast<int64_t>(R) * V;
    for (int v = threadIdx.x; v < V; v += kThreads) {
      store_split<TYPE>(split, static_cast<int64_t>(m) * V + v, stride, ldexpf(row[v], e));
    }
    if (threadIdx.x == 0) rscale[m] = ldexpf(1.0f, -e);
  }
}

// dx[m] = RMSNorm backward of dxn[m] = rscale[m] * sum of the terms' GEMM rows, with the
// output norm weight w (train::rmsnorm_bwd: dx = r w dy - x r^3 / n sum_j w_j dy_j x_j).
__global__ void __launch_bounds__(kThreads) norm_bwd_kernel(const float* __restrict__ x, const float* __restrict__ w, int H, int R,
                                                            int terms, const float* __restrict__ acc,
                                                            const float* __restrict__ rscale, float eps, float* __restrict__ dx) {
  __shared__ double sd[kThreads / 32];
  const int m = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(m) * H;
  const int64_t stride = static_cast<int64_t>(R) * H;
  auto dy = [&](int i) {
    const int64_t at = static_cast<int64_t>(m) * H + i;
    float s = acc[at];
    for (int t = 1; t < terms; ++t) s += acc[at + t * stride];
    return s * rscale[m];
  };
  double ss = 0.0, dot = 0.0;
  for (int i = threadIdx.x; i < H; i += kThreads) {
    ss += static_cast<double>(xr[i]) * xr[i];
    dot += static_cast<double>(w[i]) * dy(i) * xr[i];
  }
  ss = block_reduce<kThreads>(ss, sd, SumOp{});
  dot = block_reduce<kThreads>(dot, sd, SumOp{});
  const double r = 1.0 / sqrt(ss / H + eps);
  for (int i = threadIdx.x; i < H; i += kThreads) {
    dx[static_cast<int64_t>(m) * H + i] = static_cast<float>(r * w[i] * dy(i) - xr[i] * r * r * r / H * dot);
  }
}

}  // namespace

double head_loss_fwd_bwd(HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps, const int32_t* labels,
                         int M, int64_t n_norm, float* dx, cudaStream_t st) {
  if (M <= 0) return 0.0;
  const int V = hw.V, H = hw.H;
  const int terms = hw.type == 1 ? 2 : hw.type == 2 ? 3 : 1;
  constexpr int kRows = 128;
  const int R = std::min(M, kRows);
  DevBuf logits(static_cast<size_t>(R) * V * sizeof(float)), loss(static_cast<size_t>(R) * sizeof(double));
  DevBuf split(terms > 1 ? static_cast<size_t>(terms) * R * V * 2 : 4), acc(static_cast<size_t>(terms) * R * H * sizeof(float));
  DevBuf rscale(static_cast<size_t>(R) * sizeof(float));
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "create");
  struct Guard {
    cublasHandle_t h;
    ~Guard() { cublasDestroy(h); }
  } guard{h};
  check_cublas(cublasSetStream(h, st), "set stream");
  check_cublas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "set math mode");
  const double inv_norm = 1.0 / static_cast<double>(std::max<int64_t>(1, n_norm));
  double total = 0.0;
  std::vector<double> host(R);
  for (int m0 = 0; m0 < M; m0 += R) {
    const int n = std::min(R, M - m0);
    head.run(x + static_cast<int64_t>(m0) * H, n, normw, eps, logits.as<float>(), nullptr, st);
    switch (hw.type) {
      case 0: ce_rows_kernel<0><<<n, kThreads, 0, st>>>(logits.as<float>(), V, n, labels + m0, inv_norm, loss.as<double>(), split.as<void>(), rscale.as<float>()); break;
      case 1: ce_rows_kernel<1><<<n, kThreads, 0, st>>>(logits.as<float>(), V, n, labels + m0, inv_norm, loss.as<double>(), split.as<void>(), rscale.as<float>()); break;
      default: ce_rows_kernel<2><<<n, kThreads, 0, st>>>(logits.as<float>(), V, n, labels + m0, inv_norm, loss.as<double>(), split.as<void>(), rscale.as<float>()); break;
    }
    TERN_CUDA_LAUNCHED("ce_rows_kernel");
    // dxn^T (H x rows) = E^T-as-stored (H x V, col-major) . dlogits^T (V x rows).
    const float one = 1.0f, zero = 0.0f;
    const int cols = terms * n;
    if (hw.type == 0) {
      check_cublas(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, H, n, V, &one, static_cast<const float*>(hw.emb), H, logits.as<float>(), V,
                               &zero, acc.as<float>(), H),
                   "head backward SGEMM");
    } else {
      const cudaDataType t = hw.type == 1 ? CUDA_R_16F : CUDA_R_16BF;  // terms packed at stride n * V
      check_cublas(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, H, cols, V, &one, hw.emb, t, H, split.as<void>(), t, V, &zero, acc.as<float>(),
                                CUDA_R_32F, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "head backward GEMM");
    }
    norm_bwd_kernel<<<n, kThreads, 0, st>>>(x + static_cast<int64_t>(m0) * H, normw, H, n, terms, acc.as<float>(), rscale.as<float>(), eps,
                                             dx + static_cast<int64_t>(m0) * H);
    TERN_CUDA_LAUNCHED("norm_bwd_kernel");
    TERN_CUDA_CHECK(cudaMemcpyAsync(host.data(), loss.as<double>(), n * sizeof(double), cudaMemcpyDeviceToHost, st));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int i = 0; i < n; ++i) total += host[i];
  }
  return total;
}

}  // namespace tern::cuda
