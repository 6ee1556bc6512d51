// Causal GQA attention forward of the training step in one kernel on F16 tensor cores
// (--precision tf32: products of 10-bit mantissas, as TF32; flash-attention style: the
// T x T scores never leave registers). The cuBLAS path (train_attention.cu) copies q, k, v
// head-major, writes the scores, runs a softmax pass over them and multiplies again.
// CPU reference: train::attention_fwd.
//
// A prep kernel applies RoPE to q and k in place (when given the table) and finds the
// largest |q|, |k|, |v| (each operand is scaled into F16's range, flash_tiles.cuh). Block = (64 query positions, head, sequence), 4 warps of 16 query rows,
// whose Q fragments stay in registers; per step of 32 keys (causal: up to the block's last
// query), K and V are staged and converted to F16 tiles, S = Q K^T, an online softmax
// (running row max and sum, exp2 with the scales folded in), O += P V with P taken
// straight from S's accumulators.
// lse (optional): each row's log2-sum-exp, [n_heads][B*T], for flash_attention_bwd.cu.
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/flash_tiles.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

// Per (row m, head h) pair: with rope, q's head h and (h < nkv) k's head h rotated in place
// (train::rope_neox_fwd at position m % T; the rows are kept so for the backward); the
// largest |q|, |k|, |v| into amax[0..2].
__global__ void __launch_bounds__(kPrepThreads) flash_fwd_prep_kernel(float* __restrict__ q, float* __restrict__ k, const float* __restrict__ v,
                                                                      int ld, int M, int T, int nh, int nkv, int hd,
                                                                      const float2* __restrict__ rope, unsigned* __restrict__ amax) {
  __shared__ float red[kPrepThreads / 32];
  const int lane = threadIdx.x % 32, half = hd / 2;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kPrepThreads / 32);
  float mx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  auto rotate = [&](float* x, int pos, float& m) {  // one head of hd values
    for (int i = 4 * lane; i < half; i += 128) {
      float4 a = load_float4(x + i), b = load_float4(x + i + half);
      if (rope != nullptr) {
        const float2* cs = rope + static_cast<int64_t>(pos) * half + i;
        float* av = &a.x;
        float* bv = &b.x;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 c = cs[j];
          const float x0 = av[j], y0 = bv[j];
          av[j] = x0 * c.x - y0 * c.y, bv[j] = y0 * c.x + x0 * c.y;
        }
        *reinterpret_cast<float4*>(x + i) = a, *reinterpret_cast<float4*>(x + i + half) = b;
      }
      m = absmax4(b, absmax4(a, m));
    }
  };
  for (int64_t idx = blockIdx.x * (kPrepThreads / 32) + threadIdx.x / 32; idx < static_cast<int64_t>(M) * nh; idx += warps) {
    const int64_t m = idx / nh;
    const int h = static_cast<int>(idx % nh), pos = static_cast<int>(m % T);
    const int64_t at = m * ld + static_cast<int64_t>(h) * hd;
    rotate(q + at, pos, mx[0]);
    if (h < nkv) {
      rotate(k + at, pos, mx[1]);
      for (int i = 4 * lane; i < hd; i += 128) mx[2] = absmax4(load_float4(v + at + i), mx[2]);
    }
  }
  publish_amax(mx, red, amax);
}

template <int HD>
__global__ void __launch_bounds__(kThreads, 3)
    flash_fwd_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, int ld, float* __restrict__ out,
                     int ldo, int T, int nh, int nkv, float scale_log2, const float* __restrict__ amax, float* __restrict__ lse) {
  constexpr int TB = kStep * HD * 2;
  extern __shared__ uint4 smem[];
  char* Qs = reinterpret_cast<char*>(smem);  // read once, into registers
  char *Ks = Qs + 2 * TB, *Vs = Ks + TB;
  float* stage = reinterpret_cast<float*>(Vs + TB);  // [K | V][kStep][HD]
  const Scales sc = load_scales(amax);
  const QueryWalk<HD> walk(k, v, ld, T, nh, nkv, stage, Ks, Vs, sc);
  const int h = walk.h, q0 = walk.q0, steps = walk.steps;
  const int64_t seq = walk.seq;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3, wq = 16 * warp;
  walk.issue(0);
  cp_async_commit();
  load_f16_tile<HD, kBlockRows>(Qs, q + seq * ld + h * HD, ld, q0, T, sc.q);
  __syncthreads();
  uint32_t qf[HD / 16][4];
  row_fragments<HD>(qf, Qs, wq, lane);
  const float c_s = scale_log2 / (sc.q * sc.k);  // S' to log2 units of the scaled scores
  const int r0 = q0 + wq + g, r1 = r0 + 8;       // this lane's two query positions
  float o[HD / 8][4];
  zero(o);
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // running max (log2 units) and partial sums
  for (int step = 0; step < steps; ++step) {
    const int k0 = step * kStep;
    walk.advance(step);
    if (k0 > q0 + wq + 15) continue;  // these keys follow every query of the warp
    float s[4][4] = {};
    rows_product<HD>(s, nullptr, 0, qf, Ks, lane);
    // s[j][e]: row e < 2 ? r0 : r1, key k0 + 8j + 2t + (e & 1). Scale (log2 units) and mask.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
        const float val = key <= row && key < T ? s[j][e] * c_s : -INFINITY;
        s[j][e] = val;
        if (e < 2) {
          mx0 = fmaxf(mx0, val);
        } else {
          mx1 = fmaxf(mx1, val);
        }
      }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, 1)), mx0 = fmaxf(mx0, __shfl_xor_sync(kFullMask, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, 1)), mx1 = fmaxf(mx1, __shfl_xor_sync(kFullMask, mx1, 2));
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    // Rows with nothing unmasked yet keep zeros, never NaN.
    const float c0 = n0 == -INFINITY ? 0.0f : exp2f(m0 - n0), c1 = n1 == -INFINITY ? 0.0f : exp2f(m1 - n1);
    const float z0 = n0 == -INFINITY ? 0.0f : n0, z1 = n1 == -INFINITY ? 0.0f : n1;
    m0 = n0, m1 = n1;
    l0 *= c0, l1 *= c1;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] *= c0, o[i][1] *= c0, o[i][2] *= c1, o[i][3] *= c1;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      s[j][0] = exp2f(s[j][0] - z0), s[j][1] = exp2f(s[j][1] - z0);
      s[j][2] = exp2f(s[j][2] - z1), s[j][3] = exp2f(s[j][3] - z1);
      l0 += s[j][0] + s[j][1], l1 += s[j][2] + s[j][3];
    }
    acc_product<HD>(o, s, Vs, lane);  // O' += P V'
  }
  l0 += __shfl_xor_sync(kFullMask, l0, 1), l0 += __shfl_xor_sync(kFullMask, l0, 2);
  l1 += __shfl_xor_sync(kFullMask, l1, 1), l1 += __shfl_xor_sync(kFullMask, l1, 2);
  if (lse != nullptr && t == 0) {  // log2-sum-exp of the scaled scores, for the backward
    const int64_t at = static_cast<int64_t>(h) * (gridDim.x / nh) * T + seq;  // head-major
    if (r0 < T) lse[at + r0] = m0 + log2f(l0);
    if (r1 < T) lse[at + r1] = m1 + log2f(l1);
  }
  const float i0 = l0 > 0.0f ? 1.0f / (l0 * sc.v) : 0.0f, i1 = l1 > 0.0f ? 1.0f / (l1 * sc.v) : 0.0f;
  store_rows<HD>(o, i0, i1, out + seq * ldo + h * HD, ldo, r0, T, t);
}

template <int HD>
void launch_fwd(const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld, float* out, int ldo, const float* amax,
                float* lse, cudaStream_t st) {
  constexpr size_t smem = 4 * kStep * HD * 2 + 2 * kStep * HD * sizeof(float);
  static const bool once = [] {  // above the 48 KB default: opt in once
    TERN_CUDA_CHECK(cudaFuncSetAttribute(flash_fwd_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return true;
  }();
  (void)once;
  const dim3 grid(static_cast<unsigned>(sh.B * sh.nh), static_cast<unsigned>((sh.T + kBlockRows - 1) / kBlockRows));
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(HD));
  flash_fwd_kernel<HD><<<grid, kThreads, smem, st>>>(q, k, v, ld, out, ldo, sh.T, sh.nh, sh.nkv, scale_log2, amax, lse);
  TERN_CUDA_LAUNCHED("flash_fwd_kernel");
}

}  // namespace

bool flash_attention_fwd(const TrainAttnShape& sh, float* q, float* k, const float* v, int ld, float* out, int ldo, float* lse,
                         const float* rope, float* scratch, cudaStream_t st) {
  if ((sh.hd != 64 && sh.hd != 128) || ld % 4 != 0 || ldo % 4 != 0 || !aligned_to(q, 16) || !aligned_to(k, 16) || !aligned_to(v, 16) || !aligned_to(out, 16) ||
      sh.nkv <= 0 || sh.nh % sh.nkv != 0) {
    return false;
  }
  if (sh.B <= 0 || sh.T <= 0) return true;
  const int M = sh.B * sh.T;
  TERN_CUDA_CHECK(cudaMemsetAsync(scratch, 0, 4 * sizeof(float), st));
  flash_fwd_prep_kernel<<<prep_blocks(static_cast<int64_t>(M) * sh.nh), kPrepThreads, 0, st>>>(
      q, k, v, ld, M, sh.T, sh.nh, sh.nkv, sh.hd, reinterpret_cast<const float2*>(rope), reinterpret_cast<unsigned*>(scratch));
  TERN_CUDA_LAUNCHED("flash_fwd_prep_kernel");
  if (sh.hd == 128) {
    launch_fwd<128>(sh, q, k, v, ld, out, ldo, scratch, lse, st);
  } else {
    launch_fwd<64>(sh, q, k, v, ld, out, ldo, scratch, lse, st);
  }
  return true;
}

}  // namespace tern::cuda
