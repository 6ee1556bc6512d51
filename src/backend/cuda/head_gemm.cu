// The LM head for M > 1 rows (batched decode, prefill with every position's logits) on
// cuBLAS tensor cores; see HeadGemm in kernels.h. CPU references: CpuEngine::lm_head
// (cpu::rmsnorm, cpu::dot_f32) and, for the int8 head, model/head_i8.h.
//
// Why split terms: a GEMM multiplies 16-bit inputs, and rounding the normed input to
// F16 would move logits by ~1e-4 relative and could flip near-tied argmaxes between a
// sequence decoded alone (GEMV head, float inputs) and the same sequence in a batch.
// x = hi + lo with hi = f16(x), lo = f16(x - hi) keeps ~22 bits; every product of an
// F16 weight with an F16 term is exact in the float32 accumulator. All terms are extra
// GEMM columns, so the head (most of the bytes of a step) is still read once.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/norm_quant.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_error(std::string("cuBLAS ") + what + " failed: " + cublasGetStatusString(s));
}

// fast (the training loss with --precision tf32): one F16 term (11 bits, as TF32) or two
// BF16 terms (16 bits).
int terms_of(const HeadWeights& w, bool fast) {
  if (w.q8 != nullptr) return 1;
  return (w.type == 1 ? 2 : w.type == 2 ? 3 : 1) - (fast && w.type != 0 ? 1 : 0);
}

size_t term_bytes(const HeadWeights& w) {
  if (w.q8 != nullptr) return 1;
  return w.type == 0 ? 4 : 2;
}

// One block per row m: xn = RMSNorm(x_m) * normw (the CPU's float ops), then the split
// terms (term t of row m at row t * M + m of the GEMM input) or the int8 quantization.
template <int MODE>  // 0 F32, 1 F16 x2, 2 BF16 x3, 3 int8, 4 F16 x1, 5 BF16 x2
__global__ void __launch_bounds__(kThreads) head_prep_kernel(const float* __restrict__ x, int H, int M,
                                                             const float* __restrict__ normw, float eps, void* out,
                                                             float* xscale) {
  __shared__ NormScratch sc;
  const int m = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(m) * H;
  const float r = block_rms_inv<kThreads>(xr, H, eps, sc);
  const int64_t stride = static_cast<int64_t>(M) * H;  // between terms
  if constexpr (MODE == 3) {
    float amax = 0.0f;
    for (int i = threadIdx.x; i < H; i += kThreads) amax = fmaxf(amax, fabsf(normw[i] * (xr[i] * r)));
    amax = block_reduce<kThreads>(amax, sc.f, MaxOp{});
    const float s = 127.0f / fmaxf(amax, 1e-5f);
    int8_t* o = static_cast<int8_t*>(out) + static_cast<int64_t>(m) * H;
    for (int i = threadIdx.x; i < H; i += kThreads) o[i] = static_cast<int8_t>(q8(normw[i] * (xr[i] * r), s));
    if (threadIdx.x == 0) xscale[m] = s;
  } else {
    for (int i = threadIdx.x; i < H; i += kThreads) {
      const float v = normw[i] * (xr[i] * r);
      const int64_t at = static_cast<int64_t>(m) * H + i;
      if constexpr (MODE == 0) {
        static_cast<float*>(out)[at] = v;
      } else if constexpr (MODE == 4) {
        static_cast<__half*>(out)[at] = __float2half_rn(v);
      } else if constexpr (MODE == 5) {
        __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out);
        const __nv_bfloat16 hi = __float2bfloat16_rn(v);
        o[at] = hi;
        o[at + stride] = __float2bfloat16_rn(v - __bfloat162float(hi));
      } else {
        store_split<MODE>(out, at, stride, v);
      }
    }
  }
}

// logits[m][v] = the sum of the terms' GEMM outputs (or the int8 epilogue) and the row's
// argmax (atomicMax of argmax_key into best[m], zeroed by run()). Grid (V chunks, M):
// each thread takes kPer logits and loads all of their inputs before its first store
// (loads and stores through possibly-aliasing pointers would otherwise serialize).
constexpr int kPer = 8;
template <int TERMS, bool I8>
__global__ void __launch_bounds__(kThreads) head_combine_kernel(const void* __restrict__ acc, int V, int M,
                                                                const float* __restrict__ xscale,
                                                                const float* __restrict__ scale8, float* __restrict__ logits,
                                                                unsigned long long* best) {
  __shared__ unsigned long long sk[kThreads / 32];
  const int m = blockIdx.y;
  const int64_t stride = static_cast<int64_t>(M) * V;
  const int v0 = blockIdx.x * kThreads * kPer + threadIdx.x;
  float y[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int v = v0 + j * kThreads;
    const int64_t at = static_cast<int64_t>(m) * V + v;
    y[j] = 0.0f;
    if (v >= V) continue;
    if constexpr (I8) {
      y[j] = __fmul_rn(__fdiv_rn(static_cast<float>(static_cast<const int32_t*>(acc)[at]), xscale[m]), scale8[v]);
    } else {
      const float* a = static_cast<const float*>(acc);
      y[j] = a[at];
      if constexpr (TERMS > 1) y[j] = __fadd_rn(y[j], a[at + stride]);
      if constexpr (TERMS > 2) y[j] = __fadd_rn(y[j], a[at + 2 * stride]);
    }
  }
  unsigned long long key = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int v = v0 + j * kThreads;
    if (v >= V) continue;
    logits[static_cast<int64_t>(m) * V + v] = y[j];
    key = max(key, argmax_key(y[j], v));
  }
  if (best == nullptr) return;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) key = max(key, __shfl_xor_sync(kFullMask, key, o));
  if ((threadIdx.x & 31) == 0) sk[threadIdx.x >> 5] = key;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) key = max(key, sk[w]);
    atomicMax(best + m, key);
  }
}

}  // namespace

HeadGemm::HeadGemm(const HeadWeights& w, cudaStream_t st, int max_rows, bool fast, bool argmax)
    : w_(w), max_rows_(std::max(1, max_rows)), terms_(terms_of(w, fast)) {
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "create");
  handle_ = h;
  // A fixed workspace: cuBLAS must not allocate while a CUDA graph is being captured.
  constexpr size_t kWorkspace = 32u << 20;
  TERN_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspace));
  check_cublas(cublasSetWorkspace(h, workspace_, kWorkspace), "set workspace");
  check_cublas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "set math mode");  // no TF32 for F32 heads
  check_cublas(cublasSetStream(h, st), "set stream");
  const int terms = terms_;
  TERN_CUDA_CHECK(cudaMalloc(&xs_, static_cast<size_t>(terms) * max_rows_ * w.H * term_bytes(w)));
  TERN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&xscale_), max_rows_ * sizeof(float)));
  if (argmax || terms > 1 || w.q8 != nullptr) TERN_CUDA_CHECK(cudaMalloc(&acc_, static_cast<size_t>(terms) * max_rows_ * w.V * 4));
}

HeadGemm::~HeadGemm() {
  if (handle_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(handle_));
  cudaFree(workspace_);
  cudaFree(xs_);
  cudaFree(xscale_);
  cudaFree(acc_);
}

void HeadGemm::run(const float* x, int M, const float* normw, float eps, float* logits, unsigned long long* best,
                   cudaStream_t st) {
  cublasHandle_t h = static_cast<cublasHandle_t>(handle_);
  check_cublas(cublasSetStream(h, st), "set stream");
  const int V = w_.V, H = w_.H, terms = terms_;
  const bool i8 = w_.q8 != nullptr;
  for (int m0 = 0; m0 < M; m0 += max_rows_) {
    const int n = std::min(max_rows_, M - m0);
    const float* xm = x + static_cast<int64_t>(m0) * H;
    float* lm = logits + static_cast<int64_t>(m0) * V;
    unsigned long long* bm = best != nullptr ? best + m0 : nullptr;
    const int mode = i8 ? 3 : terms < terms_of(w_, false) ? w_.type + 3 : w_.type;
    switch (mode) {
      case 0: head_prep_kernel<0><<<n, kThreads, 0, st>>>(xm, H, n, normw, eps, xs_, xscale_); break;
      case 1: head_prep_kernel<1><<<n, kThreads, 0, st>>>(xm, H, n, normw, eps, xs_, xscale_); break;
      case 2: head_prep_kernel<2><<<n, kThreads, 0, st>>>(xm, H, n, normw, eps, xs_, xscale_); break;
      case 4: head_prep_kernel<4><<<n, kThreads, 0, st>>>(xm, H, n, normw, eps, xs_, xscale_); break;
      case 5: head_prep_kernel<5><<<n, kThreads, 0, st>>>(xm, H, n, normw, eps, xs_, xscale_); break;
      default: head_prep_kernel<3><<<n, kThreads, 0, st>>>(xm, H, n, normw, eps, xs_, xscale_); break;
    }
    TERN_CUDA_LAUNCHED("head_prep_kernel");
    // Row-major emb [V][H] is column-major H x V: logits^T (V x cols) = emb^T-op . xs (H x cols).
    const int cols = terms * n;
    if (i8) {
      const int32_t one = 1, zero = 0;
      check_cublas(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, V, cols, H, &one, w_.q8, CUDA_R_8I, H, xs_, CUDA_R_8I, H, &zero,
                                acc_, CUDA_R_32I, V, CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT),
                   "int8 head GEMM");
    } else {
      const float one = 1.0f, zero = 0.0f;
      const cudaDataType t = w_.type == 0 ? CUDA_R_32F : w_.type == 1 ? CUDA_R_16F : CUDA_R_16BF;
      // One term and no argmax: the GEMM writes the logits themselves (no combine pass).
      void* dst = terms == 1 && bm == nullptr ? static_cast<void*>(lm) : acc_;
      if (dst == nullptr) throw_error("HeadGemm: an argmax was asked of a head built without one");
      check_cublas(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, V, cols, H, &one, w_.emb, t, H, xs_, t, H, &zero, dst, CUDA_R_32F, V,
                                w_.type == 0 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "head GEMM");
      if (dst == lm) continue;
    }
    const dim3 cgrid((V + kThreads * kPer - 1) / (kThreads * kPer), n);
    if (bm != nullptr) TERN_CUDA_CHECK(cudaMemsetAsync(bm, 0, n * sizeof(unsigned long long), st));
    if (i8) {
      head_combine_kernel<1, true><<<cgrid, kThreads, 0, st>>>(acc_, V, n, xscale_, w_.scale8, lm, bm);
    } else if (terms == 1) {
      head_combine_kernel<1, false><<<cgrid, kThreads, 0, st>>>(acc_, V, n, nullptr, nullptr, lm, bm);
    } else if (terms == 2) {
      head_combine_kernel<2, false><<<cgrid, kThreads, 0, st>>>(acc_, V, n, nullptr, nullptr, lm, bm);
    } else {
      head_combine_kernel<3, false><<<cgrid, kThreads, 0, st>>>(acc_, V, n, nullptr, nullptr, lm, bm);
    }
    TERN_CUDA_LAUNCHED("head_combine_kernel");
  }
}

}  // namespace tern::cuda
