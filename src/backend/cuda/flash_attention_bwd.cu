// Causal GQA attention backward of the training step on F16 tensor cores (--precision
// tf32: products of 10-bit mantissas, as TF32; flash-attention style: no T x T matrix in
// memory). The cuBLAS path (train_attention.cu) copies q, k, v, dO head-major, recomputes
// and writes P, writes dP and dS and multiplies four times: 24 ms a step on the H100 for
// the 2b-4t shape, most of it traffic of the score matrices. CPU reference:
// train::attention_bwd.
//
// With P = exp2(S log2(e) / sqrt(hd) - lse2) recomputed from the forward's log-sum-exp
// (flash_attention.cu writes it, in log2 units) and D = rowsum(dO o O):
//   dS = P o (dP - D), dP = dO V^T, dV = P^T dO, dK = dS^T Q / sqrt(hd), dQ = dS K / sqrt(hd).
// Three kernels, each owning what it writes (deterministic, no atomics on results):
// - prep: D per row and head, and the largest |q|, |k|, |v|, |dO| of the call;
// - kv: a block owns 64 keys of one KV head and walks the queries after them (all G query
//   heads of the group: dK, dV are their sums), 32 at a time; each warp keeps dK and dV of
//   16 keys in registers and computes S^T and dP^T for them;
// - q: a block owns 64 queries of one head and walks the keys up to them, 32 at a time.
// Operands are scaled into F16's range as flash_tiles.cuh describes (gradients are often
// far below F16's normal range); with q, k, v, dO in [-8, 8], |dP| <= 64 hd and
// |dS| <= 128 hd stay finite in F16, and every result is scaled back by powers of two.
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/flash_tiles.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

// D[h][m] = dout . out of row m, head h (head-major, as lse; a warp per pair) and the
// largest |q|, |k|, |v|, |dO| into amax[0..3].
__global__ void __launch_bounds__(kPrepThreads) flash_bwd_prep_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                                                      const float* __restrict__ v, int ld, const float* __restrict__ out,
                                                                      const float* __restrict__ dout, int ldo, int M, int nh, int nkv, int hd,
                                                                      float* __restrict__ D, unsigned* __restrict__ amax) {
  __shared__ float red[kPrepThreads / 32];
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kPrepThreads / 32);
  float mx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t idx = blockIdx.x * (kPrepThreads / 32) + threadIdx.x / 32; idx < static_cast<int64_t>(M) * nh; idx += warps) {
    const int64_t m = idx / nh;
    const int h = static_cast<int>(idx % nh);
    const int64_t aq = m * ld + static_cast<int64_t>(h) * hd, at = m * ldo + static_cast<int64_t>(h) * hd;
    float s = 0.0f;
    for (int i = 4 * lane; i < hd; i += 128) {
      mx[0] = absmax4(load_float4(q + aq + i), mx[0]);
      if (h < nkv) mx[1] = absmax4(load_float4(k + aq + i), mx[1]), mx[2] = absmax4(load_float4(v + aq + i), mx[2]);
      const float4 a = load_float4(out + at + i), b = load_float4(dout + at + i);
      s += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      mx[3] = absmax4(b, mx[3]);
    }
    s = warp_sum(s);
    if (lane == 0) D[h * static_cast<int64_t>(M) + m] = s;
  }
  publish_amax(mx, red, amax);
}

template <int HD>
__global__ void __launch_bounds__(kThreads, 2)
    flash_bwd_kv_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, int ld,
                        const float* __restrict__ dout, int ldo, const float* __restrict__ lse, const float* __restrict__ D,
                        const float* __restrict__ amax, int nh, int nkv, float* __restrict__ dk, float* __restrict__ dv, int ldd, int T,
                        float scale, float scale_log2, const float2* __restrict__ rope) {
  constexpr int TB = kStep * HD * 2;  // bytes of a step's F16 tile
  extern __shared__ uint4 smem[];
  char* Ks = reinterpret_cast<char*>(smem);
  char *Vs = Ks + 2 * TB, *Qs = Vs + 2 * TB, *dOs = Qs + TB;
  float* stage = reinterpret_cast<float*>(dOs + TB);  // [Q | dO][kStep][HD]
  float* lstage = stage + 2 * kStep * HD;             // the next step's lse and D
  float* lr = lstage + 2 * kStep;                     // this step's
  const Scales sc = load_scales(amax);
  const int b = blockIdx.x / nkv, kvh = blockIdx.x % nkv, G = nh / nkv, k0 = blockIdx.y * kBlockRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3, wk = 16 * warp;
  const int64_t seq = static_cast<int64_t>(b) * T, M = static_cast<int64_t>(gridDim.x / nkv) * T;
  // Steps: (head h of the group, kStep queries from q0), causal: no query before the first key.
  const int per_head = (T - k0 + kStep - 1) / kStep, steps = G * per_head;
  auto issue = [&](int step) {
    const int h = kvh * G + step / per_head, q0 = k0 + (step % per_head) * kStep;
    stage_rows<HD, kStep>(stage, q + seq * ld + h * HD, ld, q0, T);
    stage_rows<HD, kStep>(stage + kStep * HD, dout + seq * ldo + h * HD, ldo, q0, T);
    if (threadIdx.x < 2 * kStep) {
      const int i = threadIdx.x % kStep;
      const float* src = (threadIdx.x < kStep ? lse : D) + h * M + seq + q0;
      cp_async4(lstage + threadIdx.x, q0 + i < T ? src + i : src, q0 + i < T ? 4 : 0);
    }
  };
  issue(0);
  cp_async_commit();
  load_f16_tile<HD, kBlockRows>(Ks, k + seq * ld + kvh * HD, ld, k0, T, sc.k);
  load_f16_tile<HD, kBlockRows>(Vs, v + seq * ld + kvh * HD, ld, k0, T, sc.v);
  const float c_s = scale_log2 / (sc.q * sc.k), c_d = sc.d * sc.v;  // S' and dP' to S and dP'
  float dka[HD / 8][4], dva[HD / 8][4];
  zero(dka), zero(dva);
  for (int step = 0; step < steps; ++step) {
    const int q0 = k0 + (step % per_head) * kStep;
    cp_async_wait<0>();
    __syncthreads();  // the step's rows have landed; the last step's products are done
    stage_to_f16<HD, kStep>(Qs, stage, sc.q);
    stage_to_f16<HD, kStep>(dOs, stage + kStep * HD, sc.d);
    if (threadIdx.x < 2 * kStep) lr[threadIdx.x] = threadIdx.x < kStep ? lstage[threadIdx.x] : lstage[threadIdx.x] * c_d;
    __syncthreads();
    if (step + 1 < steps) issue(step + 1);
    cp_async_commit();
    if (q0 + kStep > k0 + wk) {  // else every query of the step precedes the warp's keys
      float s[4][4] = {}, dp[4][4] = {};
      rows_product<HD>(s, Ks, wk, nullptr, Qs, lane);    // S'^T: keys x queries
      rows_product<HD>(dp, Vs, wk, nullptr, dOs, lane);  // dP'^T
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + wk + g + 8 * (e >> 1), qi = 8 * j + 2 * t + (e & 1), qp = q0 + qi;
          const float p = key <= qp && qp < T ? exp2f(s[j][e] * c_s - lr[qi]) : 0.0f;
          s[j][e] = p;
          dp[j][e] = p * (dp[j][e] - lr[kStep + qi]);  // dS'^T
        }
      }
      acc_product<HD>(dva, s, dOs, lane);  // dV' += P^T dO'
      acc_product<HD>(dka, dp, Qs, lane);  // dK' += dS'^T Q'
    }
  }
  store_rows<HD>(dka, scale / (c_d * sc.q), scale / (c_d * sc.q), dk + seq * ldd + kvh * HD, ldd, k0 + wk + g, T, t, rope);
  store_rows<HD>(dva, 1.0f / sc.d, 1.0f / sc.d, dv + seq * ldd + kvh * HD, ldd, k0 + wk + g, T, t);
}

template <int HD>
__global__ void __launch_bounds__(kThreads, 2)
    flash_bwd_q_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, int ld,
                       const float* __restrict__ dout, int ldo, const float* __restrict__ lse, const float* __restrict__ D,
                       const float* __restrict__ amax, int nh, int nkv, float* __restrict__ dq, int ldd, int T, float scale, float scale_log2,
                       const float2* __restrict__ rope) {
  constexpr int TB = kStep * HD * 2;
  extern __shared__ uint4 smem[];
  char* Qs = reinterpret_cast<char*>(smem);
  char *dOs = Qs + 2 * TB, *Ks = dOs + 2 * TB, *Vs = Ks + TB;
  float* stage = reinterpret_cast<float*>(Vs + TB);  // [K | V][kStep][HD]
  const Scales sc = load_scales(amax);
  const QueryWalk<HD> walk(k, v, ld, T, nh, nkv, stage, Ks, Vs, sc);
  const int h = walk.h, q0 = walk.q0, steps = walk.steps;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3, wq = 16 * warp;
  const int64_t seq = walk.seq, M = static_cast<int64_t>(gridDim.x / nh) * T;
  walk.issue(0);
  cp_async_commit();
  load_f16_tile<HD, kBlockRows>(Qs, q + seq * ld + h * HD, ld, q0, T, sc.q);
  load_f16_tile<HD, kBlockRows>(dOs, dout + seq * ldo + h * HD, ldo, q0, T, sc.d);
  const float c_s = scale_log2 / (sc.q * sc.k), c_d = sc.d * sc.v;
  const int r0 = q0 + wq + g, r1 = r0 + 8;
  const float l0 = r0 < T ? lse[h * M + seq + r0] : 0.0f, l1 = r1 < T ? lse[h * M + seq + r1] : 0.0f;
  const float d0 = r0 < T ? D[h * M + seq + r0] * c_d : 0.0f, d1 = r1 < T ? D[h * M + seq + r1] * c_d : 0.0f;
  __syncthreads();
  uint32_t qf[HD / 16][4], df[HD / 16][4];  // the warp's rows of Q' and dO' as A fragments
  row_fragments<HD>(qf, Qs, wq, lane);
  row_fragments<HD>(df, dOs, wq, lane);
  float dqa[HD / 8][4];
  zero(dqa);
  for (int step = 0; step < steps; ++step) {
    const int k0 = step * kStep;
    walk.advance(step);
    if (k0 <= q0 + wq + 15) {  // else these keys follow every query of the warp
      float s[4][4] = {}, dp[4][4] = {};
      rows_product<HD>(s, nullptr, 0, qf, Ks, lane);   // S': queries x keys
      rows_product<HD>(dp, nullptr, 0, df, Vs, lane);  // dP'
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = e < 2 ? r0 : r1, key = k0 + 8 * j + 2 * t + (e & 1);
          const float p = key <= row && row < T ? exp2f(s[j][e] * c_s - (e < 2 ? l0 : l1)) : 0.0f;
          dp[j][e] = p * (dp[j][e] - (e < 2 ? d0 : d1));  // dS'
        }
      }
      acc_product<HD>(dqa, dp, Ks, lane);  // dQ' += dS' K'
    }
  }
  store_rows<HD>(dqa, scale / (c_d * sc.k), scale / (c_d * sc.k), dq + seq * ldd + h * HD, ldd, r0, T, t, rope);
}

template <int HD>
void launch_bwd(const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld, const float* dout, int ldo, const float* lse,
                const float* D, const float* amax, float* dq, float* dk, float* dv, int ldd, const float* rope, cudaStream_t st) {
  constexpr size_t TB = kStep * HD * 2;
  constexpr size_t kv_smem = 6 * TB + (2 * kStep * HD + 4 * kStep) * sizeof(float);
  constexpr size_t q_smem = 6 * TB + 2 * kStep * HD * sizeof(float);
  static const bool once = [] {  // above the 48 KB default: opt in once per kernel
    TERN_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_kv_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kv_smem)));
    TERN_CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_q_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(q_smem)));
    return true;
  }();
  (void)once;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD)), scale_log2 = 1.4426950408889634f * scale;
  const unsigned blocks = static_cast<unsigned>((sh.T + kBlockRows - 1) / kBlockRows);
  flash_bwd_kv_kernel<HD><<<dim3(static_cast<unsigned>(sh.B * sh.nkv), blocks), kThreads, kv_smem, st>>>(
      q, k, v, ld, dout, ldo, lse, D, amax, sh.nh, sh.nkv, dk, dv, ldd, sh.T, scale, scale_log2, reinterpret_cast<const float2*>(rope));
  TERN_CUDA_LAUNCHED("flash_bwd_kv_kernel");
  flash_bwd_q_kernel<HD><<<dim3(static_cast<unsigned>(sh.B * sh.nh), blocks), kThreads, q_smem, st>>>(
      q, k, v, ld, dout, ldo, lse, D, amax, sh.nh, sh.nkv, dq, ldd, sh.T, scale, scale_log2, reinterpret_cast<const float2*>(rope));
  TERN_CUDA_LAUNCHED("flash_bwd_q_kernel");
}

}  // namespace

size_t flash_attention_bwd_scratch(const TrainAttnShape& sh) { return static_cast<size_t>(sh.B) * sh.T * sh.nh + 4; }

bool flash_attention_bwd(const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld, const float* out,
                         const float* dout, int ldo, const float* lse, float* dq, float* dk, float* dv, int ldd, const float* rope,
                         float* scratch, cudaStream_t st) {
  if ((sh.hd != 64 && sh.hd != 128) || ld % 4 != 0 || ldo % 4 != 0 || ldd % 4 != 0 || sh.nkv <= 0 || sh.nh % sh.nkv != 0) return false;
  for (const void* p : {static_cast<const void*>(q), static_cast<const void*>(k), static_cast<const void*>(v), static_cast<const void*>(out),
                        static_cast<const void*>(dout), static_cast<const void*>(dq), static_cast<const void*>(dk), static_cast<const void*>(dv)}) {
    if (!aligned_to(p, 16)) return false;
  }
  if (sh.B <= 0 || sh.T <= 0) return true;
  const int M = sh.B * sh.T;
  float* D = scratch;
  float* amax = scratch + static_cast<size_t>(M) * sh.nh;
  TERN_CUDA_CHECK(cudaMemsetAsync(amax, 0, 4 * sizeof(float), st));
  flash_bwd_prep_kernel<<<prep_blocks(static_cast<int64_t>(M) * sh.nh), kPrepThreads, 0, st>>>(q, k, v, ld, out, dout, ldo, M, sh.nh, sh.nkv,
                                                                                              sh.hd, D, reinterpret_cast<unsigned*>(amax));
  TERN_CUDA_LAUNCHED("flash_bwd_prep_kernel");
  if (sh.hd == 128) {
    launch_bwd<128>(sh, q, k, v, ld, dout, ldo, lse, D, amax, dq, dk, dv, ldd, rope, st);
  } else {
    launch_bwd<64>(sh, q, k, v, ld, dout, ldo, lse, D, amax, dq, dk, dv, ldd, rope, st);
  }
  return true;
}

}  // namespace tern::cuda
