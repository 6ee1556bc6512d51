// Attention for the LoRA training step on the GPU: RoPE backward, causal GQA attention
// forward saving the log-sum-exp, and its backward. CPU references: train::rope_neox_bwd,
// train::attention_fwd / attention_bwd (train/ops.h). Correctness first: one block per
// (query, head), keys walked by the block's threads, dK/dV accumulated with float atomics
// (their order varies, so results match the CPU to rounding, not bit for bit); a
// flash-attention-style kernel on tensor cores is the fast version still to write.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 128;

// dy rows rotated by -angle in place: the inverse of the forward NeoX rotation.
__global__ void __launch_bounds__(kThreads) rope_bwd_kernel(float* __restrict__ dy, int n_heads, int hd, int pos0,
                                                            const float2* __restrict__ rope) {
  const int m = blockIdx.x, half = hd / 2, pos = pos0 + m;
  float* row = dy + static_cast<int64_t>(m) * n_heads * hd;
  for (int idx = threadIdx.x; idx < n_heads * half; idx += kThreads) {
    const int h = idx / half, i = idx % half;
    const float2 cs = rope[static_cast<int64_t>(pos) * half + i];
    float* v = row + h * hd;
    const float a = v[i], b = v[i + half];
    v[i] = a * cs.x + b * cs.y;
    v[i + half] = b * cs.x - a * cs.y;
  }
}

struct AttnArgs {
  const float *q, *k, *v, *dout, *lse;
  float *out, *lse_out, *dq, *dk, *dv;
  int T, nh, nkv, hd;
};

// Block (t, h): scores of keys 0..t into shared memory, then lse and out (forward).
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const AttnArgs a) {
  extern __shared__ float sc[];  // T scores
  __shared__ float sf[kThreads / 32];
  __shared__ double sd[kThreads / 32];
  const int t = blockIdx.x, h = blockIdx.y, g = h / (a.nh / a.nkv), hd = a.hd;
  const int qd = a.nh * hd, kvd = a.nkv * hd;
  const float* q = a.q + static_cast<int64_t>(t) * qd + h * hd;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  for (int j = threadIdx.x; j <= t; j += kThreads) {
    const float* k = a.k + static_cast<int64_t>(j) * kvd + g * hd;
    float d = 0.0f;
    for (int i = 0; i < hd; ++i) d += q[i] * k[i];
    sc[j] = d * scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= t; j += kThreads) mx = fmaxf(mx, sc[j]);
  mx = block_reduce<kThreads>(mx, sf, MaxOp{});
  double se = 0.0;
  for (int j = threadIdx.x; j <= t; j += kThreads) se += exp(static_cast<double>(sc[j]) - mx);
  se = block_reduce<kThreads>(se, sd, SumOp{});
  const float lse = static_cast<float>(mx + log(se));
  if (threadIdx.x == 0) a.lse_out[static_cast<int64_t>(t) * a.nh + h] = lse;
  for (int j = threadIdx.x; j <= t; j += kThreads) sc[j] = expf(sc[j] - lse);  // probabilities
  __syncthreads();
  for (int i = threadIdx.x; i < hd; i += kThreads) {
    float o = 0.0f;
    for (int j = 0; j <= t; ++j) o += sc[j] * a.v[static_cast<int64_t>(j) * kvd + g * hd + i];
    a.out[static_cast<int64_t>(t) * qd + h * hd + i] = o;
  }
}

// Block (t, h): p_j = exp(s_j - lse), dp_j = dout . v_j, ds_j = p_j (dp_j - dout . out);
// dq_t = scale sum_j ds_j k_j; dk_j += scale ds_j q_t; dv_j += p_j dout_t (atomics).
__global__ void __launch_bounds__(kThreads) attn_bwd_kernel(const AttnArgs a) {
  extern __shared__ float sm[];  // p [T], ds [T]
  float* p = sm;
  float* ds = sm + a.T;
  __shared__ float sf[kThreads / 32];
  const int t = blockIdx.x, h = blockIdx.y, g = h / (a.nh / a.nkv), hd = a.hd;
  const int qd = a.nh * hd, kvd = a.nkv * hd;
  const float* q = a.q + static_cast<int64_t>(t) * qd + h * hd;
  const float* dout = a.dout + static_cast<int64_t>(t) * qd + h * hd;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const float lse = a.lse[static_cast<int64_t>(t) * a.nh + h];
  float dsum = 0.0f;
  for (int j = threadIdx.x; j <= t; j += kThreads) {
    const float* k = a.k + static_cast<int64_t>(j) * kvd + g * hd;
    const float* v = a.v + static_cast<int64_t>(j) * kvd + g * hd;
    float s = 0.0f, dp = 0.0f;
    for (int i = 0; i < hd; ++i) s += q[i] * k[i], dp += dout[i] * v[i];
    p[j] = expf(s * scale - lse);
    ds[j] = dp;
    dsum += p[j] * dp;
  }
  dsum = block_reduce<kThreads>(dsum, sf, SumOp{});
  for (int j = threadIdx.x; j <= t; j += kThreads) ds[j] = p[j] * (ds[j] - dsum);
  __syncthreads();
  for (int i = threadIdx.x; i < hd; i += kThreads) {
    float dq = 0.0f;
    for (int j = 0; j <= t; ++j) dq += ds[j] * a.k[static_cast<int64_t>(j) * kvd + g * hd + i];
    a.dq[static_cast<int64_t>(t) * qd + h * hd + i] = dq * scale;
  }
  for (int idx = threadIdx.x; idx < (t + 1) * hd; idx += kThreads) {
    const int j = idx / hd, i = idx % hd;
    atomicAdd(a.dk + static_cast<int64_t>(j) * kvd + g * hd + i, scale * ds[j] * q[i]);
    atomicAdd(a.dv + static_cast<int64_t>(j) * kvd + g * hd + i, p[j] * dout[i]);
  }
}

}  // namespace

void launch_rope_bwd(float* dy, int M, int n_heads, int hd, int pos0, const float* rope, cudaStream_t st) {
  if (M <= 0) return;
  rope_bwd_kernel<<<M, kThreads, 0, st>>>(dy, n_heads, hd, pos0, reinterpret_cast<const float2*>(rope));
  TERN_CUDA_LAUNCHED("rope_bwd_kernel");
}

void train_attention_fwd(const float* q, const float* k, const float* v, int T, int nh, int nkv, int hd, float* out, float* lse,
                         cudaStream_t st) {
  if (T <= 0) return;
  AttnArgs a{q, k, v, nullptr, nullptr, out, lse, nullptr, nullptr, nullptr, T, nh, nkv, hd};
  // +4 floats: the key loops are compiled to vector shared loads that may touch up to 3
  // floats past the last key (values never used); the padding keeps them in bounds.
  const size_t smem = (static_cast<size_t>(T) + 4) * sizeof(float);
  if (smem > 48 * 1024) TERN_CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  attn_fwd_kernel<<<dim3(T, nh), kThreads, smem, st>>>(a);
  TERN_CUDA_LAUNCHED("attn_fwd_kernel");
}

void train_attention_bwd(const float* q, const float* k, const float* v, const float* lse, const float* dout, int T, int nh, int nkv,
                         int hd, float* dq, float* dk, float* dv, cudaStream_t st) {
  if (T <= 0) return;
  TERN_CUDA_CHECK(cudaMemsetAsync(dk, 0, static_cast<size_t>(T) * nkv * hd * sizeof(float), st));
  TERN_CUDA_CHECK(cudaMemsetAsync(dv, 0, static_cast<size_t>(T) * nkv * hd * sizeof(float), st));
  AttnArgs a{q, k, v, dout, lse, nullptr, nullptr, dq, dk, dv, T, nh, nkv, hd};
  const size_t smem = (2 * static_cast<size_t>(T) + 4) * sizeof(float);  // +4: see train_attention_fwd
  if (smem > 48 * 1024) TERN_CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  attn_bwd_kernel<<<dim3(T, nh), kThreads, smem, st>>>(a);
  TERN_CUDA_LAUNCHED("attn_bwd_kernel");
}

}  // namespace tern::cuda
