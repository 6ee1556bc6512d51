// Prefill activation quantization: one block per token, RMSNorm + int8 absmax into
// the permuted layout the GEMM reads. CPU reference: cpu::rmsnorm +
// cpu::quantize_row_i8 (and cpu::gated_activation for the FFN down input).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/norm_quant.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) norm_quant_kernel(const float* __restrict__ x, int ldx, const float* __restrict__ w,
                                                              int n, float eps, uint32_t* __restrict__ act, int kwords,
                                                              float* __restrict__ s, int32_t* __restrict__ qsum) {
  __shared__ NormScratch sc;
  const int m = blockIdx.x;
  const float* row = x + static_cast<int64_t>(m) * ldx;
  block_norm_quant<kThreads>(PlainRow{row, n}, w, n, kwords, eps, act + static_cast<int64_t>(m) * kwords, s + m, qsum + m, sc);
}

__global__ void __launch_bounds__(kThreads)
    norm_quant_gated_kernel(const float* __restrict__ gu, int F, const float* __restrict__ w, float eps, int act_kind,
                            uint32_t* __restrict__ act, int kwords, float* __restrict__ s, int32_t* __restrict__ qsum) {
  __shared__ NormScratch sc;
  const int m = blockIdx.x;
  const float* g = gu + static_cast<int64_t>(m) * 2 * F;
  const float* u = g + F;
  block_norm_quant<kThreads>(GatedRow{g, u, F, act_kind}, w, F, kwords, eps, act + static_cast<int64_t>(m) * kwords, s + m,
                             qsum + m, sc);
}

}  // namespace

void launch_norm_quant(const float* x, int ldx, const float* w, int n, float eps, int M, uint32_t* act, int kwords,
                       float* s, int32_t* qsum, cudaStream_t st) {
  if (M <= 0) return;
  norm_quant_kernel<<<M, kThreads, 0, st>>>(x, ldx, w, n, eps, act, kwords, s, qsum);
  TERN_CUDA_LAUNCHED("norm_quant_kernel");
}

void launch_norm_quant_gated(const float* gu, int F, const float* w, float eps, int act_kind, int M, uint32_t* act,
                             int kwords, float* s, int32_t* qsum, cudaStream_t st) {
  if (M <= 0) return;
  norm_quant_gated_kernel<<<M, kThreads, 0, st>>>(gu, F, w, eps, act_kind, act, kwords, s, qsum);
  TERN_CUDA_LAUNCHED("norm_quant_gated_kernel");
}

}  // namespace tern::cuda
