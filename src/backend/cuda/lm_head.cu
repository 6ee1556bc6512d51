// Token embedding lookup and the tied LM head over the embedding in its stored type
// (F16, BF16 or F32: never widened, the head is most of the bytes read per token).
// CPU references: FloatMatrix::row_to_f32 (model/model.cpp), cpu::rmsnorm and
// cpu::dot_f32 in CpuEngine::lm_head (backend/cpu/cpu_engine.cpp).
#include <cuda_fp16.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/norm_quant.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kWarps = 8;

template <int TYPE>
struct Elem;
template <>
struct Elem<0> {  // F32
  using T = float;
  static constexpr int kPerVec = 4;
  __device__ static float get(const T* p, int64_t i) { return p[i]; }
  __device__ static void unpack(const uint4 v, float* f) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
};
template <>
struct Elem<1> {  // F16
  using T = uint16_t;
  static constexpr int kPerVec = 8;
  __device__ static float h2f(uint32_t h) { return __half2float(__ushort_as_half(static_cast<unsigned short>(h))); }
  __device__ static float get(const T* p, int64_t i) { return h2f(p[i]); }
  __device__ static void unpack(const uint4 v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      f[2 * k] = h2f(w[k] & 0xffffu);
      f[2 * k + 1] = h2f(w[k] >> 16);
    }
  }
};
template <>
struct Elem<2> {  // BF16
  using T = uint16_t;
  static constexpr int kPerVec = 8;
  __device__ static float get(const T* p, int64_t i) { return __uint_as_float(static_cast<uint32_t>(p[i]) << 16); }
  __device__ static void unpack(const uint4 v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      f[2 * k] = __uint_as_float(w[k] << 16);
      f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  }
};

template <int TYPE>
__global__ void __launch_bounds__(kThreads) embed_kernel(const void* emb, int H, const int32_t* __restrict__ tokens,
                                                         float* __restrict__ x, unsigned long long* best) {
  using E = Elem<TYPE>;
  const int m = blockIdx.x;
  if (best != nullptr && threadIdx.x == 0) best[m] = 0;
  const typename E::T* row = static_cast<const typename E::T*>(emb) + static_cast<int64_t>(tokens[m]) * H;
  for (int c = threadIdx.x; c < H; c += kThreads) x[static_cast<int64_t>(m) * H + c] = E::get(row, c);
}

// Folds each warp's best key (lane 0's) into best[tt] with one atomic per block.
template <int T>
__device__ __forceinline__ void block_argmax_commit(const unsigned long long (&key)[T], int ntok, unsigned long long* best) {
  __shared__ unsigned long long sk[kWarps][T];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
#pragma unroll
    for (int tt = 0; tt < T; ++tt) sk[warp][tt] = key[tt];
  }
  __syncthreads();
  if (threadIdx.x < T && static_cast<int>(threadIdx.x) < ntok) {
    unsigned long long k = 0;
    for (int w = 0; w < kWarps; ++w) k = max(k, sk[w][threadIdx.x]);
    if (k != 0) atomicMax(best + threadIdx.x, k);
  }
}

// T tokens per launch; RMSNorm'ed inputs live in shared memory as float. Warps stride
// over vocabulary rows; each lane reads 16-byte pieces of the row.
template <int TYPE, int T>
__global__ void __launch_bounds__(kThreads) lm_head_kernel(const void* emb, int V, int H, const float* __restrict__ x,
                                                           int ntok, const float* __restrict__ normw, float eps,
                                                           float* __restrict__ logits, unsigned long long* best) {
  using E = Elem<TYPE>;
  extern __shared__ uint4 smem_dyn[];
  float* xn = reinterpret_cast<float*>(smem_dyn);  // T x H
  __shared__ NormScratch sc;
  pdl_trigger();
  pdl_wait();
  for (int tt = 0; tt < T; ++tt) {
    if (tt < ntok) {
      const float* xr = x + static_cast<int64_t>(tt) * H;
      const float r = block_rms_inv<kThreads>(xr, H, eps, sc);
      for (int i = threadIdx.x; i < H; i += kThreads) xn[tt * H + i] = normw[i] * (xr[i] * r);
    } else {
      for (int i = threadIdx.x; i < H; i += kThreads) xn[tt * H + i] = 0.0f;
    }
  }
  __syncthreads();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const typename E::T* base = static_cast<const typename E::T*>(emb);
  constexpr int PV = E::kPerVec;
  const bool vec = (H % PV) == 0;
  const int nvec = H / PV;
  unsigned long long key[T];
#pragma unroll
  for (int tt = 0; tt < T; ++tt) key[tt] = 0;
  for (int v = blockIdx.x * kWarps + warp; v < V; v += gridDim.x * kWarps) {
    const typename E::T* row = base + static_cast<int64_t>(v) * H;
    float acc[T];
#pragma unroll
    for (int tt = 0; tt < T; ++tt) acc[tt] = 0.0f;
    if (vec) {
      const uint4* rv = reinterpret_cast<const uint4*>(row);
#pragma unroll 4
      for (int c = lane; c < nvec; c += 32) {
        float f[PV];
        E::unpack(ld_stream(rv + c), f);
#pragma unroll
        for (int tt = 0; tt < T; ++tt) {
          const float* xv = xn + tt * H + c * PV;
#pragma unroll
          for (int k = 0; k < PV; ++k) acc[tt] += f[k] * xv[k];
        }
      }
    } else {
      for (int c = lane; c < H; c += 32) {
        const float f = E::get(row, c);
#pragma unroll
        for (int tt = 0; tt < T; ++tt) acc[tt] += f * xn[tt * H + c];
      }
    }
#pragma unroll
    for (int tt = 0; tt < T; ++tt) {
      const float s = warp_sum(acc[tt]);
      if (lane == 0 && tt < ntok) logits[static_cast<int64_t>(tt) * V + v] = s;
      key[tt] = max(key[tt], argmax_key(s, v));
    }
  }
  if (best != nullptr) block_argmax_commit<T>(key, ntok, best);
}

// The int8 head for one token (model/head_i8.h): every block normalizes and quantizes x
// into shared memory (like a ternary linear's input, cpu::quantize_row_i8), then each
// warp takes vocabulary rows, 16 int8 weights per lane per load, __dp4a.
__global__ void __launch_bounds__(kThreads) lm_head_i8_kernel(const int8_t* __restrict__ q, const float* __restrict__ scale, int V,
                                                              int H, const float* __restrict__ x, const float* __restrict__ normw,
                                                              float eps, float* __restrict__ logits, unsigned long long* best) {
  extern __shared__ uint4 smem_dyn[];
  int8_t* xq = reinterpret_cast<int8_t*>(smem_dyn);  // H rounded up to 16, zero padded
  __shared__ NormScratch sc;
  pdl_trigger();
  pdl_wait();
  const int Hp = (H + 15) & ~15;
  const float r = block_rms_inv<kThreads>(x, H, eps, sc);
  float amax = 0.0f;
  for (int i = threadIdx.x; i < H; i += kThreads) amax = fmaxf(amax, fabsf(normw[i] * (x[i] * r)));
  amax = block_reduce<kThreads>(amax, sc.f, MaxOp{});
  const float s = 127.0f / fmaxf(amax, 1e-5f);
  for (int i = threadIdx.x; i < Hp; i += kThreads) xq[i] = i < H ? static_cast<int8_t>(q8(normw[i] * (x[i] * r), s)) : 0;
  __syncthreads();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool vec = (H & 15) == 0;
  const int nvec = H / 16;
  unsigned long long key[1] = {0};
  for (int v = blockIdx.x * kWarps + warp; v < V; v += gridDim.x * kWarps) {
    const int8_t* row = q + static_cast<int64_t>(v) * H;
    int acc = 0;
    if (vec) {
      const uint4* rv = reinterpret_cast<const uint4*>(row);
      const uint4* xv = reinterpret_cast<const uint4*>(xq);
#pragma unroll 4
      for (int c = lane; c < nvec; c += 32) {
        const uint4 w = ld_stream(rv + c), a = xv[c];
        acc = __dp4a(static_cast<int>(w.x), static_cast<int>(a.x), acc);
        acc = __dp4a(static_cast<int>(w.y), static_cast<int>(a.y), acc);
        acc = __dp4a(static_cast<int>(w.z), static_cast<int>(a.z), acc);
        acc = __dp4a(static_cast<int>(w.w), static_cast<int>(a.w), acc);
      }
    } else {
      for (int c = lane; c < H; c += 32) acc += static_cast<int>(row[c]) * static_cast<int>(xq[c]);
    }
    acc = warp_sum(acc);
    const float y = __fmul_rn(__fdiv_rn(static_cast<float>(acc), s), scale[v]);  // head_i8_logit
    if (lane == 0) logits[v] = y;
    key[0] = max(key[0], argmax_key(y, v));
  }
  if (best != nullptr) block_argmax_commit<1>(key, 1, best);
}

template <int TYPE, int T>
void head_launch(const void* emb, int V, int H, const float* x, int ntok, const float* normw, float eps, float* logits,
                 cudaStream_t st, bool pdl, unsigned long long* best) {
  const size_t smem = sizeof(float) * T * H;
  if (smem > 48 * 1024) {
    TERN_CUDA_CHECK(cudaFuncSetAttribute(lm_head_kernel<TYPE, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const int blocks = std::max(1, std::min((V + kWarps - 1) / kWarps, sm_count() * 8));
  launch_kernel("lm_head_kernel", lm_head_kernel<TYPE, T>, dim3(blocks), dim3(kThreads), smem, st, pdl, emb, V, H, x, ntok,
                normw, eps, logits, best);
}

template <int TYPE>
void head_type(const void* emb, int V, int H, const float* x, int ntok, const float* normw, float eps, float* logits,
               cudaStream_t st, bool pdl, unsigned long long* best) {
  // Up to 4 tokens per pass over the head (prefill with all logits); the pass count is
  // ceil(ntok / 4).
  for (int m = 0; m < ntok;) {
    const int left = ntok - m;
    const float* xm = x + static_cast<int64_t>(m) * H;
    float* lm = logits + static_cast<int64_t>(m) * V;
    unsigned long long* bm = best != nullptr ? best + m : nullptr;
    if (left == 1) {
      head_launch<TYPE, 1>(emb, V, H, xm, 1, normw, eps, lm, st, pdl, bm);
      m += 1;
    } else if (left == 2) {
      head_launch<TYPE, 2>(emb, V, H, xm, 2, normw, eps, lm, st, pdl, bm);
      m += 2;
    } else {
      const int n = std::min(left, 4);
      head_launch<TYPE, 4>(emb, V, H, xm, n, normw, eps, lm, st, pdl, bm);
      m += n;
    }
  }
}

}  // namespace

void launch_embed(const void* emb, int type, int H, const int32_t* tokens, int M, float* x, cudaStream_t st,
                  unsigned long long* best) {
  if (M <= 0) return;
  switch (type) {
    case 0: embed_kernel<0><<<M, kThreads, 0, st>>>(emb, H, tokens, x, best); break;
    case 1: embed_kernel<1><<<M, kThreads, 0, st>>>(emb, H, tokens, x, best); break;
    case 2: embed_kernel<2><<<M, kThreads, 0, st>>>(emb, H, tokens, x, best); break;
    default: throw_error("embed: unknown float type");
  }
  TERN_CUDA_LAUNCHED("embed_kernel");
}

void launch_lm_head(const void* emb, int type, int V, int H, const float* x, int ntok, const float* normw, float eps,
                    float* logits, cudaStream_t st, bool pdl, unsigned long long* best) {
  if (ntok <= 0) return;
  switch (type) {
    case 0: return head_type<0>(emb, V, H, x, ntok, normw, eps, logits, st, pdl, best);
    case 1: return head_type<1>(emb, V, H, x, ntok, normw, eps, logits, st, pdl, best);
    case 2: return head_type<2>(emb, V, H, x, ntok, normw, eps, logits, st, pdl, best);
  }
  throw_error("lm_head: unknown float type");
}

void launch_lm_head_i8(const int8_t* q, const float* scale, int V, int H, const float* x, const float* normw, float eps,
                       float* logits, cudaStream_t st, bool pdl, unsigned long long* best) {
  const size_t smem = static_cast<size_t>((H + 15) & ~15);
  if (smem > 48 * 1024) {
    TERN_CUDA_CHECK(cudaFuncSetAttribute(lm_head_i8_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const int blocks = std::max(1, std::min((V + kWarps - 1) / kWarps, sm_count() * 8));
  launch_kernel("lm_head_i8_kernel", lm_head_i8_kernel, dim3(blocks), dim3(kThreads), smem, st, pdl, q, scale, V, H, x, normw,
                eps, logits, best);
}

}  // namespace tern::cuda
