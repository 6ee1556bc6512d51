// LoRA adapters at inference (train/lora_adapter.h): y += scale * B(A(x)) on the float
// input x of an adapted linear. CPU reference: the CPU engine's LoRA path
// (backend/cpu/lora_apply.*).
//
// The linears that share an input form a group ({q,k,v}, {o}, {gate,up}, {down}); all
// adapters of a group's projections are stacked into one A [R][n] and one dense B
// [out][R] (zeros outside a row's own projection, the adapter scale folded in), so a
// group costs one lora_a launch (t = A . xn) and one B product, which decode fuses into
// the GEMV epilogue (GemvArgs::lora_*) and batched paths run as launch_lora_b.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/norm_quant.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kWarps = 8;

// Block (m, chunk): xn = RMSNorm(input_m) * normw into shared memory (the CPU's float
// ops), then warp w computes t[m][8 * chunk + w].
__global__ void __launch_bounds__(kThreads) lora_a_kernel(const LoraDev l, const float* __restrict__ x, int ldx, int is_gated,
                                                          int act_kind, const float* __restrict__ normw, float eps,
                                                          float* __restrict__ t) {
  extern __shared__ float xn[];
  __shared__ NormScratch sc;
  pdl_trigger();
  pdl_wait();
  const int m = blockIdx.x, n = l.n;
  const float* row = x + static_cast<int64_t>(m) * ldx;
  for (int i = threadIdx.x; i < n; i += kThreads) xn[i] = is_gated ? gated(row[i], row[i + n], act_kind) : row[i];
  __syncthreads();
  const float r = block_rms_inv<kThreads>(xn, n, eps, sc);
  for (int i = threadIdx.x; i < n; i += kThreads) xn[i] = normw[i] * (xn[i] * r);
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.y * kWarps + warp;
  if (j >= l.R) return;
  const float* a = l.A + static_cast<int64_t>(j) * n;
  float acc = 0.0f;
  for (int i = lane; i < n; i += 32) acc += a[i] * xn[i];
  acc = warp_sum(acc);
  if (lane == 0) t[static_cast<int64_t>(m) * l.R + j] = acc;
}

// out[m][o] += B[o] . t[m]: one thread per output.
__global__ void __launch_bounds__(kThreads) lora_b_kernel(const LoraDev l, const float* __restrict__ t, int M, float* out,
                                                          int ldo) {
  pdl_trigger();
  pdl_wait();
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(M) * l.out) return;
  const int m = static_cast<int>(idx / l.out), o = static_cast<int>(idx % l.out);
  out[static_cast<int64_t>(m) * ldo + o] = __fadd_rn(out[static_cast<int64_t>(m) * ldo + o],
                                                     lora_dot(l.B + static_cast<int64_t>(o) * l.R, t + static_cast<int64_t>(m) * l.R, l.R));
}

}  // namespace

void launch_lora_a(const LoraDev& l, const float* x, int ldx, bool gated, int act_kind, const float* normw, float eps, int M,
                   float* t, cudaStream_t st, bool pdl) {
  if (l.R == 0 || M <= 0) return;
  const size_t smem = static_cast<size_t>(l.n) * sizeof(float);
  if (smem > 48 * 1024) {
    TERN_CUDA_CHECK(cudaFuncSetAttribute(lora_a_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  launch_kernel("lora_a_kernel", lora_a_kernel, dim3(M, (l.R + kWarps - 1) / kWarps), dim3(kThreads), smem, st, pdl, l, x, ldx,
                gated ? 1 : 0, act_kind, normw, eps, t);
}

void launch_lora_b(const LoraDev& l, const float* t, int M, float* out, int ldo, cudaStream_t st, bool pdl) {
  if (l.R == 0 || M <= 0) return;
  const int64_t n = static_cast<int64_t>(M) * l.out;
  launch_kernel("lora_b_kernel", lora_b_kernel, dim3(static_cast<unsigned>((n + kThreads - 1) / kThreads)), dim3(kThreads), 0, st,
                pdl, l, t, M, out, ldo);
}

}  // namespace tern::cuda
