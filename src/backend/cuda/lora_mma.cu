// The LoRA branch's thin products on TF32 tensor cores (--precision tf32): the same
// products as lora_skinny.cu, whose float32 FMA kernels hold BM x R sums per lane and so
// re-read A once per few rows (ncu: L2-bound at 0.7-0.9 TB/s). An mma.m16n8k8 keeps a
// 16 x 8 tile's sums in 4 registers per lane, so one warp covers 16 rows (rows form) or
// 16 LoRA ranks (cols form) and A / U are re-read once per 16 rows instead.
//
//  rows: P[s] [M][r] = drop(X) A^T over K split s (A [r][K]; the forward's A x). Lane (g, t) = (lane / 4, lane % 4) loads X[row g and g + 8][4t ..
//        4t + 3] of each 16-column step as two float4: the reduction index is permuted
//        (k slot t <-> column 4t, t + 4 <-> 4t + 1 in the first mma, 4t + 2 / 4t + 3 in the
//        second) and A's fragment uses the same permutation, so the loads stay coalesced.
//  cols: P[s] [r][K] = U^T drop(X) over row chunk s (the backward's dA). Rows arrive through a
//        cp.async ring in shared memory; lane (g, t) reads X[row t and t + 4][4g .. 4g + 3]
//        of each 8 rows; the four columns of a float4 are four n-tiles, so a lane ends with 8
//        consecutive columns of one rank.
// Masks as lora_skinny.cu (hashed per 4 columns, or read from / written to d.bits). The
// partials are summed in split order by launch_partials_sum (deterministic).
// Folded RMSNorm (DropoutSpec::norm_rs / norm_w, the training step with tf32): X is the
// norm's input; rows: the weight scales A's columns, the row scales the partials' sum;
// cols: the row scales U's rows, the weight the partials' sum. F16 X (x_f16) is read as
// such (exact in TF32).
// Measured (H100, 2b-4t step, session 3): forward A x 16.7 -> 10.7 ms, dA 15.5 -> 12.5 ms.
// The unmasked du = dy B through the rows kernel was slower than cuBLAS (13.8 vs 12.6 ms:
// for the narrow k/v projections the grid is too small to hide the latency); with tf32 the
// training step now takes du and dB from lora_dy.cu's single pass over dy instead.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/launch.h"
#include "backend/cuda/mma_tf32.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kWarps = 4, kUnroll = 4;
// What the launchers aim for per SM (K splits / row chunks to fill the GPU). The rows
// kernel ran at 25 % occupancy waiting on its loads with 16 warps (ncu, H200): 32 (and 64
// registers) took the forward's A x from 10.1 to 8.6 ms a step; fed through a cp.async ring
// like the cols kernel it was slower (13.3 ms: its K splits are too short to fill the ring).
// The cols kernel streams its rows through shared memory (3 blocks of ~31 KB per SM keep
// ~90 KB of loads in flight): dA 11.3 -> 6.3 ms.
constexpr int kRowsWarpsPerSm = 32, kColsBlocksPerSm = 3;

// Keep bits of X[m][c .. c + 3] (c % 4 == 0).
__device__ __forceinline__ unsigned mask_nib(const DropoutSpec& d, uint64_t thr, int m, int c, int K, int words, bool from_bits) {
  if (from_bits) return (d.bits[static_cast<int64_t>(m) * words + c / 32] >> (c & 31)) & 15u;
  const int t = m % d.period;
  return dropout_bits<4>(d.seq_seed[m / d.period] + d.salt, static_cast<uint64_t>(t) * K + c, thr);
}

__device__ __forceinline__ float4 apply_nib(float4 v, unsigned nib, float keep) {
  v.x = (nib & 1u) ? v.x * keep : 0.0f;
  v.y = (nib & 2u) ? v.y * keep : 0.0f;
  v.z = (nib & 4u) ? v.z * keep : 0.0f;
  v.w = (nib & 8u) ? v.w * keep : 0.0f;
  return v;
}

struct MaskArgs {
  DropoutSpec d;
  uint64_t thr;
  float keep;
};

// Four consecutive inputs at element offset `at`: floats, or F16 values (DropoutSpec::x_f16).
template <bool X16>
__device__ __forceinline__ float4 load_x4(const float* x, int64_t at) {
  if constexpr (X16) {
    return load_half4(reinterpret_cast<const __half*>(x) + at);
  } else {
    return load_float4(x + at);
  }
}

template <int NT, bool X16>
// (64 registers, 8 blocks per SM: at 80 only 6 fit, and ncu found the kernel latency-bound at
// 25 % occupancy)
__global__ void __launch_bounds__(kWarps * 32, 8) lora_rows_mma_kernel(const float* __restrict__ X, int M, int K,
                                                                    const float* __restrict__ A, int r, int kspan, const MaskArgs ma,
                                                                    float* __restrict__ P) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int m0 = (blockIdx.x * kWarps + warp) * 16, row0 = m0 + g, row1 = row0 + 8;
  const bool v0 = row0 < M, v1 = row1 < M;
  const int k_begin = blockIdx.y * kspan, k_end = min(K, k_begin + kspan);
  const DropoutSpec& d = ma.d;
  const bool drop = d.p > 0.0f, from_bits = d.bits != nullptr && !d.write_bits, write_bits = drop && d.bits != nullptr && d.write_bits;
  const int words = dropout_words(K);
  const float* __restrict__ W = d.norm_w;  // a folded norm's weight scales A's columns (its row scale: the partials' sum)
  const int64_t x0at = static_cast<int64_t>(v0 ? row0 : 0) * K, x1at = static_cast<int64_t>(v1 ? row1 : 0) * K;
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int cb = k_begin; cb < k_end; cb += 16 * kUnroll) {  // bounds uniform across the warp (shuffles)
    float4 x0[kUnroll], x1[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // every load of the step in flight first
      const int c = cb + 16 * u + 4 * t;
      const bool in = c < k_end;
      x0[u] = in && v0 ? load_x4<X16>(X, x0at + c) : zero;
      x1[u] = in && v1 ? load_x4<X16>(X, x1at + c) : zero;
    }
    if (drop) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c0 = cb + 16 * u, c = c0 + 4 * t;
        if (c0 >= k_end) break;  // uniform
        const bool in = c < k_end;
        const unsigned n0 = in && v0 ? mask_nib(d, ma.thr, row0, c, K, words, from_bits) : 0u;
        const unsigned n1 = in && v1 ? mask_nib(d, ma.thr, row1, c, K, words, from_bits) : 0u;
        if (write_bits) {  // the quad's 4 nibbles are the 16 bits of columns c0 .. c0 + 15
          unsigned h0 = n0 << (4 * t), h1 = n1 << (4 * t);
          h0 |= __shfl_xor_sync(kFullMask, h0, 1), h1 |= __shfl_xor_sync(kFullMask, h1, 1);
          h0 |= __shfl_xor_sync(kFullMask, h0, 2), h1 |= __shfl_xor_sync(kFullMask, h1, 2);
          auto* half = reinterpret_cast<uint16_t*>(d.bits);
          if (t == 0 && v0) half[static_cast<int64_t>(row0) * words * 2 + c0 / 16] = static_cast<uint16_t>(h0);
          if (t == 0 && v1) half[static_cast<int64_t>(row1) * words * 2 + c0 / 16] = static_cast<uint16_t>(h1);
        }
        x0[u] = apply_nib(x0[u], n0, ma.keep);
        x1[u] = apply_nib(x1[u], n1, ma.keep);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = cb + 16 * u + 4 * t;
      if (cb + 16 * u >= k_end) break;  // uniform
      const uint32_t a0 = to_tf32(x0[u].x), a1 = to_tf32(x1[u].x), a2 = to_tf32(x0[u].y), a3 = to_tf32(x1[u].y);
      const uint32_t e0 = to_tf32(x0[u].z), e1 = to_tf32(x1[u].z), e2 = to_tf32(x0[u].w), e3 = to_tf32(x1[u].w);
      const float4 wc = W != nullptr && c < k_end ? load_float4(W + c) : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int j = 8 * n + g;
        float4 b = zero;
        if (j < r && c < k_end) b = load_float4(A + static_cast<int64_t>(j) * K + c);
        if (W != nullptr) b.x *= wc.x, b.y *= wc.y, b.z *= wc.z, b.w *= wc.w;
        mma_tf32(acc[n], a0, a1, a2, a3, to_tf32(b.x), to_tf32(b.y));
        mma_tf32(acc[n], e0, e1, e2, e3, to_tf32(b.z), to_tf32(b.w));
      }
    }
  }
  // Lane (g, t) holds ranks 8n + 2t, 8n + 2t + 1 of rows g and g + 8.
  float* ps = P + static_cast<int64_t>(blockIdx.y) * M * r;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = 8 * n + 2 * t + h;
      if (j >= r) continue;
      if (v0) ps[static_cast<int64_t>(row0) * r + j] = acc[n][h];
      if (v1) ps[static_cast<int64_t>(row1) * r + j] = acc[n][2 + h];
    }
  }
}

// The cols kernel's shared-memory ring (kColsStages x kColsStep rows): X rows padded to
// kColsXLd floats and U rows to UP (the lanes' float4 / scalar reads hit 32 distinct banks),
// then the rows' 4 mask words and their folded-norm row scales. F16 X rows are kColsXLdH
// halves (320 bytes, 64 mod 128: the four rows of a load instruction fill two wavefronts).
constexpr int kColsStages = 3, kColsStep = 16, kColsWidth = kWarps * 32, kColsXLd = kColsWidth + 8, kColsXLdH = kColsWidth + 32;
template <int MT>
__host__ __device__ constexpr int cols_u_ld() {
  return MT == 1 ? 24 : 40;  // = 8 or 24 (mod 32): rows t = 0..3 start in distinct bank octets
}
template <bool X16>
__host__ __device__ constexpr int cols_x_floats() {  // per X row in the ring
  return X16 ? kColsXLdH / 2 : kColsXLd;
}
template <int MT, bool X16>
__host__ __device__ constexpr int cols_stage_floats() {
  return kColsStep * (cols_x_floats<X16>() + cols_u_ld<MT>() + kColsWidth / 32 + 1);  // (kColsStep x: stages stay 16-byte aligned)
}

// A block owns 128 columns (a warp 32) of one row chunk and streams its rows through the
// ring: the loads of two steps are in flight while it multiplies (the register-fed version
// waited on them: ncu 25 % issue, 1.1 TB/s).
template <int MT, bool X16>
__global__ void __launch_bounds__(kWarps * 32) lora_cols_mma_kernel(const float* __restrict__ U, const float* __restrict__ X, int ldx, int M,
                                                                    int K, int r, int chunk, const MaskArgs ma, int g_kr, float* __restrict__ P) {
  constexpr int UP = cols_u_ld<MT>(), SF = cols_stage_floats<MT, X16>(), XF = cols_x_floats<X16>();
  extern __shared__ float ring[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int cb0 = blockIdx.x * kColsWidth, c0 = cb0 + 32 * warp, cg = c0 + 4 * g;  // this lane's float4 of columns
  const int s = blockIdx.y, m_begin = s * chunk, m_end = min(M, m_begin + chunk);
  const int steps = (m_end - m_begin + kColsStep - 1) / kColsStep;
  const DropoutSpec& d = ma.d;
  const bool drop = d.p > 0.0f, from_bits = d.bits != nullptr;
  const bool fold = d.norm_rs != nullptr;  // U's rows times the norm's row scales here, columns times its weight in the partials' sum
  const int words = dropout_words(K);
  auto issue = [&](int step) {
    float* st = ring + (step % kColsStages) * SF;
    const int r0 = m_begin + step * kColsStep;
    constexpr int kPer = X16 ? 8 : 4;  // inputs per 16-byte copy
    for (int ch = threadIdx.x; ch < kColsStep * kColsWidth / kPer; ch += kWarps * 32) {
      const int rr = ch / (kColsWidth / kPer), c = ch % (kColsWidth / kPer) * kPer;
      const bool ok = r0 + rr < m_end && cb0 + c < K;
      const int64_t at = static_cast<int64_t>(r0 + rr) * ldx + cb0 + c;
      if constexpr (X16) {
        const void* src = reinterpret_cast<const __half*>(X) + at;
        cp_async16(reinterpret_cast<__half*>(st) + rr * kColsXLdH + c, ok ? src : X, ok ? 16 : 0);
      } else {
        cp_async16(st + rr * kColsXLd + c, ok ? X + at : X, ok ? 16 : 0);
      }
    }
    for (int e = threadIdx.x; e < kColsStep * 16 * MT; e += kWarps * 32) {
      const int rr = e / (16 * MT), j = e % (16 * MT);
      const bool ok = r0 + rr < m_end && j < r;
      cp_async4(st + kColsStep * XF + rr * UP + j, ok ? U + static_cast<int64_t>(r0 + rr) * r + j : U, ok ? 4 : 0);
    }
    if (drop && from_bits && threadIdx.x < kColsStep * kColsWidth / 32) {
      const int rr = threadIdx.x / (kColsWidth / 32), w = cb0 / 32 + threadIdx.x % (kColsWidth / 32);
      const bool ok = r0 + rr < m_end && w < words;
      cp_async4(st + kColsStep * (XF + UP) + threadIdx.x, ok ? d.bits + static_cast<int64_t>(r0 + rr) * words + w : d.bits, ok ? 4 : 0);
    }
    if (fold && threadIdx.x < kColsStep) {
      const bool ok = r0 + threadIdx.x < m_end;
      cp_async4(st + kColsStep * (XF + UP + kColsWidth / 32) + threadIdx.x, ok ? d.norm_rs + r0 + threadIdx.x : d.norm_rs, ok ? 4 : 0);
    }
    cp_async_commit();
  };
  float acc[MT][4][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[i][q][0] = acc[i][q][1] = acc[i][q][2] = acc[i][q][3] = 0.0f;
  }
  ring_start(steps, issue);
  for (int step = 0; step < steps; ++step) {
    ring_wait_refill(step, steps, issue);
    const float* xs = ring + (step % kColsStages) * SF;
    const float* us = xs + kColsStep * XF;
    const unsigned* ws = reinterpret_cast<const unsigned*>(us + kColsStep * UP);
    const float* rss = us + kColsStep * (UP + kColsWidth / 32);
    const int r0 = m_begin + step * kColsStep;
#pragma unroll
    for (int u = 0; u < kColsStep / 8; ++u) {
      const int la = 8 * u + t, lb = la + 4;  // local rows (k slots t and t + 4); past m_end: zeros
      constexpr int ld = X16 ? kColsXLdH : kColsXLd;  // in inputs
      float4 xa = load_x4<X16>(xs, la * ld + 32 * warp + 4 * g);
      float4 xb = load_x4<X16>(xs, lb * ld + 32 * warp + 4 * g);
      if (drop) {
        unsigned na = 0, nb = 0;
        if (from_bits) {
          na = (ws[la * (kColsWidth / 32) + warp] >> (4 * g)) & 15u, nb = (ws[lb * (kColsWidth / 32) + warp] >> (4 * g)) & 15u;
        } else if (cg < K) {
          if (r0 + la < m_end) na = mask_nib(d, ma.thr, r0 + la, cg, K, words, false);
          if (r0 + lb < m_end) nb = mask_nib(d, ma.thr, r0 + lb, cg, K, words, false);
        }
        xa = apply_nib(xa, na, ma.keep), xb = apply_nib(xb, nb, ma.keep);
      }
      const uint32_t b0[4] = {to_tf32(xa.x), to_tf32(xa.y), to_tf32(xa.z), to_tf32(xa.w)};
      const uint32_t b1[4] = {to_tf32(xb.x), to_tf32(xb.y), to_tf32(xb.z), to_tf32(xb.w)};
      const float sa = fold ? rss[la] : 1.0f, sb = fold ? rss[lb] : 1.0f;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        // A fragment = U^T: (rank j, row k); rows la (k slot t) and lb (t + 4).
        const int j0 = 16 * i + g, j1 = j0 + 8;
        const uint32_t a0 = to_tf32(us[la * UP + j0] * sa), a1 = to_tf32(us[la * UP + j1] * sa);
        const uint32_t a2 = to_tf32(us[lb * UP + j0] * sb), a3 = to_tf32(us[lb * UP + j1] * sb);
#pragma unroll
        for (int q = 0; q < 4; ++q) mma_tf32(acc[i][q], a0, a1, a2, a3, b0[q], b1[q]);
      }
    }
  }
  // acc[i][q][h + 2 * hi]: rank 16 i + g + 8 hi, column c0 + 4 (2t + h) + q, i.e. the
  // lane holds columns c0 + 8t .. c0 + 8t + 7 of ranks 16 i + g and 16 i + g + 8.
  float* ps = P + static_cast<int64_t>(s) * r * K;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int j = 16 * i + g + 8 * hi;
      if (j >= r) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c = c0 + 8 * t + 4 * h;
        if (c >= K) continue;  // K % 4 == 0: a float4 is all in or all out
        const int e = h + 2 * hi;
        if (g_kr) {  // [K][r]: the 8 lanes of a column write 8 consecutive ranks
#pragma unroll
          for (int q = 0; q < 4; ++q) ps[static_cast<int64_t>(c + q) * r + j] = acc[i][q][e];
        } else {
          *reinterpret_cast<float4*>(ps + static_cast<int64_t>(j) * K + c) = make_float4(acc[i][0][e], acc[i][1][e], acc[i][2][e], acc[i][3][e]);
        }
      }
    }
  }
}

MaskArgs mask_args(const DropoutSpec& d) { return MaskArgs{d, dropout_threshold(d.p), d.p > 0.0f ? 1.0f / (1.0f - d.p) : 1.0f}; }

}  // namespace

bool lora_rows_mma(TrainBlas& blas, const float* X, int M, int K, const float* A, int r, float alpha, const DropoutSpec& d,
                   float* U) {
  if (r > 32 || K % 4 != 0 || !aligned_to(X, 16) || !aligned_to(A, 16) || !aligned_to(d.norm_w, 16)) return false;
  if (M <= 0 || K <= 0 || r <= 0) return true;
  // About kRowsWarpsPerSm warps per SM over (row tiles) x (K splits), each split a multiple of
  // 16 columns and at least 8 steps (the partials cost 1/8 of the reads then).
  const int tiles = (M + 15) / 16, steps = (K + 15) / 16;
  const int want = std::max(1, std::min(steps / 8, (kRowsWarpsPerSm * sm_count() + tiles - 1) / tiles));
  const int kspan = (steps + want - 1) / want * 16, S = (K + kspan - 1) / kspan;
  auto* P = static_cast<float*>(blas.scratch(kSlotSplitK, static_cast<size_t>(S) * M * r * sizeof(float)));
  const dim3 grid(static_cast<unsigned>((tiles + kWarps - 1) / kWarps), static_cast<unsigned>(S));
  const MaskArgs ma = mask_args(d);
  cudaStream_t st = blas.stream();
  auto run = [&](auto nt, auto x16) {
    lora_rows_mma_kernel<decltype(nt)::value, decltype(x16)::value><<<grid, kWarps * 32, 0, st>>>(X, M, K, A, r, kspan, ma, P);
  };
  auto with_nt = [&](auto x16) {
    if (r <= 8) {
      run(std::integral_constant<int, 1>{}, x16);
    } else if (r <= 16) {
      run(std::integral_constant<int, 2>{}, x16);
    } else {
      run(std::integral_constant<int, 4>{}, x16);
    }
  };
  if (d.x_f16) {
    with_nt(std::true_type{});
  } else {
    with_nt(std::false_type{});
  }
  TERN_CUDA_LAUNCHED("lora_rows_mma_kernel");
  launch_partials_sum(P, S, static_cast<int64_t>(M) * r, alpha, U, false, st, 0, d.norm_rs, r);
  return true;
}

bool lora_cols_mma(TrainBlas& blas, const float* U, const float* X, int M, int K, int r, float alpha, const DropoutSpec& d, float* G,
                   int ldx, bool g_kr) {
  if (ldx == 0) ldx = K;
  if (r > 32 || K % 4 != 0 || ldx % 4 != 0 || !aligned_to(X, 16) || (folded(d) && g_kr) || (d.x_f16 && (K % 8 != 0 || ldx % 8 != 0))) {
    return false;
  }
  if (M <= 0 || K <= 0 || r <= 0) return true;
  // About kColsBlocksPerSm blocks per SM over (128-column strips) x (row chunks of kColsStep-row steps).
  const int strips = (K + kColsWidth - 1) / kColsWidth, steps = (M + kColsStep - 1) / kColsStep;
  const int want = std::max(1, std::min(steps, (kColsBlocksPerSm * sm_count() + strips - 1) / strips));
  const int chunk = (steps + want - 1) / want * kColsStep, S = (M + chunk - 1) / chunk;
  auto* P = static_cast<float*>(blas.scratch(kSlotSplitK, static_cast<size_t>(S) * r * K * sizeof(float)));
  const dim3 grid(static_cast<unsigned>(strips), static_cast<unsigned>(S));
  DropoutSpec dd = d;
  dd.write_bits = false;
  const MaskArgs ma = mask_args(dd);
  cudaStream_t st = blas.stream();
  auto run = [&](auto mt, auto x16) {
    constexpr int kMt = decltype(mt)::value;
    constexpr bool kX16 = decltype(x16)::value;
    lora_cols_mma_kernel<kMt, kX16><<<grid, kWarps * 32, kColsStages * cols_stage_floats<kMt, kX16>() * sizeof(float), st>>>(
        U, X, ldx, M, K, r, chunk, ma, g_kr ? 1 : 0, P);
  };
  auto with_mt = [&](auto x16) {
    if (r <= 16) {
      run(std::integral_constant<int, 1>{}, x16);
    } else {
      run(std::integral_constant<int, 2>{}, x16);
    }
  };
  if (d.x_f16) {
    with_mt(std::true_type{});
  } else {
    with_mt(std::false_type{});
  }
  TERN_CUDA_LAUNCHED("lora_cols_mma_kernel");
  launch_partials_sum(P, S, static_cast<int64_t>(r) * K, alpha, G, true, st, 0, nullptr, 1, d.norm_w, K);
  return true;
}

}  // namespace tern::cuda
