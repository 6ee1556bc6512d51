// The optimizer step on the GPU, bit for bit train/optimizer.cpp (clip_grad_norm, then
// AdamW in torch's order or SGD): every float operation is an explicitly rounded
// intrinsic, so nvcc cannot contract a multiply and an add into an FMA that the CPU
// reference (built with -ffp-contract=off) does not do.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kBlocks = 1024;

// Per-block partial sums of squares in double (a grid-stride loop), then one block adds
// the partials in order: the same result on every run.
__global__ void __launch_bounds__(kThreads) sq_partial_kernel(const float* __restrict__ g, size_t n, double* __restrict__ part) {
  __shared__ double sd[kThreads / 32];
  double s = 0;
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * kThreads) {
    s += static_cast<double>(g[i]) * g[i];
  }
  s = block_reduce<kThreads>(s, sd, SumOp{});
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* __restrict__ part, int n, double* __restrict__ out) {
  __shared__ double sd[kThreads / 32];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) s += part[i];
  s = block_reduce<kThreads>(s, sd, SumOp{});
  if (threadIdx.x == 0) *out = s;
}

__global__ void __launch_bounds__(kThreads) update_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                                          float* __restrict__ v, size_t n, const OptimizerArgs a) {
  const size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const float gi = a.clip ? __fmul_rn(g[i], a.coef) : g[i];
  float pv = p[i];
  if (a.sgd) {
    const float gg = a.wd != 0.0f ? __fadd_rn(gi, __fmul_rn(a.wd, pv)) : gi;
    p[i] = __fsub_rn(pv, __fmul_rn(a.lr, gg));
    return;
  }
  if (a.decay_on) pv = __fmul_rn(pv, a.decay);
  const float mv = __fadd_rn(m[i], __fmul_rn(a.w1, __fsub_rn(gi, m[i])));
  const float vv = __fadd_rn(__fmul_rn(v[i], a.b2), __fmul_rn(__fmul_rn(a.w2, gi), gi));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vv), a.bc2_sqrt), a.eps);
  m[i] = mv;
  v[i] = vv;
  p[i] = __fadd_rn(pv, __fdiv_rn(__fmul_rn(a.neg_step, mv), denom));
}

}  // namespace

double grad_sq_sum(const float* g, size_t n, double* scratch, cudaStream_t st) {
  if (n == 0) return 0.0;
  const int blocks = static_cast<int>(std::min<size_t>(kBlocks, (n + kThreads - 1) / kThreads));
  sq_partial_kernel<<<blocks, kThreads, 0, st>>>(g, n, scratch);
  TERN_CUDA_LAUNCHED("sq_partial_kernel");
  sum_partials_kernel<<<1, kThreads, 0, st>>>(scratch, blocks, scratch + kBlocks);
  TERN_CUDA_LAUNCHED("sum_partials_kernel");
  double s = 0;
  TERN_CUDA_CHECK(cudaMemcpyAsync(&s, scratch + kBlocks, sizeof(double), cudaMemcpyDeviceToHost, st));
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));
  return s;
}

void launch_optimizer_update(float* p, const float* g, float* m, float* v, size_t n, const OptimizerArgs& a, cudaStream_t st) {
  if (n == 0) return;
  update_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, st>>>(p, g, m, v, n, a);
  TERN_CUDA_LAUNCHED("update_kernel");
}

}  // namespace tern::cuda
