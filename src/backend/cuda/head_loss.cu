// The training loss on the GPU: causal-LM cross entropy over the tied LM head and its
// gradient w.r.t. the final hidden state (before the output RMSNorm). CPU references:
// train::cross_entropy_fwd_bwd and train::rmsnorm_bwd (train/ops.h).
//
// Per chunk of rows: logits = RMSNorm(x) E^T by HeadGemm (exact to ~1e-6), one block per
// row computes the loss and dlogits = (softmax - onehot) / n_norm (log-sum-exp in double),
// written as split_gemm's 16-bit terms, then dxn = dlogits E on tensor cores
// (TrainBlas::terms_gemm: float accuracy, or ~10 bits with tf32), and the RMSNorm backward
// gives dx.

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

// Row m of logits [R][V]: loss[m] = (lse - logit[label]) / n_norm (0 if ignored) and, when
// grad, dlogits = (softmax - onehot) / n_norm. TYPE 0 writes them in place (F32 heads: the
// SGEMM takes them as they are); TYPE 1/2 writes split_gemm's TERMS 16-bit terms straight
// to `split` (rows lds apart) with the row's power-of-two scale in rscale[m], the very values
// split_rows would make of the F32 dlogits (no F32 round trip and no split pass over 128k
// columns). in_place (one term): split is the logits buffer itself, lds = 2V, each row's
// terms written over its own logits.
// The max and the sum of exponentials come from one pass (a running max per thread, the
// sum rescaled when it grows; log-sum-exp in double). Each exponential is a float expf of
// a difference to the max (~1 ulp) summed in double: with double exp per element the kernel
// was bound by FP64 issue (H200: 574 us per 512 rows, 1.1 TB/s).
template <int TYPE, int TERMS>
__global__ void __launch_bounds__(kThreads) ce_rows_kernel(float* logits, int V, const int32_t* __restrict__ labels,
                                                           double inv_norm, double* __restrict__ loss, int grad, void* split,
                                                           float* __restrict__ rscale, int R, int64_t lds, int in_place) {
  __shared__ double sd[kThreads / 32];
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  float* row = logits + static_cast<int64_t>(m) * V;
  const int label = labels[m];
  const int64_t at = static_cast<int64_t>(m) * lds, stride = static_cast<int64_t>(R) * lds;
  if (label < 0) {
    if (grad) {
      for (int v = threadIdx.x; v < V; v += kThreads) {
        if constexpr (TYPE == 0) {
          row[v] = 0.0f;
        } else {
          store_terms<TYPE, TERMS>(split, at + v, stride, 0.0f);
        }
      }
      if (TYPE != 0 && threadIdx.x == 0) rscale[m] = 1.0f;
    }
    if (threadIdx.x == 0) loss[m] = 0.0;
    return;
  }
  // Per thread: running max mt, the sum st of exp(x - mt), and the largest logit that is
  // not the label's (its probability is the largest dlogit but the label's).
  float mt = -INFINITY, other = -INFINITY;
  double st = 0.0;
  for (int v = threadIdx.x; v < V; v += kThreads) {
    const float x = row[v];
    if (v != label) other = fmaxf(other, x);
    if (x > mt) {
      st = (mt == -INFINITY ? 0.0 : st * exp(static_cast<double>(mt) - x)) + 1.0;
      mt = x;
    } else {
      st += expf(x - mt);
    }
  }
  const float mx = block_reduce<kThreads>(mt, sf, MaxOp{});
  __syncthreads();  // sf is reused below
  other = block_reduce<kThreads>(other, sf, MaxOp{});
  const double se = block_reduce<kThreads>(mt == -INFINITY ? 0.0 : st * exp(static_cast<double>(mt) - mx), sd, SumOp{});
  const double lse = mx + log(se);
  const float xl = row[label];
  if (threadIdx.x == 0) loss[m] = (lse - xl) * inv_norm;
  if (!grad) return;
  // p = exp(x - lse) = exp((x - mx) - log(se)): both differences small, so float keeps ~1e-7.
  const float ls = static_cast<float>(log(se)), inv = static_cast<float>(inv_norm);
  auto dlogit = [&](int v, float x) {
    const float p = expf((x - mx) - ls);
    return (v == label ? p - 1.0f : p) * inv;
  };
  if constexpr (TYPE == 0) {
    __syncthreads();  // row[label] is read above before it is overwritten below
    for (int v = threadIdx.x; v < V; v += kThreads) row[v] = dlogit(v, row[v]);
  } else {
    // The largest |dlogit|: the label's or the largest other logit's (exp is monotonic).
    const float amax = fmaxf(fabsf(dlogit(label, xl)), other == -INFINITY ? 0.0f : fabsf(dlogit(label == 0 ? 1 : 0, other)));
    const int e = row_split_exp(amax);  // split_rows' scale
    if (in_place && TERMS == 1) {
      // A chunk's 16-bit stores land on the floats of the chunk half its index, whose loads
      // are done: the block syncs between each chunk's loads and its stores.
      constexpr int kPer = 4;
      for (int base = 0; base < V; base += kPer * kThreads) {
        float xv[kPer];
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          const int v = base + j * kThreads + threadIdx.x;
          xv[j] = v < V ? row[v] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          const int v = base + j * kThreads + threadIdx.x;
          if (v < V) store_terms<TYPE, TERMS>(split, at + v, stride, ldexpf(dlogit(v, xv[j]), e));
        }
      }
    } else {
      for (int v = threadIdx.x; v < V; v += kThreads) store_terms<TYPE, TERMS>(split, at + v, stride, ldexpf(dlogit(v, row[v]), e));
    }
    if (threadIdx.x == 0) rscale[m] = row_rscale(amax);
  }
}

}  // namespace

void head_loss_rows(TrainBlas& blas, HeadGemm& head, const HeadWeights& hw, const float* x, const float* normw, float eps,
                    const int32_t* labels, int M, int64_t n_norm, float* dx, double* loss_rows, bool tf32) {
  if (M <= 0) return;
  const int V = hw.V, H = hw.H;
  // Rows per chunk: the logits GEMM and the loss kernel fill the H100 from ~1024 rows on
  // (H100, 2b-4t: loss 11.8 ms a step at 512, 9.6 at 1024, 9.3 at 2048, which would cost
  // 0.5 GiB more).
  constexpr int kRows = 1024;
  const int R = std::min(M, kRows);
  const cudaStream_t st = blas.stream();
  auto* logits = static_cast<float*>(blas.scratch(kSlotHead, (static_cast<size_t>(R) * V + static_cast<size_t>(R) * H) * sizeof(float)));
  float* dxn = logits + static_cast<size_t>(R) * V;
  const double inv_norm = 1.0 / static_cast<double>(std::max<int64_t>(1, n_norm));
  for (int m0 = 0; m0 < M; m0 += R) {
    const int n = std::min(R, M - m0);
    head.run(x + static_cast<int64_t>(m0) * H, n, normw, eps, logits, nullptr, st);
    blas.mark("l.logits");
    const int grad = dx != nullptr ? 1 : 0;
    if (hw.type == 0 || !grad) {
      ce_rows_kernel<0, 1><<<n, kThreads, 0, st>>>(logits, V, labels + m0, inv_norm, loss_rows + m0, grad, nullptr, nullptr, n, V, 0);
      TERN_CUDA_LAUNCHED("ce_rows_kernel");
      if (!grad) continue;
      blas.split_gemm(logits, V, n, V, ColScales{}, hw.emb, hw.type, H, 1.0f, dxn, H, false, tf32);  // dxn = dlogits . E
    } else {
      const int terms = TrainBlas::split_terms(hw.type, tf32);
      // One term goes over the logits themselves (no second R x V buffer).
      const int in_place = terms == 1 ? 1 : 0;
      const int64_t lds = in_place ? 2 * static_cast<int64_t>(V) : V;
      void* split = in_place ? static_cast<void*>(logits) : blas.scratch(kSlotSplitA, static_cast<size_t>(terms) * n * V * 2);
      auto* rscale = static_cast<float*>(blas.scratch(kSlotSplitScale, static_cast<size_t>(n) * sizeof(float)));
      auto* lab = labels + m0;
      double* lr = loss_rows + m0;
      if (hw.type == 1 && terms == 1) {
        ce_rows_kernel<1, 1><<<n, kThreads, 0, st>>>(logits, V, lab, inv_norm, lr, 1, split, rscale, n, lds, in_place);
      } else if (hw.type == 1) {
        ce_rows_kernel<1, 2><<<n, kThreads, 0, st>>>(logits, V, lab, inv_norm, lr, 1, split, rscale, n, lds, in_place);
      } else if (terms == 2) {
        ce_rows_kernel<2, 2><<<n, kThreads, 0, st>>>(logits, V, lab, inv_norm, lr, 1, split, rscale, n, lds, in_place);
      } else {
        ce_rows_kernel<2, 3><<<n, kThreads, 0, st>>>(logits, V, lab, inv_norm, lr, 1, split, rscale, n, lds, in_place);
      }
      TERN_CUDA_LAUNCHED("ce_rows_kernel");
      blas.mark("l.ce");
      blas.terms_gemm(split, terms, rscale, n, V, hw.emb, hw.type, H, 1.0f, dxn, H, false, nullptr, static_cast<int>(lds));  // dxn = dlogits . E
      blas.mark("l.dx_gemm");
    }
    launch_rmsnorm_bwd(x + static_cast<int64_t>(m0) * H, normw, dxn, n, H, eps, dx + static_cast<int64_t>(m0) * H, false, st);
    blas.mark("l.rmsnorm");
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
