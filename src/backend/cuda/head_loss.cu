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
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

// Row m of logits [R][V] -> dlogits in place (when grad); loss[m] = (lse - logit[label]) /
// n_norm (0 if ignored; dlogits 0 too).
__global__ void __launch_bounds__(kThreads) ce_rows_kernel(float* __restrict__ logits, int V, const int32_t* __restrict__ labels,
                                                           double inv_norm, double* __restrict__ loss, int grad) {
  __shared__ double sd[kThreads / 32];
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  float* row = logits + static_cast<int64_t>(m) * V;
  const int label = labels[m];
  if (label < 0) {
    if (grad) {
      for (int v = threadIdx.x; v < V; v += kThreads) row[v] = 0.0f;
    }
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
  if (!grad) return;
  __syncthreads();  // row[label] is read above before it is overwritten below
  for (int v = threadIdx.x; v < V; v += kThreads) {
    const double p = exp(static_cast<double>(row[v]) - lse);
    row[v] = static_cast<float>((p - (v == label ? 1.0 : 0.0)) * inv_norm);
  }
}

}  // namespace

void head_loss_rows(TrainBlas& blas, HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps,
                    const int32_t* labels, int M, int64_t n_norm, float* dx, double* loss_rows, bool tf32) {
  if (M <= 0) return;
  const int V = hw.V, H = hw.H;
  constexpr int kRows = 512;
  const int R = std::min(M, kRows);
  const cudaStream_t st = blas.stream();
  auto* logits = static_cast<float*>(blas.scratch(kSlotHead, (static_cast<size_t>(R) * V + static_cast<size_t>(R) * H) * sizeof(float)));
  float* dxn = logits + static_cast<size_t>(R) * V;
  const double inv_norm = 1.0 / static_cast<double>(std::max<int64_t>(1, n_norm));
  for (int m0 = 0; m0 < M; m0 += R) {
    const int n = std::min(R, M - m0);
    head.run(x + static_cast<int64_t>(m0) * H, n, normw, eps, logits, nullptr, st);
    ce_rows_kernel<<<n, kThreads, 0, st>>>(logits, V, labels + m0, inv_norm, loss_rows + m0, dx != nullptr ? 1 : 0);
    TERN_CUDA_LAUNCHED("ce_rows_kernel");
    if (dx == nullptr) continue;
    blas.split_gemm(logits, V, n, V, ColScales{}, hw.emb, hw.type, H, 1.0f, dxn, H, false, tf32);  // dxn = dlogits . E
    launch_rmsnorm_bwd(x + static_cast<int64_t>(m0) * H, normw, dxn, n, H, eps, dx + static_cast<int64_t>(m0) * H, false, st);
  }
}

double head_loss_fwd_bwd(HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps, const int32_t* labels,
                         int M, int64_t n_norm, float* dx, cudaStream_t st, bool tf32) {
  if (M <= 0) return 0.0;
  TrainBlas blas(st);
  DevBuf loss(static_cast<size_t>(M) * sizeof(double));
  head_loss_rows(blas, head, hw, x, normw, eps, labels, M, n_norm, dx, loss.as<double>(), tf32);
  std::vector<double> host(M);
  TERN_CUDA_CHECK(cudaMemcpyAsync(host.data(), loss.as<double>(), M * sizeof(double), cudaMemcpyDeviceToHost, st));
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));
  double total = 0.0;
  for (double v : host) total += v;
  return total;
}

}  // namespace tern::cuda
