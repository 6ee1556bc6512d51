// Prefill (M > 1) ternary GEMM on the int8 tensor cores (mma.sync m16n8k32 s8).
// CPU reference: ternary_linear in backend/cpu/cpu_engine.cpp (exact int32 dot of the
// codes with the int8 activations, minus sum(q), then y = dot / s * m).
//
// A block computes 8 tiles (128 rows) x 64 tokens; warp w owns tile 8*blockIdx.x + w and
// all 64 tokens (8 n-fragments, 32 int32 accumulators per lane). Per 128-block of K the
// 64 tokens' activations (128 B each, permuted layout) go through a 3-stage cp.async ring
// in shared memory (rows padded to 144 B: conflict-free 16-byte reads); each lane loads
// its 16 weight bytes straight from global (one block ahead) and decodes them into the
// A fragments of the 4 k-steps with a shift and a mask. The weights are used as codes
// (w + 1, 0..2), so sum(q) of each token is subtracted in the epilogue.
//
// Batched decode (M <= 64): there are too few blocks (20-108 for the 2b-4t shapes) to
// stream the weights at full bandwidth, so each lane keeps kWPre weight loads in flight,
// fragments without tokens are skipped, and K is split over gridDim.z (<= 4). Slice z covers K-blocks [z*nblk/Z, (z+1)*nblk/Z);
// every slice stores its int32 partial dots, and the last slice of a block position to
// finish (atomic counter) adds them up (integer sums: exact in any order) and runs the
// epilogue.
#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/device_util.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kWarps = 8, kTokens = 64, kStages = 3, kRowWords = 36, kWPreSmall = 4;
constexpr uint32_t kMask = 0x03030303u;

// SMALL (M <= 64, batched decode): kWPre weight loads in flight and split-K; prefill
// keeps one load in flight and 3 blocks per SM (fewer registers).
template <int EPI, bool SMALL>
__global__ void __launch_bounds__(kThreads, SMALL ? 1 : 3) gemm_kernel(const GemmArgs p) {
  constexpr int kWPre = SMALL ? kWPreSmall : 1;
  // Activation stages: kSt - 1 K-blocks are in flight (a small slice is loaded at once).
  constexpr int kSt = SMALL ? 5 : kStages;
  __shared__ __align__(16) uint32_t sa[kSt][kTokens * kRowWords];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int nblk = p.w.nblk, kwords = nblk * 32;
  const int tile = blockIdx.x * kWarps + warp;
  const bool active = tile < p.w.ntiles;
  const int tok0 = blockIdx.y * kTokens;
  const int ks = gridDim.z, kz = blockIdx.z;
  const int kb0 = static_cast<int>(static_cast<int64_t>(nblk) * kz / ks), kb1 = static_cast<int>(static_cast<int64_t>(nblk) * (kz + 1) / ks);

  // Token fragments (8 tokens each) this block really has: small batches skip the rest.
  const int nf = (min(kTokens, p.M - tok0) + 7) / 8;
  auto load_stage = [&](int stage, int b) {
    for (int c = threadIdx.x; c < nf * 8 * 8; c += kThreads) {
      const int tok = c >> 3, part = c & 7;
      const bool ok = tok0 + tok < p.M;
      const uint32_t* src = ok ? p.act + static_cast<int64_t>(tok0 + tok) * kwords + b * 32 + part * 4 : p.act;
      cp_async16(&sa[stage][tok * kRowWords + part * 4], src, ok ? 16 : 0);
    }
  };

  int acc[8][4];
#pragma unroll
  for (int f = 0; f < 8; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0;

  // Weights: kWPre K-blocks in flight per lane (one was not enough to hide DRAM latency
  // when a few blocks stream a whole matrix, i.e. batched decode).
  const uint4* wbase = p.w.data + static_cast<int64_t>(active ? tile : 0) * nblk * 32 + lane;
  uint4 wr[kWPre];
#pragma unroll
  for (int i = 0; i < kWPre; ++i) wr[i] = active && kb0 + i < kb1 ? ld_stream(wbase + (kb0 + i) * 32) : make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < kSt - 1; ++i) {
    if (kb0 + i < kb1) load_stage((kb0 + i) % kSt, kb0 + i);
    cp_async_commit();
  }

  for (int b0 = kb0; b0 < kb1; b0 += kWPre) {
#pragma unroll
    for (int i = 0; i < kWPre; ++i) {
      const int b = b0 + i;
      if (b >= kb1) break;  // uniform over the block
      cp_async_wait<kSt - 2>();
      __syncthreads();
      if (active) {
        const uint4 wcur = wr[i];
        uint32_t a[4][4];
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const int sh = 6 - 2 * s;
          a[s][0] = (wcur.x >> sh) & kMask;
          a[s][1] = (wcur.y >> sh) & kMask;
          a[s][2] = (wcur.z >> sh) & kMask;
          a[s][3] = (wcur.w >> sh) & kMask;
        }
        const uint32_t* st = sa[b % kSt];
#pragma unroll
        for (int f = 0; f < 8; ++f) {
          if (f >= nf) break;
          const uint32_t* row = st + (f * 8 + g) * kRowWords + t * 8;
          const uint4 lo = *reinterpret_cast<const uint4*>(row);
          const uint4 hi = *reinterpret_cast<const uint4*>(row + 4);
          mma_s8_16832(acc[f], a[0][0], a[0][1], a[0][2], a[0][3], lo.x, lo.y);
          mma_s8_16832(acc[f], a[1][0], a[1][1], a[1][2], a[1][3], lo.z, lo.w);
          mma_s8_16832(acc[f], a[2][0], a[2][1], a[2][2], a[2][3], hi.x, hi.y);
          mma_s8_16832(acc[f], a[3][0], a[3][1], a[3][2], a[3][3], hi.z, hi.w);
        }
        wr[i] = b + kWPre < kb1 ? ld_stream(wbase + (b + kWPre) * 32) : make_uint4(0, 0, 0, 0);
      }
      // Stage (b+kSt-1)%kSt was last read in iteration b-1, which every thread has left.
      if (b + kSt - 1 < kb1) load_stage((b + kSt - 1) % kSt, b + kSt - 1);
      cp_async_commit();
    }
  }
  cp_async_wait<0>();

  if (SMALL && ks > 1) {
    // Partial dots of this slice: [position][slice][f*4+i][thread], coalesced; only the
    // fragments with tokens.
    const int bpos = blockIdx.y * gridDim.x + blockIdx.x;
    int32_t* mine = p.split_part + (static_cast<int64_t>(bpos) * ks + kz) * 32 * kThreads + threadIdx.x;
#pragma unroll
    for (int f = 0; f < 8; ++f) {
      if (f >= nf) break;
#pragma unroll
      for (int i = 0; i < 4; ++i) mine[(f * 4 + i) * kThreads] = acc[f][i];
    }
    __threadfence();
    __syncthreads();
    __shared__ int s_last;
    if (threadIdx.x == 0) s_last = atomicAdd(p.split_count + bpos, 1) == ks - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // All loads of two fragments (up to 2 x 4 x kMaxSplits) are issued before any is
    // used: a loop of dependent L2 round trips made this reduction most of the kernel.
    const int32_t* all = p.split_part + static_cast<int64_t>(bpos) * ks * 32 * kThreads + threadIdx.x;
#pragma unroll
    for (int f0 = 0; f0 < 8; f0 += 2) {
      if (f0 >= nf) break;
      int v[2][4][kMaxSplits];
#pragma unroll
      for (int f = 0; f < 2; ++f) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int z = 0; z < kMaxSplits; ++z) {
            v[f][i][z] = z < ks ? __ldcg(all + (static_cast<int64_t>(z) * 32 + (f0 + f) * 4 + i) * kThreads) : 0;
          }
        }
      }
#pragma unroll
      for (int f = 0; f < 2; ++f) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          int sum = 0;
#pragma unroll
          for (int z = 0; z < kMaxSplits; ++z) sum += v[f][i][z];
          acc[f0 + f][i] = sum;
        }
      }
    }
    if (threadIdx.x == 0) p.split_count[bpos] = 0;  // ready for the next launch (graph replay)
  }

  // Epilogue. Every input it needs is loaded before the first store: with loads and
  // stores interleaved the compiler must assume they alias, and 32 dependent L2 round
  // trips per thread were most of a batched-decode GEMM's time.
  __shared__ float s_scale[kTokens];
  __shared__ int32_t s_qsum[kTokens];
  if (threadIdx.x < kTokens) {
    const int tok = tok0 + threadIdx.x;
    s_scale[threadIdx.x] = tok < p.M && EPI != kEpiRaw ? p.s[tok] : 1.0f;
    s_qsum[threadIdx.x] = tok < p.M ? p.qsum[tok] : 0;
  }
  const TileMeta m = active ? p.w.meta[tile] : TileMeta{};
  __syncthreads();
  if (!active) return;
  // Two halves of 4 fragments: the residuals of a half in registers (all of them would
  // spill at 3 blocks per SM).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (4 * h >= nf) break;
    float res[4][4];
#pragma unroll
    for (int ff = 0; ff < 4; ++ff) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int f = 4 * h + ff, r = g + (i >= 2 ? 8 : 0);
        const int tok = tok0 + f * 8 + 2 * t + (i & 1);
        const bool ok = f < nf && tok < p.M && r < m.valid;
        res[ff][i] = EPI == kEpiAdd && ok ? p.out[static_cast<int64_t>(tok) * p.ldo + m.out_row0 + r] : 0.0f;
      }
    }
#pragma unroll
    for (int ff = 0; ff < 4; ++ff) {
      const int f = 4 * h + ff;
      if (f >= nf) break;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = g + (i >= 2 ? 8 : 0);
        const int tt = f * 8 + 2 * t + (i & 1), tok = tok0 + tt;
        if (tok >= p.M || r >= m.valid) continue;
        const int d = acc[f][i] - s_qsum[tt];
        const int64_t o = static_cast<int64_t>(tok) * p.ldo + m.out_row0 + r;
        if constexpr (EPI == kEpiRaw) {
          p.raw[o] = d;
        } else {
          // Explicit roundings, no fma contraction (see ternary_gemv.cu).
          const float y = __fmul_rn(__fdiv_rn(static_cast<float>(d), s_scale[tt]), m.scale);
          p.out[o] = EPI == kEpiAdd ? __fadd_rn(res[ff][i], y) : y;
        }
      }
    }
  }
}

template <int EPI>
void launch(const GemmArgs& a, cudaStream_t st) {
  dim3 grid((a.w.ntiles + kWarps - 1) / kWarps, (a.M + kTokens - 1) / kTokens);
  const int positions = static_cast<int>(grid.x * grid.y);
  grid.z = static_cast<unsigned>(gemm_k_splits(a.w, a.M));
  if (grid.z > 1 && (a.split_part == nullptr || a.split_count == nullptr || positions > kMaxSplitPositions)) grid.z = 1;
  if (a.M <= kTokens) {
    gemm_kernel<EPI, true><<<grid, kThreads, 0, st>>>(a);
  } else {
    gemm_kernel<EPI, false><<<grid, kThreads, 0, st>>>(a);
  }
  TERN_CUDA_LAUNCHED("gemm_kernel");
}

}  // namespace

int gemm_k_splits(const TernDev& w, int M) {
  // Only a single token tile (batched decode) splits: prefill has blocks enough, and the
  // last slice's serial reduction (slices x 32 KB) must stay short.
  if (M > kTokens) return 1;
  const int positions = (w.ntiles + kWarps - 1) / kWarps;
  // About one block per SM, and at least 4 K-blocks per slice.
  const int want = (sm_count() + positions - 1) / positions;
  return std::max(1, std::min({want, w.nblk / 4, kMaxSplits}));
}

void launch_gemm(int epi, const GemmArgs& a, cudaStream_t st) {
  if (a.w.ntiles == 0 || a.M <= 0) return;
  switch (epi) {
    case kEpiStore: return launch<kEpiStore>(a, st);
    case kEpiAdd: return launch<kEpiAdd>(a, st);
    case kEpiRaw: return launch<kEpiRaw>(a, st);
  }
  throw_error("launch_gemm: unsupported epilogue");
}

}  // namespace tern::cuda
