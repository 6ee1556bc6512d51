// Causal GQA attention forward of the training step in one kernel on TF32 tensor cores
// (--precision tf32; flash-attention style: the T x T scores never leave registers). The
// cuBLAS path (train_attention.cu) copies q, k, v head-major, writes the scores, runs a
// softmax pass over them and multiplies again: 10.6 ms a step on the H100 for the 2b-4t
// shape. CPU reference: train::attention_fwd.
//
// Block = (64 query positions, head, sequence), 4 warps of 16 query rows; q, k, v read in
// place from the rows [B*T][ld]. Per block of 64 keys (causal: up to the diagonal):
// S = Q K^T by mma.m16n8k8 (Q's fragments stay in registers), an online softmax (running
// row max and sum, exp2 with the scale folded in), O += P V with P taken straight from S's
// accumulators. Two index permutations keep the loads 16 bytes wide and need no shuffles:
// the head dimension of Q K^T is permuted (k slot t <-> column 4t, t + 4 <-> 4t + 1, as in
// lora_mma.cu), the keys of P V match S's accumulator layout (k slot t <-> key 2t, t + 4 <->
// 2t + 1), and output column n of n-tile i is NT n + i so a lane's V loads are contiguous.
// lse (optional): each row's log2-sum-exp, [n_heads][B*T], for flash_attention_bwd.cu.
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/mma_tf32.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kBlockQ = 64, kBlockK = 64;

template <int HD>
__global__ void __launch_bounds__(128) flash_fwd_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                        const float* __restrict__ v, int ld, float* __restrict__ out, int ldo, int T,
                                                        int G, float scale_log2, float* __restrict__ lse) {
  constexpr int NT = HD / 8;   // output n-tiles
  constexpr int QG = HD / 16;  // 16-column groups of the head dimension
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int r0 = qb * kBlockQ + warp * 16 + g, r1 = r0 + 8;  // this lane's two query positions
  const int64_t seq = static_cast<int64_t>(b) * T;
  const float* qp = q + seq * ld + static_cast<int64_t>(h) * HD;
  const float* kp = k + seq * ld + static_cast<int64_t>(h / G) * HD;
  const float* vp = v + seq * ld + static_cast<int64_t>(h / G) * HD;
  const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  uint32_t qa[QG][8];
#pragma unroll
  for (int s = 0; s < QG; ++s) {
    const float4 x0 = r0 < T ? load_float4(qp + static_cast<int64_t>(r0) * ld + 16 * s + 4 * t) : zero;
    const float4 x1 = r1 < T ? load_float4(qp + static_cast<int64_t>(r1) * ld + 16 * s + 4 * t) : zero;
    qa[s][0] = to_tf32(x0.x), qa[s][1] = to_tf32(x1.x), qa[s][2] = to_tf32(x0.y), qa[s][3] = to_tf32(x1.y);
    qa[s][4] = to_tf32(x0.z), qa[s][5] = to_tf32(x1.z), qa[s][6] = to_tf32(x0.w), qa[s][7] = to_tf32(x1.w);
  }
  float o[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // running max (log2 units) and partial sums

  const int last_key = min(T, (qb + 1) * kBlockQ);  // causal: no key beyond the block's last query
  for (int k0 = 0; k0 < last_key; k0 += kBlockK) {
    // S = Q K^T: n-tile j holds keys k0 + 8j .. + 7; lane (g, t) loads key k0 + 8j + g.
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      const int key = k0 + 8 * j + g;
      const float* kr = kp + static_cast<int64_t>(key) * ld + 4 * t;
#pragma unroll
      for (int sg = 0; sg < QG; ++sg) {
        const float4 kv = key < T ? load_float4(kr + 16 * sg) : zero;
        mma_tf32(s[j], qa[sg][0], qa[sg][1], qa[sg][2], qa[sg][3], to_tf32(kv.x), to_tf32(kv.y));
        mma_tf32(s[j], qa[sg][4], qa[sg][5], qa[sg][6], qa[sg][7], to_tf32(kv.z), to_tf32(kv.w));
      }
    }
    // s[j][e]: row e < 2 ? r0 : r1, key k0 + 8j + 2t + (e & 1). Scale (log2 units) and mask.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
        const float val = key <= row && key < T ? s[j][e] * scale_log2 : -INFINITY;
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
    // Rows with nothing unmasked yet (only positions past T) keep zeros, never NaN.
    const float c0 = n0 == -INFINITY ? 0.0f : exp2f(m0 - n0), c1 = n1 == -INFINITY ? 0.0f : exp2f(m1 - n1);
    const float z0 = n0 == -INFINITY ? 0.0f : n0, z1 = n1 == -INFINITY ? 0.0f : n1;
    m0 = n0, m1 = n1;
    l0 *= c0, l1 *= c1;
#pragma unroll
    for (int i = 0; i < NT; ++i) o[i][0] *= c0, o[i][1] *= c0, o[i][2] *= c1, o[i][3] *= c1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      s[j][0] = exp2f(s[j][0] - z0), s[j][1] = exp2f(s[j][1] - z0);
      s[j][2] = exp2f(s[j][2] - z1), s[j][3] = exp2f(s[j][3] - z1);
      l0 += s[j][0] + s[j][1], l1 += s[j][2] + s[j][3];
    }
    // O += P V: k-step j covers keys k0 + 8j .. + 7 (slot t <-> key 2t, t + 4 <-> 2t + 1).
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int ka = k0 + 8 * j + 2 * t, kb = ka + 1;
      const uint32_t a0 = to_tf32(s[j][0]), a1 = to_tf32(s[j][2]), a2 = to_tf32(s[j][1]), a3 = to_tf32(s[j][3]);
      const float* va = vp + static_cast<int64_t>(ka) * ld + NT * g;
      const float* vb = vp + static_cast<int64_t>(kb) * ld + NT * g;
#pragma unroll
      for (int c = 0; c < NT; c += 4) {
        const float4 x = ka < T ? load_float4(va + c) : zero, y = kb < T ? load_float4(vb + c) : zero;
        mma_tf32(o[c + 0], a0, a1, a2, a3, to_tf32(x.x), to_tf32(y.x));
        mma_tf32(o[c + 1], a0, a1, a2, a3, to_tf32(x.y), to_tf32(y.y));
        mma_tf32(o[c + 2], a0, a1, a2, a3, to_tf32(x.z), to_tf32(y.z));
        mma_tf32(o[c + 3], a0, a1, a2, a3, to_tf32(x.w), to_tf32(y.w));
      }
    }
  }
  l0 += __shfl_xor_sync(kFullMask, l0, 1), l0 += __shfl_xor_sync(kFullMask, l0, 2);
  l1 += __shfl_xor_sync(kFullMask, l1, 1), l1 += __shfl_xor_sync(kFullMask, l1, 2);
  const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  if (lse != nullptr && t == 0) {  // log2-sum-exp of the scaled scores, for the backward
    const int64_t at = static_cast<int64_t>(h) * gridDim.z * T + seq;  // head-major
    if (r0 < T) lse[at + r0] = m0 + log2f(l0);
    if (r1 < T) lse[at + r1] = m1 + log2f(l1);
  }
  // o[i][e]: row e < 2 ? r0 : r1, column NT (2t + (e & 1)) + i: a lane holds columns
  // 2t NT .. (2t + 2) NT - 1 of both rows.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = half == 0 ? r0 : r1;
    if (row >= T) continue;
    const float inv = half == 0 ? i0 : i1;
    float* op = out + (seq + row) * ldo + static_cast<int64_t>(h) * HD + 2 * t * NT;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
#pragma unroll
      for (int i = 0; i < NT; i += 4) {
        *reinterpret_cast<float4*>(op + e * NT + i) = make_float4(o[i][2 * half + e] * inv, o[i + 1][2 * half + e] * inv,
                                                                  o[i + 2][2 * half + e] * inv, o[i + 3][2 * half + e] * inv);
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool flash_attention_fwd(const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld, float* out, int ldo,
                         float* lse, cudaStream_t st) {
  if ((sh.hd != 64 && sh.hd != 128) || ld % 4 != 0 || ldo % 4 != 0 || !aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out) ||
      sh.nkv <= 0 || sh.nh % sh.nkv != 0) {
    return false;
  }
  if (sh.B <= 0 || sh.T <= 0) return true;
  const dim3 grid(static_cast<unsigned>((sh.T + kBlockQ - 1) / kBlockQ), static_cast<unsigned>(sh.nh), static_cast<unsigned>(sh.B));
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(sh.hd));
  const int G = sh.nh / sh.nkv;
  if (sh.hd == 128) {
    flash_fwd_kernel<128><<<grid, 128, 0, st>>>(q, k, v, ld, out, ldo, sh.T, G, scale_log2, lse);
  } else {
    flash_fwd_kernel<64><<<grid, 128, 0, st>>>(q, k, v, ld, out, ldo, sh.T, G, scale_log2, lse);
  }
  TERN_CUDA_LAUNCHED("flash_fwd_kernel");
  return true;
}

}  // namespace tern::cuda
