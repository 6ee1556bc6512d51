// The training loss on the GPU: causal-LM cross entropy over the tied LM head and its
// gradient w.r.t. the final hidden state (before the output RMSNorm). CPU references:
// train::cross_entropy_fwd_bwd and train::rmsnorm_bwd (train/ops.h).
//
// Per chunk of rows: logits = RMSNorm(x) E^T by HeadGemm (exact to ~1e-6), one block per
// row turns them into (softmax - onehot) / n_norm in place (log-sum-exp in double), then
// dxn = dlogits E by split_gemm (float accuracy on tensor cores), and the RMSNorm
// backward gives dx.

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

// Row m of logits [R][V] -> dlogits in place; loss[m] = (lse - logit[label]) / n_norm
// (0 if ignored; dlogits 0 too).
__global__ void __launch_bounds__(kThreads) ce_rows_kernel(float* __restrict__ logits, int V, const int32_t* __restrict__ labels,
                                                           double inv_norm, double* __restrict__ loss) {
  __shared__ double sd[kThreads / 32];
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  float* row = logits + static_cast<int64_t>(m) * V;
  const int label = labels[m];
  if (label < 0) {
    for (int v = threadIdx.x; v < V; v += kThreads) row[v] = 0.0f;
    if (threadIdx.x == 0) loss[m] = 0.0;
    return;
  }
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

}  // namespace

double head_loss_fwd_bwd(HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps, const int32_t* labels,
                         int M, int64_t n_norm, float* dx, cudaStream_t st) {
  if (M <= 0) return 0.0;
  const int V = hw.V, H = hw.H;
  constexpr int kRows = 128;
  const int R = std::min(M, kRows);
  DevBuf logits(static_cast<size_t>(R) * V * sizeof(float)), loss(static_cast<size_t>(R) * sizeof(double));
  DevBuf dxn(static_cast<size_t>(R) * H * sizeof(float));
  const double inv_norm = 1.0 / static_cast<double>(std::max<int64_t>(1, n_norm));
  double total = 0.0;
  std::vector<double> host(R);
  for (int m0 = 0; m0 < M; m0 += R) {
    const int n = std::min(R, M - m0);
    head.run(x + static_cast<int64_t>(m0) * H, n, normw, eps, logits.as<float>(), nullptr, st);
    ce_rows_kernel<<<n, kThreads, 0, st>>>(logits.as<float>(), V, labels + m0, inv_norm, loss.as<double>());
    TERN_CUDA_LAUNCHED("ce_rows_kernel");
    split_gemm(logits.as<float>(), n, V, hw.emb, hw.type, H, 1.0f, dxn.as<float>(), st);  // dxn = dlogits . E
    launch_rmsnorm_bwd(x + static_cast<int64_t>(m0) * H, normw, dxn.as<float>(), n, H, eps, dx + static_cast<int64_t>(m0) * H, false, st);
    TERN_CUDA_CHECK(cudaMemcpyAsync(host.data(), loss.as<double>(), n * sizeof(double), cudaMemcpyDeviceToHost, st));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int i = 0; i < n; ++i) total += host[i];
  }
  return total;
}

}  // namespace tern::cuda
