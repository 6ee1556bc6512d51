// One pass over a linear's output gradient dy for the LoRA backward (--precision tf32):
// du = s dy B and dB += s dy^T u of every adapted part, and, where dy's producer supplied
// the row scales, the one-term F16 split of dy for the STE product (TrainBlas::terms_gemm).
// Before, du (cuBLAS), dB (lora_mma.cu's cols kernel) and split_gemm's split pass each
// read dy on their own: 3 x 373 MB a layer at the 2b-4t shape.
//
// A block owns 128 columns (a warp 32) of one row chunk and streams its rows through a
// cp.async ring of 16-row steps (dy's tile and u's rows). Per step, on TF32 mma.m16n8k8:
//  dB: as lora_cols_mma_kernel: lane (g, t) = (lane / 4, lane % 4) reads dy[row t, t + 4,
//      t + 8, t + 12][4g .. 4g + 3]; the four columns of a float4 are four n-tiles, so the
//      block's [128 columns][r] sums stay in registers over the chunk ([S][N][r] partials).
//  du: the same tile read as rows g, g + 8 and columns 4t .. 4t + 3 of each 16: the
//      reduction index is permuted (k slot t <-> column 4t, t + 4 <-> 4t + 1, then 4t + 2 /
//      4t + 3) and B's fragment, fixed per lane for the whole kernel, follows it. The four
//      warps' [16][r] sums meet in shared memory (double-buffered: one barrier a step) and
//      leave as the block's [strip][M][r] partial.
//  split: the same float4s, scaled as split_rows_kernel scales them, stored as __half.
// IN16 (DyPass::dy_f16): dy arrives as that split itself (F16, half the bytes; its producer,
// the gating backward, wrote it instead of float32 dy): du and dB from it, the row scales
// applied to u's rows (dB) and to the du sums, 1 / the part's column scale to both.
// Partials are summed in order (dy_sums_kernel, one launch for every part): deterministic.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/launch.h"
#include "backend/cuda/mma_tf32.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kWarps = 4, kWidth = kWarps * 32, kStep = 16, kStages = 3, kRanks = 16;
// dy rows padded to kXLd floats (= 8 mod 32: the dB reads, rows t = 0..3, hit distinct
// banks; the du reads conflict 2-way), u rows to kULd (= 24 mod 32, as lora_mma.cu's).
// F16 dy rows (IN16) are kXLdH halves (288 bytes = 8 words mod 32: each bank serves two of
// the 16 rows' 64 bytes either read pattern touches, the minimum of two wavefronts).
constexpr int kXLd = kWidth + 8, kXLdH = kWidth + 16, kULd = 24;
template <bool IN16>
__host__ __device__ constexpr int stage_floats() {  // + the rows' rscale
  return kStep * ((IN16 ? kXLdH / 2 : kXLd) + kULd + 1);
}
// The du sums' exchange: [2][warp][row][kRedLd] (24 = 24 mod 32: the lanes' float2 stores
// hit distinct banks; with 16 they conflicted 4-way).
constexpr int kRedLd = 24, kRedFloats = 2 * kWarps * kStep * kRedLd;
template <bool IN16>
constexpr int smem_bytes() {  // 41.2 KB (float dy): 5 blocks per SM
  return (kStages * stage_floats<IN16>() + kRedFloats) * 4;
}

// Four consecutive dy values of a staged row (floats or F16).
template <bool IN16>
__device__ __forceinline__ float4 staged4(const float* xs, int row, int col) {
  if constexpr (IN16) {
    return load_half4(reinterpret_cast<const __half*>(xs) + row * kXLdH + col);
  } else {
    return *reinterpret_cast<const float4*>(xs + row * kXLd + col);
  }
}
// Row chunks per strip aim at this many blocks per SM (H100, 2b-4t step: 3, 5, 10 gave
// 29,423, 29,298, 29,333 tok/s; 5 fit at 93 registers under __launch_bounds__(128, 5)).
constexpr int kBlocksPerSm = 3;

struct DyArgs {
  int n, r;
  int beg[3], end[3];
  const float* B[3];
  const float* u[3];
  float* pdu;  // [strip][M][r]
  float* pdb;  // [chunk][N][r]
  const float* rscale;
  ColScales cs;
  __half* split;
};

template <bool IN16>
__global__ void __launch_bounds__(kWarps * 32, 5) lora_dy_kernel(const float* __restrict__ dy, int M, int N, int chunk, const DyArgs a) {
  constexpr int kStageFloats = stage_floats<IN16>();
  extern __shared__ float smem[];
  float* red = smem + kStages * kStageFloats;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int strip = blockIdx.x, cb0 = strip * kWidth, c0 = cb0 + 32 * warp;
  const float *Bp = nullptr, *Up = nullptr;
  int pbeg = 0, pend = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {  // (unrolled: a dynamic index into the arguments would copy them to the stack)
    if (i < a.n && cb0 >= a.beg[i] && cb0 < a.end[i]) Bp = a.B[i], Up = a.u[i], pbeg = a.beg[i], pend = a.end[i];
  }
  const bool lora = Bp != nullptr, split = !IN16 && a.split != nullptr;
  if (!lora && !split) return;
  // IN16: dy = split * rscale / cs; cs is one value on a part's columns (a strip lies in one part)
  const float inv_cs = IN16 ? 1.0f / a.cs.at(cb0) : 1.0f;
  const int r = a.r, s = blockIdx.y, m_begin = s * chunk, m_end = min(M, m_begin + chunk);
  const int steps = (m_end - m_begin + kStep - 1) / kStep;
  // A warp copies whole rows (512 or 256 bytes): the thread's rows rr0 + kRowStep i, its 16 bytes at column xc.
  constexpr int kPer = IN16 ? 8 : 4, kRowStep = kWarps * 32 / (kWidth / kPer);
  const int rr0 = threadIdx.x / (kWidth / kPer), xc = threadIdx.x % (kWidth / kPer) * kPer;
  const bool x_in = cb0 + xc < N;
  constexpr int kXF = IN16 ? kXLdH / 2 : kXLd;  // floats per staged dy row
  const int64_t lane_at = static_cast<int64_t>(m_begin + rr0) * N + cb0 + xc;
  auto issue = [&](int step) {
    float* st = smem + (step % kStages) * kStageFloats;
    const int r0 = m_begin + step * kStep;
#pragma unroll
    for (int i = 0; i < kStep / kRowStep; ++i) {
      const bool ok = r0 + rr0 + kRowStep * i < m_end && x_in;
      const int64_t at = lane_at + (static_cast<int64_t>(step) * kStep + kRowStep * i) * N;
      if constexpr (IN16) {
        const __half* src = reinterpret_cast<const __half*>(dy) + at;
        cp_async16(reinterpret_cast<__half*>(st) + (rr0 + kRowStep * i) * kXLdH + xc, ok ? static_cast<const void*>(src) : dy, ok ? 16 : 0);
      } else {
        cp_async16(st + (rr0 + kRowStep * i) * kXLd + xc, ok ? dy + at : dy, ok ? 16 : 0);
      }
    }
    if (lora && threadIdx.x < kStep * kRanks / 4) {  // u rows: r % 4 == 0, ranks past r zero
      const int rr = threadIdx.x / (kRanks / 4), j = threadIdx.x % (kRanks / 4) * 4;
      const bool ok = r0 + rr < m_end && j < r;
      cp_async16(st + kStep * kXF + rr * kULd + j, ok ? Up + static_cast<int64_t>(r0 + rr) * r + j : Up, ok ? 16 : 0);
    }
    if ((split || IN16) && threadIdx.x >= kWarps * 32 - kStep) {  // the rows' scales (a dependent load per step otherwise)
      const int rr = threadIdx.x - (kWarps * 32 - kStep);
      const bool ok = r0 + rr < m_end;
      cp_async4(st + kStep * (kXF + kULd) + rr, ok ? a.rscale + r0 + rr : a.rscale, ok ? 4 : 0);
    }
    cp_async_commit();
  };
  // B's fragment for du: bB[h][q][n] = B[column c0 + 16 h + 4 t + q][rank 8 n + g].
  uint32_t bB[2][4][2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int c = c0 + 16 * h + 4 * t + q;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const int j = 8 * n + g;
        bB[h][q][n] = lora && c < pend && j < r ? to_tf32(Bp[static_cast<int64_t>(c - pbeg) * r + j]) : 0u;
      }
    }
  }
  float accB[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q) accB[q][0] = accB[q][1] = accB[q][2] = accB[q][3] = 0.0f;
  // The block's du partial of step `st` (the four warps' sums in warp order) to global memory.
  auto flush_du = [&](int st) {
    const float* rb = red + (st & 1) * kWarps * kStep * kRedLd;
    const int r0 = m_begin + st * kStep;
    for (int e = threadIdx.x; e < kStep * kRanks; e += kWarps * 32) {
      const int row = e / kRanks, j = e % kRanks, at = row * kRedLd + j;
      if (j >= r || r0 + row >= m_end) continue;
      constexpr int W = kStep * kRedLd;
      a.pdu[(static_cast<int64_t>(strip) * M + r0 + row) * r + j] = ((rb[at] + rb[W + at]) + rb[2 * W + at]) + rb[3 * W + at];
    }
  };
  // The lane's split columns c0 + 16 h + 4 t + q keep their scales for the whole kernel.
  float csv[2][4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int q = 0; q < 4; ++q) csv[h][q] = a.cs.at(c0 + 16 * h + 4 * t + q);
  }
  // (split_half: split_rows_kernel's F16 value)
  auto store_split = [&](int row, int c, float4 v, const float (&cv)[4], SplitPow2 e) {
    if (row >= m_end || c >= N) return;
    const __half2 lo = __halves2half2(split_half(v.x * cv[0], e), split_half(v.y * cv[1], e));
    const __half2 hi = __halves2half2(split_half(v.z * cv[2], e), split_half(v.w * cv[3], e));
    uint2 pk;
    pk.x = *reinterpret_cast<const uint32_t*>(&lo), pk.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(a.split + static_cast<int64_t>(row) * N + c) = pk;
  };
  ring_start(steps, issue);
  for (int step = 0; step < steps; ++step) {
    ring_wait_refill(step, steps, issue);  // (its barrier also frees red[step & 1])
    if (lora && step > 0) flush_du(step - 1);
    const float* xs = smem + (step % kStages) * kStageFloats;
    const float* us = xs + kStep * kXF;
    const float* rs = us + kStep * kULd;
    const int r0 = m_begin + step * kStep;
    if (lora) {
#pragma unroll
      for (int uu = 0; uu < kStep / 8; ++uu) {
        const int la = 8 * uu + t, lb = la + 4;
        const float4 xa = staged4<IN16>(xs, la, 32 * warp + 4 * g);
        const float4 xb = staged4<IN16>(xs, lb, 32 * warp + 4 * g);
        const uint32_t b0[4] = {to_tf32(xa.x), to_tf32(xa.y), to_tf32(xa.z), to_tf32(xa.w)};
        const uint32_t b1[4] = {to_tf32(xb.x), to_tf32(xb.y), to_tf32(xb.z), to_tf32(xb.w)};
        const float sa = IN16 ? rs[la] : 1.0f, sb = IN16 ? rs[lb] : 1.0f;  // IN16: dy's row scales on u's rows
        const uint32_t a0 = to_tf32(us[la * kULd + g] * sa), a1 = to_tf32(us[la * kULd + g + 8] * sa);
        const uint32_t a2 = to_tf32(us[lb * kULd + g] * sb), a3 = to_tf32(us[lb * kULd + g + 8] * sb);
#pragma unroll
        for (int q = 0; q < 4; ++q) mma_tf32(accB[q], a0, a1, a2, a3, b0[q], b1[q]);
      }
    }
    const SplitPow2 e0 = split_pow2(split ? rs[g] : 1.0f), e1 = split_pow2(split ? rs[g + 8] : 1.0f);  // (past m_end: zeros, unused)
    float accU[2][2][4] = {};  // [h][n]: two independent chains per n (an mma waits on its accumulator)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int cl = 32 * warp + 16 * h + 4 * t;
      const float4 ya = staged4<IN16>(xs, g, cl);
      const float4 yb = staged4<IN16>(xs, g + 8, cl);
      if (lora) {
        const uint32_t p0 = to_tf32(ya.x), p1 = to_tf32(yb.x), p2 = to_tf32(ya.y), p3 = to_tf32(yb.y);
        const uint32_t q0 = to_tf32(ya.z), q1 = to_tf32(yb.z), q2 = to_tf32(ya.w), q3 = to_tf32(yb.w);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          mma_tf32(accU[h][n], p0, p1, p2, p3, bB[h][0][n], bB[h][1][n]);
          mma_tf32(accU[h][n], q0, q1, q2, q3, bB[h][2][n], bB[h][3][n]);
        }
      }
      if (split) {
        store_split(r0 + g, cb0 + cl, ya, csv[h], e0);
        store_split(r0 + g + 8, cb0 + cl, yb, csv[h], e1);
      }
    }
    if (lora) {  // accU[h][n]: rows g, g + 8 x ranks 8n + 2t, 8n + 2t + 1
      float* rb = red + ((step & 1) * kWarps + warp) * kStep * kRedLd;
      const float f0 = IN16 ? rs[g] * inv_cs : 1.0f, f1 = IN16 ? rs[g + 8] * inv_cs : 1.0f;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const float* u0 = accU[0][n];
        const float* u1 = accU[1][n];
        *reinterpret_cast<float2*>(rb + g * kRedLd + 8 * n + 2 * t) = make_float2((u0[0] + u1[0]) * f0, (u0[1] + u1[1]) * f0);
        *reinterpret_cast<float2*>(rb + (g + 8) * kRedLd + 8 * n + 2 * t) = make_float2((u0[2] + u1[2]) * f1, (u0[3] + u1[3]) * f1);
      }
    }
  }
  if (!lora || steps == 0) return;
  __syncthreads();
  flush_du(steps - 1);
  // accB[q][h + 2 hi]: rank g + 8 hi, column c0 + 4 (2t + h) + q.
  float* ps = a.pdb + static_cast<int64_t>(s) * N * r;
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const int j = g + 8 * hi;
    if (j >= r) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int c = c0 + 8 * t + 4 * h;
      if (c >= pend) continue;  // pend % 4 == 0
#pragma unroll
      for (int q = 0; q < 4; ++q) ps[static_cast<int64_t>(c + q) * r + j] = accB[q][h + 2 * hi] * inv_cs;
    }
  }
}

// Every part's du = scaling * (sum of its strips' partials) and dB += scaling * (sum of the
// row chunks' partials), in partial order (launch_partials_sum's arithmetic), in one launch:
// output ranges [0, end[0]), [end[0], end[1]), ... each with its partials' base, count and stride.
struct SumArgs {
  int n;
  int64_t end[6];
  const float* P[6];
  int64_t stride[6];
  int S[6];
  float* out[6];
  int accumulate[6];
  float alpha;
};

__global__ void __launch_bounds__(256) dy_sums_kernel(const SumArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  int64_t begin = 0;
#pragma unroll
  for (int k = 0; k < 6; ++k) {
    if (k < a.n && i >= begin && i < a.end[k]) {
      const int64_t o = i - begin;
      float sum = 0.0f;
      for (int s = 0; s < a.S[k]; ++s) sum += a.P[k][s * a.stride[k] + o];
      a.out[k][o] = a.accumulate[k] ? a.out[k][o] + a.alpha * sum : a.alpha * sum;
    }
    if (k < a.n) begin = a.end[k];
  }
}

bool enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TERN_TRAIN_DYPASS");
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}

}  // namespace

bool lora_dy_pass(TrainBlas& blas, const float* dy, int M, int N, const DyPass& p) {
  if (!enabled() || p.n < 1 || p.n > 3 || p.r < 1 || p.r > kRanks || p.r % 4 != 0 || N % 4 != 0 || !aligned_to(dy, 16)) return false;
  if (p.split != nullptr && (p.rscale == nullptr || !aligned_to(p.split, 8))) return false;
  if (p.dy_f16 && (p.rscale == nullptr || p.split != nullptr || N % 8 != 0)) return false;
  bool any = p.split != nullptr;
  for (int i = 0; i < p.n; ++i) {
    const DyPart& q = p.part[i];
    if (q.beg < 0 || q.beg >= q.end || q.end > N || q.beg % kWidth != 0 || (q.end % kWidth != 0 && q.end != N)) return false;
    if (i > 0 && q.beg < p.part[i - 1].end) return false;
    if (q.B != nullptr && (q.u == nullptr || q.du == nullptr || q.dB == nullptr || !aligned_to(q.u, 16))) return false;
    any = any || q.B != nullptr;
  }
  if (!any || M <= 0) return true;
  DyArgs a{};
  a.n = p.n, a.r = p.r;
  for (int i = 0; i < p.n; ++i) a.beg[i] = p.part[i].beg, a.end[i] = p.part[i].end, a.B[i] = p.part[i].B, a.u[i] = p.part[i].u;
  a.rscale = p.rscale, a.cs = p.cs, a.split = static_cast<__half*>(p.split);
  // About kBlocksPerSm blocks per SM over (128-column strips) x (row chunks of 16-row steps).
  const int strips = (N + kWidth - 1) / kWidth, steps = (M + kStep - 1) / kStep;
  const int want = std::max(1, std::min(steps, (kBlocksPerSm * sm_count() + strips - 1) / strips));
  const int chunk = (steps + want - 1) / want * kStep, S = (M + chunk - 1) / chunk;
  a.pdu = static_cast<float*>(blas.scratch(kSlotDuPart, static_cast<size_t>(strips) * M * p.r * sizeof(float)));
  a.pdb = static_cast<float*>(blas.scratch(kSlotSplitK, static_cast<size_t>(S) * N * p.r * sizeof(float)));
  cudaStream_t st = blas.stream();
  const dim3 grid(static_cast<unsigned>(strips), static_cast<unsigned>(S));
  if (p.dy_f16) {
    lora_dy_kernel<true><<<grid, kWarps * 32, smem_bytes<true>(), st>>>(dy, M, N, chunk, a);
  } else {
    lora_dy_kernel<false><<<grid, kWarps * 32, smem_bytes<false>(), st>>>(dy, M, N, chunk, a);
  }
  TERN_CUDA_LAUNCHED("lora_dy_kernel");
  // (one launch: per part and kind they were 14 launches a layer, ~1 ms a step on the H100)
  const int64_t mr = static_cast<int64_t>(M) * p.r;
  SumArgs sa{};
  sa.alpha = p.scaling;
  int64_t total = 0;
  auto add = [&](const float* P, int count, int64_t stride, int64_t n, float* out, bool accumulate) {
    sa.P[sa.n] = P, sa.S[sa.n] = count, sa.stride[sa.n] = stride, sa.out[sa.n] = out, sa.accumulate[sa.n] = accumulate ? 1 : 0;
    total += n;
    sa.end[sa.n++] = total;
  };
  for (int i = 0; i < p.n; ++i) {
    const DyPart& q = p.part[i];
    if (q.B == nullptr) continue;
    add(a.pdu + q.beg / kWidth * mr, (q.end - q.beg + kWidth - 1) / kWidth, mr, mr, q.du, false);
    add(a.pdb + static_cast<int64_t>(q.beg) * p.r, S, static_cast<int64_t>(N) * p.r, static_cast<int64_t>(q.end - q.beg) * p.r, q.dB, true);
  }
  if (total > 0) {
    dy_sums_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, st>>>(sa);
    TERN_CUDA_LAUNCHED("dy_sums_kernel");
  }
  return true;
}

}  // namespace tern::cuda
