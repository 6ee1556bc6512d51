// Attention for the LoRA training step on the GPU: RoPE (forward and its inverse, the
// backward) over rows of several sequences, and causal GQA attention forward/backward
// with the scores materialised per chunk of sequences and every product a strided
// batched cuBLAS GEMM (float32). With tf32 the flash kernels take over where they apply
// (flash_attention.cu, flash_attention_bwd.cu; TERN_TRAIN_ATTN=cublas keeps this path).
// CPU references: train::rope_neox_fwd/bwd, train::attention_fwd / attention_bwd (train/ops.h).
//
// q, k, v (and the gradients) are first copied head-major, [sequence][head][T][hd]:
// then the G = n_heads / n_kv query heads sharing a KV head are one [G*T][hd] matrix,
// and every product is one GEMM per (sequence, KV head) at uniform strides. Forward:
// S = scale Q K^T, P = causal softmax(S), O = P V. Backward recomputes P (no T x T matrix
// is kept between calls), then dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)),
// dQ = scale dS K, dK = scale dS^T Q; stacking the G heads makes dK/dV their sum.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 128;

// Row m (position period-relative: pos0 + m % period) rotated by +angle (forward) or
// -angle (inverse), heads of hd at stride hd from x + m * ld.
__global__ void __launch_bounds__(kThreads) rope_rows_kernel(float* __restrict__ x, int ld, int n_heads, int hd, int period, int pos0,
                                                             const float2* __restrict__ rope, int inverse) {
  const int m = blockIdx.x, half = hd / 2, pos = pos0 + m % period;
  float* row = x + static_cast<int64_t>(m) * ld;
  for (int idx = threadIdx.x; idx < n_heads * half; idx += kThreads) {
    const int h = idx / half, i = idx % half;
    const float2 cs = rope[static_cast<int64_t>(pos) * half + i];
    float* v = row + h * hd;
    const float a = v[i], b = v[i + half];
    if (inverse) {
      v[i] = a * cs.x + b * cs.y;
      v[i + half] = b * cs.x - a * cs.y;
    } else {
      v[i] = a * cs.x - b * cs.y;
      v[i + half] = b * cs.x + a * cs.y;
    }
  }
}

// rows [B*T][ld] (heads of hd from column 0) <-> head-major [B][nheads][T][hd]: block
// (t, b) moves row b*T + t, all its heads, 16 bytes at a time when V == 4 (hd, ld and the
// pointers multiples of 4 floats; one block per head row of 128 floats ran at 1 TB/s).
template <int V>
__global__ void __launch_bounds__(256) heads_kernel(float* __restrict__ rows, int ld, float* __restrict__ heads, int T, int nheads, int hd,
                                                    int to_heads) {
  using Vec = std::conditional_t<V == 4, float4, float>;
  const int t = blockIdx.x, b = blockIdx.y, hv = hd / V;
  Vec* row = reinterpret_cast<Vec*>(rows + (static_cast<int64_t>(b) * T + t) * ld);
  Vec* hb = reinterpret_cast<Vec*>(heads + (static_cast<int64_t>(b) * nheads * T + t) * hd);
  const int64_t hstride = static_cast<int64_t>(T) * hv;  // between heads, in Vec
  for (int i = threadIdx.x; i < nheads * hv; i += blockDim.x) {
    const int h = i / hv, d = i - h * hv;
    Vec* hp = hb + h * hstride + d;
    if (to_heads) {
      *hp = row[i];
    } else {
      row[i] = *hp;
    }
  }
}

// One warp per score row (query position i = row % T): P[j] = exp(S[j] - max) / sum over
// j <= i, 0 beyond.
__global__ void __launch_bounds__(kThreads) causal_softmax_kernel(float* __restrict__ S, int T, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x & 31, i = static_cast<int>(r % T);
  float* row = S + r * T;
  float mx = -INFINITY;
  for (int j = lane; j <= i; j += 32) mx = fmaxf(mx, row[j]);
  mx = warp_max(mx);
  float se = 0.0f;
  for (int j = lane; j <= i; j += 32) se += expf(row[j] - mx);
  se = warp_sum(se);
  const float inv = 1.0f / se;
  for (int j = lane; j < T; j += 32) row[j] = j <= i ? expf(row[j] - mx) * inv : 0.0f;
}

// dS = P (dP - sum_j P dP) in place of dP, one warp per row.
__global__ void __launch_bounds__(kThreads) softmax_bwd_kernel(const float* __restrict__ P, float* __restrict__ dP, int T, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x & 31, i = static_cast<int>(r % T);
  const float* p = P + r * T;
  float* d = dP + r * T;
  float dot = 0.0f;
  for (int j = lane; j <= i; j += 32) dot += p[j] * d[j];
  dot = warp_sum(dot);
  for (int j = lane; j < T; j += 32) d[j] = j <= i ? p[j] * (d[j] - dot) : 0.0f;
}

unsigned warp_rows_blocks(int64_t rows) { return static_cast<unsigned>((rows + kThreads / 32 - 1) / (kThreads / 32)); }

// Head-major work buffers and the chunking of the score matrices.
class Attn {
 public:
  Attn(TrainBlas& blas, const TrainAttnShape& sh, bool tf32) : blas_(blas), sh_(sh), tf32_(tf32), st_(blas.stream()) {
    G_ = sh.nh / sh.nkv;
    qn_ = static_cast<int64_t>(sh.B) * sh.nh * sh.T * sh.hd;
    kn_ = static_cast<int64_t>(sh.B) * sh.nkv * sh.T * sh.hd;
    const int64_t per_seq = static_cast<int64_t>(sh.nh) * sh.T * sh.T * sizeof(float);
    constexpr int64_t kCap = int64_t{384} << 20;  // scores per chunk of sequences
    nb_ = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(sh.B, kCap / std::max<int64_t>(per_seq, 1))));
    // q, k, v, o / dO, dq, dk, dv head-major, then the score chunk(s).
    buf_ = static_cast<float*>(blas.scratch(kSlotAttnHeads, (4 * qn_ + 4 * kn_) * sizeof(float)));
    S_ = static_cast<float*>(blas.scratch(kSlotAttnS, static_cast<size_t>(nb_) * per_seq));
  }
  float* q() const { return buf_; }
  float* k() const { return buf_ + qn_; }
  float* v() const { return buf_ + qn_ + kn_; }
  float* o() const { return buf_ + qn_ + 2 * kn_; }  // the output, or dO in the backward
  float* dq() const { return buf_ + 2 * qn_ + 2 * kn_; }
  float* dk() const { return buf_ + 3 * qn_ + 2 * kn_; }
  float* dv() const { return buf_ + 3 * qn_ + 3 * kn_; }

  // rows -> head-major (to) or back; rows is written only when !to.
  void heads(const float* rows, int ld, float* h, int nheads, bool to) {
    if (sh_.B * nheads == 0 || sh_.T == 0) return;
    const dim3 grid(sh_.T, sh_.B);
    const bool vec = sh_.hd % 4 == 0 && ld % 4 == 0 && reinterpret_cast<uintptr_t>(rows) % 16 == 0 && reinterpret_cast<uintptr_t>(h) % 16 == 0;
    if (vec) {
      heads_kernel<4><<<grid, 256, 0, st_>>>(const_cast<float*>(rows), ld, h, sh_.T, nheads, sh_.hd, to ? 1 : 0);
    } else {
      heads_kernel<1><<<grid, 256, 0, st_>>>(const_cast<float*>(rows), ld, h, sh_.T, nheads, sh_.hd, to ? 1 : 0);
    }
    TERN_CUDA_LAUNCHED("heads_kernel");
  }

  // Strides of one (sequence, KV head) block: a query group [G*T][hd], a KV head [T][hd],
  // the group's scores [G*T][T].
  int64_t qs() const { return static_cast<int64_t>(G_) * sh_.T * sh_.hd; }
  int64_t ks() const { return static_cast<int64_t>(sh_.T) * sh_.hd; }
  int64_t ss() const { return static_cast<int64_t>(G_) * sh_.T * sh_.T; }

  // P = causal softmax(scale Q K^T) for nb sequences from b0, into S_.
  void probs(int b0, int nb) {
    const int T = sh_.T, hd = sh_.hd, n = nb * sh_.nkv;
    const float scale = 1.0f / sqrtf(static_cast<float>(hd));
    blas_.gemm_strided(false, true, G_ * T, T, hd, scale, q() + b0 * sh_.nkv * qs(), hd, qs(), k() + b0 * sh_.nkv * ks(), hd, ks(), 0.0f, S_,
                       T, ss(), n, tf32_);
    const int64_t rows = static_cast<int64_t>(n) * G_ * T;
    causal_softmax_kernel<<<warp_rows_blocks(rows), kThreads, 0, st_>>>(S_, T, rows);
    TERN_CUDA_LAUNCHED("causal_softmax_kernel");
  }

  TrainBlas& blas_;
  TrainAttnShape sh_;
  bool tf32_;
  cudaStream_t st_;
  int G_ = 1, nb_ = 1;
  int64_t qn_ = 0, kn_ = 0;
  float* buf_ = nullptr;
  float* S_ = nullptr;
};

}  // namespace

void launch_rope_rows(float* x, int ld, int M, int n_heads, int hd, int period, int pos0, const float* rope, bool inverse, cudaStream_t st) {
  if (M <= 0) return;
  rope_rows_kernel<<<M, kThreads, 0, st>>>(x, ld, n_heads, hd, period, pos0, reinterpret_cast<const float2*>(rope), inverse ? 1 : 0);
  TERN_CUDA_LAUNCHED("rope_rows_kernel");
}

void launch_rope_bwd(float* dy, int M, int n_heads, int hd, int pos0, const float* rope, cudaStream_t st) {
  launch_rope_rows(dy, n_heads * hd, M, n_heads, hd, M, pos0, rope, true, st);
}

// TERN_TRAIN_ATTN=cublas keeps the tf32 products off the flash kernels (A/B timing).
static bool flash_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TERN_TRAIN_ATTN");
    return e == nullptr || std::string(e) != "cublas";
  }();
  return on;
}

void train_attention_fwd(TrainBlas& blas, const TrainAttnShape& sh, float* q, float* k, const float* v, int ld, float* out, int ldo,
                         bool tf32, float* lse, const float* rope) {
  if (sh.B <= 0 || sh.T <= 0) return;
  if (tf32 && flash_enabled() &&
      flash_attention_fwd(sh, q, k, v, ld, out, ldo, lse, rope, static_cast<float*>(blas.scratch(kSlotAttnS, 4 * sizeof(float))),
                          blas.stream())) {
    return;
  }
  const int M = sh.B * sh.T;
  if (rope != nullptr) {
    launch_rope_rows(q, ld, M, sh.nh, sh.hd, sh.T, 0, rope, false, blas.stream());
    launch_rope_rows(k, ld, M, sh.nkv, sh.hd, sh.T, 0, rope, false, blas.stream());
  }
  Attn a(blas, sh, tf32);
  a.heads(q, ld, a.q(), sh.nh, true);
  a.heads(k, ld, a.k(), sh.nkv, true);
  a.heads(v, ld, a.v(), sh.nkv, true);
  const int T = sh.T, hd = sh.hd;
  for (int b0 = 0; b0 < sh.B; b0 += a.nb_) {
    const int nb = std::min(a.nb_, sh.B - b0), n = nb * sh.nkv;
    a.probs(b0, nb);
    // O = P V per (sequence, KV head): [G*T][T] . [T][hd]
    blas.gemm_strided(false, false, a.G_ * T, hd, T, 1.0f, a.S_, T, a.ss(), a.v() + b0 * sh.nkv * a.ks(), hd, a.ks(), 0.0f,
                      a.o() + b0 * sh.nkv * a.qs(), hd, a.qs(), n, tf32);
  }
  a.heads(out, ldo, a.o(), sh.nh, false);
}

void train_attention_bwd(TrainBlas& blas, const TrainAttnShape& sh, const float* q, const float* k, const float* v, int ld,
                         const float* dout, int ldo, float* dq, float* dk, float* dv, int ldd, bool tf32, const float* out,
                         const float* lse, const float* rope) {
  if (sh.B <= 0 || sh.T <= 0) return;
  if (tf32 && flash_enabled() && out != nullptr && lse != nullptr) {
    auto* scratch = static_cast<float*>(blas.scratch(kSlotAttnDP, flash_attention_bwd_scratch(sh) * sizeof(float)));
    if (flash_attention_bwd(sh, q, k, v, ld, out, dout, ldo, lse, dq, dk, dv, ldd, rope, scratch, blas.stream())) return;
  }
  Attn a(blas, sh, tf32);
  a.heads(q, ld, a.q(), sh.nh, true);
  a.heads(k, ld, a.k(), sh.nkv, true);
  a.heads(v, ld, a.v(), sh.nkv, true);
  a.heads(dout, ldo, a.o(), sh.nh, true);
  const int T = sh.T, hd = sh.hd, GT = a.G_ * T;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  auto* dP = static_cast<float*>(blas.scratch(kSlotAttnDP, static_cast<size_t>(a.nb_) * sh.nh * T * T * sizeof(float)));
  for (int b0 = 0; b0 < sh.B; b0 += a.nb_) {
    const int nb = std::min(a.nb_, sh.B - b0), n = nb * sh.nkv;
    const int64_t oq = b0 * sh.nkv * a.qs(), ok = b0 * sh.nkv * a.ks();
    a.probs(b0, nb);
    // dV = P^T dO: [T][G*T] . [G*T][hd] (the G heads summed by the product)
    blas.gemm_strided(true, false, T, hd, GT, 1.0f, a.S_, T, a.ss(), a.o() + oq, hd, a.qs(), 0.0f, a.dv() + ok, hd, a.ks(), n, tf32);
    // dP = dO V^T, then dS in place.
    blas.gemm_strided(false, true, GT, T, hd, 1.0f, a.o() + oq, hd, a.qs(), a.v() + ok, hd, a.ks(), 0.0f, dP, T, a.ss(), n, tf32);
    const int64_t rows = static_cast<int64_t>(n) * GT;
    softmax_bwd_kernel<<<warp_rows_blocks(rows), kThreads, 0, blas.stream()>>>(a.S_, dP, T, rows);
    TERN_CUDA_LAUNCHED("softmax_bwd_kernel");
    // dQ = scale dS K: [G*T][T] . [T][hd]; dK = scale dS^T Q: [T][G*T] . [G*T][hd]
    blas.gemm_strided(false, false, GT, hd, T, scale, dP, T, a.ss(), a.k() + ok, hd, a.ks(), 0.0f, a.dq() + oq, hd, a.qs(), n, tf32);
    blas.gemm_strided(true, false, T, hd, GT, scale, dP, T, a.ss(), a.q() + oq, hd, a.qs(), 0.0f, a.dk() + ok, hd, a.ks(), n, tf32);
  }
  a.heads(dq, ldd, a.dq(), sh.nh, false);
  a.heads(dk, ldd, a.dk(), sh.nkv, false);
  a.heads(dv, ldd, a.dv(), sh.nkv, false);
  if (rope != nullptr) {
    launch_rope_rows(dq, ldd, sh.B * sh.T, sh.nh, sh.hd, sh.T, 0, rope, true, blas.stream());
    launch_rope_rows(dk, ldd, sh.B * sh.T, sh.nkv, sh.hd, sh.T, 0, rope, true, blas.stream());
  }
}

}  // namespace tern::cuda
