// Attention: NeoX RoPE, the KV-cache write and GQA causal softmax attention.
// CPU references: cpu::rope_neox (pairs i, i + hd/2; angle = pos * inv_freq[i] in
// float32) and cpu::attention_head (scores scaled by 1/sqrt(hd), softmax, weighted sum
// of V) in backend/cpu/kernels.cpp; the loop over positions in CpuEngine::layer.
//
// One warp walks keys with an online softmax for GB query heads of one KV head at a
// time (lane owns hd/32 contiguous elements of q, k, v), so each K/V row is read once
// for the whole GQA group. Decode splits the context over gridDim.y blocks
// (flash-decoding); the last block of a head group to finish merges the parts.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kWarps = 8;

// cpu::rope_neox's pair update without FMA contraction (matches the CPU bit for bit
// when the CPU build does not contract either).
__device__ __forceinline__ void rope_pair(float x0, float x1, float2 cs, float& y0, float& y1) {
  y0 = __fsub_rn(__fmul_rn(x0, cs.x), __fmul_rn(x1, cs.y));
  y1 = __fadd_rn(__fmul_rn(x1, cs.x), __fmul_rn(x0, cs.y));
}

template <int EPL, int GB>
struct SoftmaxState {
  float m[GB], l[GB], acc[GB][EPL];
  __device__ void init() {
#pragma unroll
    for (int gi = 0; gi < GB; ++gi) {
      m[gi] = -INFINITY;
      l[gi] = 0.0f;
#pragma unroll
      for (int j = 0; j < EPL; ++j) acc[gi][j] = 0.0f;
    }
  }
};

// Folds U keys (rows kr[u], vr[u]) into the state of this warp.
template <int EPL, int GB, int U>
__device__ __forceinline__ void attend(SoftmaxState<EPL, GB>& st, const float (&q)[GB][EPL], const float* const (&kr)[U],
                                       const float* const (&vr)[U], int lane, float scale) {
  float kv[U][EPL], vv[U][EPL];
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
      kv[u][j] = kr[u][lane * EPL + j];
      vv[u][j] = vr[u][lane * EPL + j];
    }
  }
  float sc[U][GB];
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int gi = 0; gi < GB; ++gi) {
      float d = 0.0f;
#pragma unroll
      for (int j = 0; j < EPL; ++j) d += q[gi][j] * kv[u][j];
      sc[u][gi] = d;
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int gi = 0; gi < GB; ++gi) sc[u][gi] = warp_sum(sc[u][gi]) * scale;
  }
#pragma unroll
  for (int gi = 0; gi < GB; ++gi) {
    float mn = st.m[gi];
#pragma unroll
    for (int u = 0; u < U; ++u) mn = fmaxf(mn, sc[u][gi]);
    const float corr = expf(st.m[gi] - mn);
    float p[U], ps = 0.0f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      p[u] = expf(sc[u][gi] - mn);
      ps += p[u];
    }
    st.l[gi] = st.l[gi] * corr + ps;
#pragma unroll
    for (int j = 0; j < EPL; ++j) {
      float x = st.acc[gi][j] * corr;
#pragma unroll
      for (int u = 0; u < U; ++u) x += p[u] * vv[u][j];
      st.acc[gi][j] = x;
    }
    st.m[gi] = mn;
  }
}

// Keys t0, t0 + step, ... < t1; key(t) gives the K and V rows.
// Keys are taken U at a time so that U rows of K and V are in flight at once: 8 when
// the registers allow (short decode contexts are a chain of these round trips).
template <int EPL, int GB, class Key>
__device__ __forceinline__ void attend_range(SoftmaxState<EPL, GB>& st, const float (&q)[GB][EPL], int t0, int t1, int step,
                                             Key key, int lane, float scale) {
  constexpr int U = EPL * GB <= 16 ? 8 : 4;
  int t = t0;
  for (; t + (U - 1) * step < t1; t += U * step) {
    const float* kr[U];
    const float* vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) key(t + u * step, kr[u], vr[u]);
    attend<EPL, GB, U>(st, q, kr, vr, lane, scale);
  }
  for (; t < t1; t += step) {
    const float* kr[1];
    const float* vr[1];
    key(t, kr[0], vr[0]);
    attend<EPL, GB, 1>(st, q, kr, vr, lane, scale);
  }
}

struct DecodeArgs {
  AttnShape sh;
  const float* qkv;
  float* kc;
  float* vc;
  const float2* rope;
  const int32_t* d_pos;
  const int32_t* d_seq;  // null: sequence 0
  int64_t seq_stride;    // floats between two sequences' caches
  float* partial;
  int32_t* counters;
  float* out;
};

template <int EPL, int GB>
__global__ void __launch_bounds__(kThreads) attn_decode_kernel(const DecodeArgs a) {
  constexpr int hd = EPL * 32, half = hd / 2, SW = hd + 2;
  extern __shared__ float smf[];
  float* sq = smf;            // GB x hd roped queries
  float* sk = sq + GB * hd;   // roped new key
  float* sv = sk + hd;        // new value
  float* ws = sv + hd;        // kWarps x GB x (hd + 2): per-warp acc, m, l
  __shared__ int s_last;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int G = a.sh.n_heads / a.sh.n_kv;
  const int h0 = blockIdx.x * GB, kvh = h0 / G;
  pdl_trigger();
  // Position and sequence were copied in before the step's first kernel ran, so they
  // may be read before the wait (saves a dependent round trip).
  const int pos = *a.d_pos, n_ctx = pos + 1;
  const int64_t seq_off = a.d_seq != nullptr ? *a.d_seq * a.seq_stride : 0;
  pdl_wait();
  // Splits of at least 128 positions (16 keys per warp): short contexts skip the
  // cross-block merge, whose fence + atomic + second pass cost more than the keys.
  const int splits = min(static_cast<int>(gridDim.y), (n_ctx + 127) / 128), split = blockIdx.y;
  if (split >= splits) return;
  const int kv_dim = a.sh.kv_dim;
  const float* qraw = a.qkv + h0 * hd;
  const float* kraw = a.qkv + a.sh.qd + kvh * hd;
  const float* vraw = kraw + kv_dim;

  // Every load of the RoPE step is issued before the first shared-memory store (the
  // compiler cannot reorder loads through generic pointers past those stores).
  constexpr int kItems = ((GB + 1) * half + kThreads - 1) / kThreads;
  float2 cs[kItems];
  float x0[kItems], x1[kItems];
#pragma unroll
  for (int n = 0; n < kItems; ++n) {
    const int idx = threadIdx.x + n * kThreads, gi = idx / half, i = idx % half;
    if (idx < (GB + 1) * half) {
      const float* src = gi < GB ? qraw + gi * hd : kraw;
      cs[n] = a.rope[static_cast<int64_t>(pos) * half + i];
      x0[n] = src[i];
      x1[n] = src[i + half];
    }
  }
  const float vnew = threadIdx.x < hd ? vraw[threadIdx.x] : 0.0f;  // hd <= 256 = kThreads
#pragma unroll
  for (int n = 0; n < kItems; ++n) {
    const int idx = threadIdx.x + n * kThreads, gi = idx / half, i = idx % half;
    if (idx < (GB + 1) * half) {
      float* dst = gi < GB ? sq + gi * hd : sk;
      rope_pair(x0[n], x1[n], cs[n], dst[i], dst[i + half]);
    }
  }
  if (threadIdx.x < hd) sv[threadIdx.x] = vnew;
  __syncthreads();
  if (split == 0 && h0 % G == 0) {
    float* kd = a.kc + seq_off + static_cast<int64_t>(pos) * kv_dim + kvh * hd;
    float* vd = a.vc + seq_off + static_cast<int64_t>(pos) * kv_dim + kvh * hd;
    for (int d = threadIdx.x; d < hd; d += kThreads) {
      kd[d] = sk[d];
      vd[d] = sv[d];
    }
  }

  float q[GB][EPL];
#pragma unroll
  for (int gi = 0; gi < GB; ++gi) {
#pragma unroll
    for (int j = 0; j < EPL; ++j) q[gi][j] = sq[gi * hd + lane * EPL + j];
  }
  SoftmaxState<EPL, GB> st;
  st.init();
  const int chunk = (n_ctx + splits - 1) / splits;
  const int tb = split * chunk, te = min(n_ctx, tb + chunk);
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const float* kc = a.kc + seq_off + kvh * hd;
  const float* vc = a.vc + seq_off + kvh * hd;
  attend_range<EPL, GB>(
      st, q, tb + warp, te, kWarps,
      [&](int t, const float*& kr, const float*& vr) {
        // The newest position comes from shared memory: no block reads what this launch writes.
        kr = t == pos ? sk : kc + static_cast<int64_t>(t) * kv_dim;
        vr = t == pos ? sv : vc + static_cast<int64_t>(t) * kv_dim;
      },
      lane, scale);

#pragma unroll
  for (int gi = 0; gi < GB; ++gi) {
    float* w = ws + (warp * GB + gi) * SW;
#pragma unroll
    for (int j = 0; j < EPL; ++j) w[lane * EPL + j] = st.acc[gi][j];
    if (lane == 0) {
      w[hd] = st.m[gi];
      w[hd + 1] = st.l[gi];
    }
  }
  __syncthreads();

  float* part = a.partial + (static_cast<int64_t>(blockIdx.x) * gridDim.y + split) * GB * SW;
  for (int idx = threadIdx.x; idx < GB * hd; idx += kThreads) {
    const int gi = idx / hd, d = idx % hd;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ws[(w * GB + gi) * SW + hd]);
    float L = 0.0f, A = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float* s = ws + (w * GB + gi) * SW;
      if (s[hd] == -INFINITY) continue;
      const float e = expf(s[hd] - M);
      L += s[hd + 1] * e;
      A += s[d] * e;
    }
    if (splits == 1) {
      a.out[(h0 + gi) * hd + d] = A / L;
    } else {
      part[gi * SW + d] = A;
      if (d == 0) {
        part[gi * SW + hd] = M;
        part[gi * SW + hd + 1] = L;
      }
    }
  }
  if (splits == 1) return;

  // Last block of this head group merges all splits.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&a.counters[blockIdx.x], 1) == splits - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const float* parts = a.partial + static_cast<int64_t>(blockIdx.x) * gridDim.y * GB * SW;
  for (int idx = threadIdx.x; idx < GB * hd; idx += kThreads) {
    const int gi = idx / hd, d = idx % hd;
    float M = -INFINITY;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, __ldcg(parts + (s * GB + gi) * SW + hd));
    float L = 0.0f, A = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* p = parts + (s * GB + gi) * SW;
      const float ms = __ldcg(p + hd);
      if (ms == -INFINITY) continue;
      const float e = expf(ms - M);
      L += __ldcg(p + hd + 1) * e;
      A += __ldcg(p + d) * e;
    }
    a.out[(h0 + gi) * hd + d] = A / L;
  }
  if (threadIdx.x == 0) a.counters[blockIdx.x] = 0;
}

struct PrefillArgs {
  AttnShape sh;
  const float* q;
  int ldq;
  const float* kc;
  const float* vc;
  int M;
  RowMap rows;
  float* out;
  int ldo;
};

// One block per (query token, head group): the 8 warps split the keys 0..pos0+i
// (warp w takes w, w+8, ...) and merge in shared memory, so a long prompt's last rows
// are not one warp's serial walk over every key.
template <int EPL, int GB>
__global__ void __launch_bounds__(kThreads) attn_prefill_kernel(const PrefillArgs a) {
  constexpr int hd = EPL * 32, SW = hd + 2;
  extern __shared__ float ws[];  // kWarps x GB x (hd + 2)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.y;
  const int G = a.sh.n_heads / a.sh.n_kv;
  const int h0 = blockIdx.x * GB, kvh = h0 / G;
  const int n_ctx = a.rows.pos_of(i) + 1;
  const int kv_dim = a.sh.kv_dim;
  float q[GB][EPL];
  const float* qrow = a.q + static_cast<int64_t>(i) * a.ldq + h0 * hd;
#pragma unroll
  for (int gi = 0; gi < GB; ++gi) {
#pragma unroll
    for (int j = 0; j < EPL; ++j) q[gi][j] = qrow[gi * hd + lane * EPL + j];
  }
  SoftmaxState<EPL, GB> st;
  st.init();
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const float* kc = a.kc + a.rows.cache_offset(i) + kvh * hd;
  const float* vc = a.vc + a.rows.cache_offset(i) + kvh * hd;
  attend_range<EPL, GB>(
      st, q, warp, n_ctx, kWarps,
      [&](int t, const float*& kr, const float*& vr) {
        kr = kc + static_cast<int64_t>(t) * kv_dim;
        vr = vc + static_cast<int64_t>(t) * kv_dim;
      },
      lane, scale);
#pragma unroll
  for (int gi = 0; gi < GB; ++gi) {
    float* w = ws + (warp * GB + gi) * SW;
#pragma unroll
    for (int j = 0; j < EPL; ++j) w[lane * EPL + j] = st.acc[gi][j];
    if (lane == 0) {
      w[hd] = st.m[gi];
      w[hd + 1] = st.l[gi];
    }
  }
  __syncthreads();
  float* orow = a.out + static_cast<int64_t>(i) * a.ldo + h0 * hd;
  for (int idx = threadIdx.x; idx < GB * hd; idx += kThreads) {
    const int gi = idx / hd, d = idx % hd;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ws[(w * GB + gi) * SW + hd]);
    float L = 0.0f, A = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float* sw = ws + (w * GB + gi) * SW;
      if (sw[hd] == -INFINITY) continue;
      const float e = expf(sw[hd] - M);
      L += sw[hd + 1] * e;
      A += sw[d] * e;
    }
    orow[gi * hd + d] = A / L;
  }
}

// Prefill RoPE + cache write, one block per token. CPU reference: cpu::rope_neox and
// the cache copy in CpuEngine::layer.
__global__ void __launch_bounds__(kThreads) rope_kv_kernel(const AttnShape sh, float* qkv, int ldq, const RowMap rows,
                                                           const float2* __restrict__ rope, float* kc, float* vc) {
  const int i = blockIdx.x, pos = rows.pos_of(i), hd = sh.hd, half = hd / 2;
  float* row = qkv + static_cast<int64_t>(i) * ldq;
  float* kd = kc + rows.cache_offset(i) + static_cast<int64_t>(pos) * sh.kv_dim;
  float* vd = vc + rows.cache_offset(i) + static_cast<int64_t>(pos) * sh.kv_dim;
  for (int idx = threadIdx.x; idx < (sh.n_heads + sh.n_kv) * half; idx += kThreads) {
    const int h = idx / half, j = idx % half;
    const float2 cs = rope[static_cast<int64_t>(pos) * half + j];
    if (h < sh.n_heads) {
      float* v = row + h * hd;
      rope_pair(v[j], v[j + half], cs, v[j], v[j + half]);
    } else {
      const int kh = h - sh.n_heads;
      const float* v = row + sh.qd + kh * hd;
      rope_pair(v[j], v[j + half], cs, kd[kh * hd + j], kd[kh * hd + j + half]);
    }
  }
  for (int d = threadIdx.x; d < sh.kv_dim; d += kThreads) vd[d] = row[sh.qd + sh.kv_dim + d];
}

template <template <int, int> class F, class... Args>
void dispatch(const AttnShape& sh, Args&&... args) {
  const int epl = sh.hd / 32;
  auto by_gb = [&](auto epl_c) {
    constexpr int E = decltype(epl_c)::value;
    switch (sh.gb) {
      case 1: return F<E, 1>::run(args...);
      case 2: return F<E, 2>::run(args...);
      case 4: return F<E, 4>::run(args...);
      case 8: return F<E, 8>::run(args...);
    }
    throw_error("attention: unsupported heads per block " + std::to_string(sh.gb));
  };
  switch (epl) {
    case 1: return by_gb(std::integral_constant<int, 1>{});
    case 2: return by_gb(std::integral_constant<int, 2>{});
    case 4: return by_gb(std::integral_constant<int, 4>{});
    case 8: return by_gb(std::integral_constant<int, 8>{});
  }
  throw_error("attention: unsupported head_dim " + std::to_string(sh.hd) + " (CUDA backend supports 32, 64, 128, 256)");
}

template <int EPL, int GB>
struct DecodeLaunch {
  static void run(const DecodeArgs& a, int splits, cudaStream_t st, bool pdl) {
    constexpr int hd = EPL * 32;
    const size_t smem = sizeof(float) * (GB * hd + 2 * hd + kWarps * GB * (hd + 2));
    if (smem > 48 * 1024) {
      TERN_CUDA_CHECK(cudaFuncSetAttribute(attn_decode_kernel<EPL, GB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
    }
    const dim3 grid(a.sh.n_heads / GB, splits);
    launch_kernel("attn_decode_kernel", attn_decode_kernel<EPL, GB>, grid, dim3(kThreads), smem, st, pdl, a);
  }
};

template <int EPL, int GB>
struct PrefillLaunch {
  static void run(const PrefillArgs& a, cudaStream_t st) {
    constexpr int hd = EPL * 32;
    const size_t smem = sizeof(float) * kWarps * GB * (hd + 2);
    if (smem > 48 * 1024) {
      TERN_CUDA_CHECK(cudaFuncSetAttribute(attn_prefill_kernel<EPL, GB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
    }
    const dim3 grid(a.sh.n_heads / GB, a.M);
    attn_prefill_kernel<EPL, GB><<<grid, kThreads, smem, st>>>(a);
    TERN_CUDA_LAUNCHED("attn_prefill_kernel");
  }
};

}  // namespace

int attn_heads_per_block(int n_heads, int n_kv) {
  const int G = n_heads / n_kv;
  for (int gb : {8, 4, 2}) {
    if (G % gb == 0) return gb;
  }
  return 1;
}

bool attn_head_dim_supported(int hd) { return hd == 32 || hd == 64 || hd == 128 || hd == 256; }

std::vector<float> rope_table(float theta, int hd, int npos) {
  const int half = hd / 2;
  std::vector<float> inv(half);
  cpu::rope_inv_freq(theta, hd, inv.data());
  std::vector<float> t(static_cast<size_t>(npos) * half * 2);
  for (int p = 0; p < npos; ++p) {
    for (int i = 0; i < half; ++i) {  // cpu::rope_neox
      const float angle = static_cast<float>(p) * inv[i];
      t[(static_cast<size_t>(p) * half + i) * 2] = std::cos(angle);
      t[(static_cast<size_t>(p) * half + i) * 2 + 1] = std::sin(angle);
    }
  }
  return t;
}

void launch_attn_decode(const AttnShape& sh, const float* qkv, float* kc, float* vc, const float* rope, const int32_t* d_pos,
                        const int32_t* d_seq, int64_t seq_stride, int splits, float* partial, int32_t* counters, float* out,
                        cudaStream_t st, bool pdl) {
  const DecodeArgs a{sh, qkv, kc, vc, reinterpret_cast<const float2*>(rope), d_pos, d_seq, seq_stride, partial, counters, out};
  dispatch<DecodeLaunch>(sh, a, splits, st, pdl);
}

void launch_rope_kv(const AttnShape& sh, float* qkv, int ldq, int M, const RowMap& rows, const float* rope, float* kc, float* vc,
                    cudaStream_t st) {
  if (M <= 0) return;
  rope_kv_kernel<<<M, kThreads, 0, st>>>(sh, qkv, ldq, rows, reinterpret_cast<const float2*>(rope), kc, vc);
  TERN_CUDA_LAUNCHED("rope_kv_kernel");
}

void launch_attn_prefill(const AttnShape& sh, const float* q, int ldq, const float* kc, const float* vc, int M,
                         const RowMap& rows, float* out, int ldo, cudaStream_t st) {
  if (M <= 0) return;
  const PrefillArgs a{sh, q, ldq, kc, vc, M, rows, out, ldo};
  dispatch<PrefillLaunch>(sh, a, st);
}

}  // namespace tern::cuda
