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
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/device_util.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kWarps = 8, kTokens = 64, kStages = 3, kRowWords = 36;
constexpr uint32_t kMask = 0x03030303u;

template <int EPI>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemmArgs p) {
  __shared__ __align__(16) uint32_t sa[kStages][kTokens * kRowWords];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int nblk = p.w.nblk, kwords = nblk * 32;
  const int tile = blockIdx.x * kWarps + warp;
  const bool active = tile < p.w.ntiles;
  const int tok0 = blockIdx.y * kTokens;

  auto load_stage = [&](int stage, int b) {
    for (int c = threadIdx.x; c < kTokens * 8; c += kThreads) {
      const int tok = c >> 3, part = c & 7;
      const bool ok = tok0 + tok < p.M;
      const uint32_t* src = ok ? p.act + static_cast<int64_t>(tok0 + tok) * kwords + b * 32 + part * 4 : p.act;
      cp_async16(&sa[stage][tok * kRowWords + part * 4], src, ok ? 16 : 0);
    }
  };

  int acc[8][4];
#pragma unroll
  for (int f = 0; f < 8; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0;

  const uint4* wbase = p.w.data + static_cast<int64_t>(active ? tile : 0) * nblk * 32 + lane;
  load_stage(0, 0);
  cp_async_commit();
  if (nblk > 1) load_stage(1, 1);
  cp_async_commit();
  uint4 wcur = active ? ld_stream(wbase) : make_uint4(0, 0, 0, 0);

  for (int b = 0; b < nblk; ++b) {
    const uint4 wnext = (active && b + 1 < nblk) ? ld_stream(wbase + (b + 1) * 32) : make_uint4(0, 0, 0, 0);
    cp_async_wait<1>();
    __syncthreads();
    if (active) {
      uint32_t a[4][4];
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int sh = 6 - 2 * s;
        a[s][0] = (wcur.x >> sh) & kMask;
        a[s][1] = (wcur.y >> sh) & kMask;
        a[s][2] = (wcur.z >> sh) & kMask;
        a[s][3] = (wcur.w >> sh) & kMask;
      }
      const uint32_t* st = sa[b % kStages];
#pragma unroll
      for (int f = 0; f < 8; ++f) {
        const uint32_t* row = st + (f * 8 + g) * kRowWords + t * 8;
        const uint4 lo = *reinterpret_cast<const uint4*>(row);
        const uint4 hi = *reinterpret_cast<const uint4*>(row + 4);
        mma_s8_16832(acc[f], a[0][0], a[0][1], a[0][2], a[0][3], lo.x, lo.y);
        mma_s8_16832(acc[f], a[1][0], a[1][1], a[1][2], a[1][3], lo.z, lo.w);
        mma_s8_16832(acc[f], a[2][0], a[2][1], a[2][2], a[2][3], hi.x, hi.y);
        mma_s8_16832(acc[f], a[3][0], a[3][1], a[3][2], a[3][3], hi.z, hi.w);
      }
    }
    // Stage (b+2)%3 was last read in iteration b-1, which every thread has left.
    if (b + 2 < nblk) load_stage((b + 2) % kStages, b + 2);
    cp_async_commit();
    wcur = wnext;
  }
  cp_async_wait<0>();

  if (!active) return;
  const TileMeta m = p.w.meta[tile];
#pragma unroll
  for (int f = 0; f < 8; ++f) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = g + (i >= 2 ? 8 : 0);
      const int tok = tok0 + f * 8 + 2 * t + (i & 1);
      if (tok >= p.M || r >= m.valid) continue;
      const int d = acc[f][i] - p.qsum[tok];
      const int64_t o = static_cast<int64_t>(tok) * p.ldo + m.out_row0 + r;
      if constexpr (EPI == kEpiRaw) {
        p.raw[o] = d;
      } else {
        // Explicit roundings, no fma contraction (see ternary_gemv.cu).
        const float y = __fmul_rn(__fdiv_rn(static_cast<float>(d), p.s[tok]), m.scale);
        if constexpr (EPI == kEpiAdd) {
          p.out[o] = __fadd_rn(p.out[o], y);
        } else {
          p.out[o] = y;
        }
      }
    }
  }
}

template <int EPI>
void launch(const GemmArgs& a, cudaStream_t st) {
  const dim3 grid((a.w.ntiles + kWarps - 1) / kWarps, (a.M + kTokens - 1) / kTokens);
  gemm_kernel<EPI><<<grid, kThreads, 0, st>>>(a);
  TERN_CUDA_LAUNCHED("gemm_kernel");
}

}  // namespace

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
