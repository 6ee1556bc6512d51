// Device-side helpers shared by the CUDA kernels: warp/block reductions, the int8
// tensor-core instruction, cp.async and streaming loads.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tern::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Reduces v over the NT threads of the block; every thread gets the result. The
// order is fixed (xor tree in each warp, then warps in order), so it is deterministic.
// `sh` holds at least NT/32 values. Ends with a barrier so `sh` can be reused.
template <int NT, class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T* sh, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = sh[0];
#pragma unroll
  for (int i = 1; i < NT / 32; ++i) r = op(r, sh[i]);
  __syncthreads();
  return r;
}

struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ __forceinline__ float4 load_float4(const float* p) { return *reinterpret_cast<const float4*>(p); }
// Four consecutive F16 values (8-byte aligned) as floats.
__device__ __forceinline__ float4 load_half4(const __half* p) {
  const uint2 h = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&h.x)), b = __half22float2(*reinterpret_cast<const __half2*>(&h.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// Weights are read once per token and the model is far larger than L2: stream them.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) { return __ldcs(p); }

// D[16x8] += A[16x32] * B[32x8], int8 in, int32 accumulate (sm_80+ mma.sync).
__device__ __forceinline__ void mma_s8_16832(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16-byte async copy global -> shared; src_bytes = 0 writes zeros (out-of-range rows).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
// 4-byte async copy global -> shared (src_bytes 0: zero).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A block's tile of rows x COLS columns of NA arrays of 4-byte elements streamed through a
// shared-memory ring of 3 stages x STEP rows by cp.async, 16 bytes at a time (rows 16-byte
// aligned, widths a multiple of 4). For kernels whose thread owns one column and keeps that
// column's LoRA matrix in registers: too few registers are left for loads in flight (a
// register pipeline of 8 rows ran at 0.4-1.4 TB/s in split_gemm's LoRA combine), while
// bytes in flight through cp.async cost none.
template <int NA, int STEP, int COLS>
struct RowRing {
  static constexpr int kStages = 3;
  static constexpr int kFloats = kStages * NA * STEP * COLS;
  float* buf;  // [stage][array][row][column], kFloats of shared memory
  const void* src[NA];
  int64_t ld[NA];  // row strides, in elements
  int rows, cols;  // valid rows from src and columns (past them: zeros)
  // Copies rows step * STEP .. into stage step % 3 (the caller commits the group).
  __device__ __forceinline__ void issue(int step) const {
    float* st = buf + (step % kStages) * NA * STEP * COLS;
    constexpr int per_row = COLS / 4;
    const int r0 = step * STEP;
    for (int ch = threadIdx.x; ch < NA * STEP * per_row; ch += blockDim.x) {
      const int a = ch / (STEP * per_row), rr = ch / per_row % STEP, c = ch % per_row * 4;
      const bool ok = r0 + rr < rows && c < cols;
      const void* base = src[0];
      int64_t stride = ld[0];
#pragma unroll
      for (int i = 1; i < NA; ++i) {  // no dynamic index into src / ld (that puts them on the stack)
        if (a == i) base = src[i], stride = ld[i];
      }
      const char* g = static_cast<const char*>(base) + (static_cast<int64_t>(ok ? r0 + rr : 0) * stride + (ok ? c : 0)) * 4;
      cp_async16(st + (a * STEP + rr) * COLS + c, g, ok ? 16 : 0);
    }
  }
  __device__ __forceinline__ const float* at(int step, int a, int rr) const { return buf + ((step % kStages) * NA + a) * STEP * COLS + rr * COLS; }
};
// A ring whose every warp reads every stage (lora_mma.cu's cols kernel, lora_dy.cu): the
// first two steps issued up front; then per step, wait until stage `step` has landed,
// barrier (so every warp is also done with step - 1's stage), and refill that stage with
// step + 2 (issue(s) fills stage s % 3 and commits).
template <class Issue>
__device__ __forceinline__ void ring_start(int steps, Issue issue) {
  if (steps > 0) issue(0);
  if (steps > 1) issue(1);
}
template <class Issue>
__device__ __forceinline__ void ring_wait_refill(int step, int steps, Issue issue) {
  if (step + 1 < steps) {
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
  if (step + 2 < steps) issue(step + 2);
}
// The ring's steady state: before working on stage `step` of `steps`, issue step + 2 (via
// issue(step), which commits) and wait until `step` has landed for the whole block.
template <class Issue>
__device__ __forceinline__ void ring_advance(int step, int steps, Issue issue) {
  if (step + 2 < steps) {
    issue(step + 2);
    cp_async_wait<2>();
  } else if (step + 1 < steps) {
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// Programmatic dependent launch (sm_90): let the next kernel in the stream start its
// independent prologue (weight prefetch) now; wait until the previous kernel's writes
// are visible before touching its outputs. Both are no-ops for a normal launch.
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

// Gated FFN activation, CPU reference: cpu::gated_activation (backend/cpu/kernels.cpp).
// act: 0 relu^2, 1 silu, 2 gelu (erf).
__device__ __forceinline__ float gated(float g, float u, int act) {
  if (act == 0) {
    const float r = fmaxf(g, 0.0f);
    return r * r * u;
  }
  if (act == 1) return g / (1.0f + expf(-g)) * u;
  return 0.5f * g * (1.0f + erff(g * 0.70710678f)) * u;
}

// split_gemm's row scale: the power of two 2^e that puts a row's largest magnitude amax in
// [1, 2) (e = 0 for a zero row). Its producers (split_rows_kernel, the loss, the RMSNorm and
// sub-norm backwards for lora_dy.cu) store rscale = 2^-e.
__device__ __forceinline__ int row_split_exp(float amax) { return amax > 0.0f ? -ilogbf(amax) : 0; }
__device__ __forceinline__ float row_rscale(float amax) { return ldexpf(1.0f, -row_split_exp(amax)); }

// split_rows_kernel's one-term F16 value f16(ldexpf(v, e)) for a row of scale rscale = 2^-e,
// as v 2^e1 2^e2 (e1 + e2 = e, both factors normal floats): the same F16 wherever the value
// reaches F16's range (the products are exact there), without ldexpf's per-element range
// handling.
struct SplitPow2 {
  float p1, p2;
};
__device__ __forceinline__ SplitPow2 split_pow2(float rscale) {  // a normal or subnormal power of two
  const int bits = __float_as_int(rscale), be = bits >> 23;
  const int e = be != 0 ? 127 - be : 149 - (31 - __clz(bits)), e1 = e >> 1;
  return SplitPow2{__int_as_float((e1 + 127) << 23), __int_as_float((e - e1 + 127) << 23)};
}
__device__ __forceinline__ __half split_half(float v, SplitPow2 e) { return __float2half_rn(__fmul_rn(__fmul_rn(v, e.p1), e.p2)); }

// Stores v as 16-bit terms whose sum is v to ~22 bits (tensor-core GEMMs on split inputs,
// head_gemm.cu / head_loss.cu): TYPE 1 = 2 F16 terms, TYPE 2 = 3 BF16 terms, term t at
// out[at + t * stride] (out of __half or __nv_bfloat16).
template <int TYPE>
__device__ __forceinline__ void store_split(void* out, int64_t at, int64_t stride, float v) {
  if constexpr (TYPE == 1) {
    __half* o = static_cast<__half*>(out);
    const __half hi = __float2half_rn(v);
    o[at] = hi;
    o[at + stride] = __float2half_rn(v - __half2float(hi));
  } else {
    __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out);
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    const float r1 = v - __bfloat162float(hi);
    const __nv_bfloat16 mid = __float2bfloat16_rn(r1);
    o[at] = hi;
    o[at + stride] = mid;
    o[at + 2 * stride] = __float2bfloat16_rn(r1 - __bfloat162float(mid));
  }
}

// v as TERMS 16-bit terms (the first TERMS of store_split's; fewer in tf32 mode), term t at out[at + t * stride].
template <int TYPE, int TERMS>
__device__ __forceinline__ void store_terms(void* out, int64_t at, int64_t stride, float v) {
  if constexpr (TERMS == (TYPE == 1 ? 2 : 3)) {
    store_split<TYPE>(out, at, stride, v);
  } else if constexpr (TYPE == 1) {
    static_cast<__half*>(out)[at] = __float2half_rn(v);
  } else {
    __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out);
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    o[at] = hi;
    o[at + stride] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
}

// train::dropout_mask(seed) on the device: splitmix64 output k (0-based) of the stream
// seeded with `seed`; element i is kept when its 16-bit lane (i % 4) of output i / 4 is
// >= threshold (train::dropout_threshold(p) = ceil(p * 65536)).
__device__ __forceinline__ uint64_t dropout_word(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ bool dropout_keep(uint64_t seed, uint64_t i, uint64_t threshold) {
  return ((dropout_word(seed, i >> 2) >> (16 * (i & 3))) & 0xffffu) >= threshold;
}
// Keep bits of elements i..i+N-1 (bit j: element i + j), one hash when they share a word.
template <int N>
__device__ __forceinline__ unsigned dropout_bits(uint64_t seed, uint64_t i, uint64_t threshold) {
  unsigned b = 0;
  if ((i & 3) + N <= 4) {
    const uint64_t z = dropout_word(seed, i >> 2) >> (16 * (i & 3));
#pragma unroll
    for (int j = 0; j < N; ++j) b |= ((z >> (16 * j)) & 0xffffu) >= threshold ? 1u << j : 0u;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) b |= dropout_keep(seed, i + j, threshold) ? 1u << j : 0u;
  }
  return b;
}

// One LoRA output: sum_j b[j] * t[j] (a row of the stacked B times the A outputs).
__device__ __forceinline__ float lora_dot(const float* __restrict__ b, const float* __restrict__ t, int R) {
  float s = 0.0f;
  for (int j = 0; j < R; ++j) s += b[j] * t[j];
  return s;
}

}  // namespace tern::cuda
