// Shared pieces of the F16 flash-attention kernels of the training step
// (flash_attention.cu: forward, flash_attention_bwd.cu: backward).
//
// A block has 4 warps of 16 rows (queries or keys) and walks the other side kStep
// positions at a time. Operands arrive as float32 rows [B*T][ld] (heads of HD columns),
// are staged by cp.async, multiplied by a power of two that brings the operand's largest
// magnitude into [4, 8) (F16's range is narrow; the scale is exact and undone on the
// results) and stored as F16 tiles: 16-byte chunk c of row r at c ^ (r & 7), so that
// ldmatrix reads 8 rows of one chunk without bank conflicts.
#pragma once

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/launch.h"
#include "backend/cuda/mma_f16.cuh"

namespace tern::cuda {
namespace {

constexpr int kThreads = 128;   // 4 warps of 16 rows
constexpr int kBlockRows = 64;  // rows a block owns
constexpr int kStep = 32;       // positions per step of the walk

// Byte offset of 16-byte chunk c of row r in a swizzled F16 tile of HD columns.
template <int HD>
__device__ __forceinline__ int tile_off(int r, int c) {
  return r * (HD * 2) + ((c ^ (r & 7)) << 4);
}

// The power of two s with amax * s in [4, 8); 1 where amax is 0 or not finite.
__device__ __forceinline__ float range_scale(float amax) {
  if (!(amax > 0.0f) || !isfinite(amax)) return 1.0f;
  int e;
  frexpf(amax, &e);  // amax in [2^(e-1), 2^e)
  return ldexpf(1.0f, max(-126, min(126, 3 - e)));
}
struct Scales {
  float q, k, v, d;
};
// amax: the largest |q|, |k|, |v|, |dO| (the prep kernels, publish_amax).
__device__ __forceinline__ Scales load_scales(const float* amax) {
  return {range_scale(amax[0]), range_scale(amax[1]), range_scale(amax[2]), range_scale(amax[3])};
}

__device__ __forceinline__ uint2 f16x4(float4 a, float s) { return make_uint2(pack_f16(a.x * s, a.y * s), pack_f16(a.z * s, a.w * s)); }

// Rows r0 .. r0 + ROWS - 1 of base[T][ld] (HD columns) times s into an F16 tile; rows past
// T are zeros.
template <int HD, int ROWS>
__device__ __forceinline__ void load_f16_tile(char* tile, const float* base, int ld, int r0, int T, float s) {
  constexpr int C4 = HD / 4;
#pragma unroll 4
  for (int i = threadIdx.x; i < ROWS * C4; i += kThreads) {
    const int r = i / C4, c = i % C4;
    const float4 x = r0 + r < T ? load_float4(base + static_cast<int64_t>(r0 + r) * ld + 4 * c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    *reinterpret_cast<uint2*>(tile + tile_off<HD>(r, c >> 1) + 8 * (c & 1)) = f16x4(x, s);
  }
}

// The same in two halves, so that the loads overlap the previous step's products:
// stage_rows copies the raw floats by cp.async into stage[ROWS][HD], stage_to_f16 (after
// cp_async_wait and a barrier) converts them into the tile.
template <int HD, int ROWS>
__device__ __forceinline__ void stage_rows(float* stage, const float* base, int ld, int r0, int T) {
  constexpr int C4 = HD / 4;
#pragma unroll
  for (int it = 0; it < ROWS * C4 / kThreads; ++it) {
    const int i = threadIdx.x + it * kThreads, r = i / C4, c = i % C4;
    const bool in = r0 + r < T;
    cp_async16(stage + r * HD + 4 * c, in ? base + static_cast<int64_t>(r0 + r) * ld + 4 * c : base, in ? 16 : 0);
  }
}
template <int HD, int ROWS>
__device__ __forceinline__ void stage_to_f16(char* tile, const float* stage, float s) {
  constexpr int C4 = HD / 4;
#pragma unroll
  for (int it = 0; it < ROWS * C4 / kThreads; ++it) {
    const int i = threadIdx.x + it * kThreads, r = i / C4, c = i % C4;
    *reinterpret_cast<uint2*>(tile + tile_off<HD>(r, c >> 1) + 8 * (c & 1)) = f16x4(load_float4(stage + r * HD + 4 * c), s);
  }
}

// A block of kBlockRows queries of one head walking the keys up to its last query, kStep at
// a time (the forward, and the backward's q kernel; the longest walks are scheduled first):
// K and V rows are staged by cp.async and become the F16 tiles Ks, Vs at each step.
template <int HD>
struct QueryWalk {
  const float *k, *v;
  float* stage;  // [K | V][kStep][HD] floats
  char *Ks, *Vs;
  int ld, T, h, kvh, q0, steps;
  int64_t seq;
  float sk, sv;
  __device__ QueryWalk(const float* k_, const float* v_, int ld_, int T_, int nh, int nkv, float* stage_, char* Ks_, char* Vs_, const Scales& sc)
      : k(k_), v(v_), stage(stage_), Ks(Ks_), Vs(Vs_), ld(ld_), T(T_), sk(sc.k), sv(sc.v) {
    h = blockIdx.x % nh, kvh = h / (nh / nkv);
    seq = static_cast<int64_t>(blockIdx.x / nh) * T;
    q0 = (gridDim.y - 1 - blockIdx.y) * kBlockRows;
    steps = (min(T, q0 + kBlockRows) + kStep - 1) / kStep;
  }
  __device__ void issue(int step) const {
    stage_rows<HD, kStep>(stage, k + seq * ld + kvh * HD, ld, step * kStep, T);
    stage_rows<HD, kStep>(stage + kStep * HD, v + seq * ld + kvh * HD, ld, step * kStep, T);
  }
  // Before working on `step`: its keys in Ks, Vs for the whole block, the next step's requested.
  __device__ void advance(int step) const {
    cp_async_wait<0>();
    __syncthreads();  // the step's keys have landed; the last step's products are done
    stage_to_f16<HD, kStep>(Ks, stage, sk);
    stage_to_f16<HD, kStep>(Vs, stage + kStep * HD, sv);
    __syncthreads();
    if (step + 1 < steps) issue(step + 1);
    cp_async_commit();
  }
};

// acc[j] += X[xr .. xr + 15] Y[8j .. 8j + 7]^T over the HD columns, j < 4 (a 16 x 32 block),
// X's A fragments from the tile (or xf, when given), Y's rows as B.
template <int HD>
__device__ __forceinline__ void rows_product(float (&acc)[4][4], const char* X, int xr, const uint32_t (*xf)[4], const char* Y, int lane) {
  const int ra = (lane & 7) + ((lane >> 3) & 1) * 8, ca = lane >> 4;  // A: matrices (rows, k) 0/8 x 0/8
  const int rb = (lane & 7) + (lane >> 4) * 8, cb = (lane >> 3) & 1;  // B pairs: (n, k) 0/8 x 0/8
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
    uint32_t a[4];
    if (xf != nullptr) {
#pragma unroll
      for (int e = 0; e < 4; ++e) a[e] = xf[ks][e];
    } else {
      ldsm_x4(a, X + tile_off<HD>(xr + ra, 2 * ks + ca));
    }
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      uint32_t b[4];
      ldsm_x4(b, Y + tile_off<HD>(16 * jj + rb, 2 * ks + cb));
      mma_f16(acc[2 * jj], a, b[0], b[1]);
      mma_f16(acc[2 * jj + 1], a, b[2], b[3]);
    }
  }
}

// The A fragments of rows r .. r + 15 of a tile, for rows_product's xf.
template <int HD>
__device__ __forceinline__ void row_fragments(uint32_t (&f)[HD / 16][4], const char* X, int r, int lane) {
  const int ra = (lane & 7) + ((lane >> 3) & 1) * 8, ca = lane >> 4;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) ldsm_x4(f[ks], X + tile_off<HD>(r + ra, 2 * ks + ca));
}

// out[i] += A Z[0 .. 31] with A (16 x 32) in rows_product's accumulator layout and Z's 32
// rows of HD columns from the tile (out[i]: columns 8i .. 8i + 7).
template <int HD>
__device__ __forceinline__ void acc_product(float (&out)[HD / 8][4], const float (&acc)[4][4], const char* Z, int lane) {
  const int ra = (lane & 7) + ((lane >> 3) & 1) * 8, ca = lane >> 4;
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    uint32_t a[4];
    acc_to_a(a, acc[2 * kk], acc[2 * kk + 1]);
#pragma unroll
    for (int jj = 0; jj < HD / 16; ++jj) {
      uint32_t b[4];
      ldsm_x4_trans(b, Z + tile_off<HD>(16 * kk + ra, 2 * jj + ca));
      mma_f16(out[2 * jj], a, b[0], b[1]);
      mma_f16(out[2 * jj + 1], a, b[2], b[3]);
    }
  }
}

// Row row0 (m0 times acc[.][0..1]) and row0 + 8 (m1 times acc[.][2..3]) of acc_product's
// output into dst rows of ld; rows >= T are not written. With rope (rope_table's [pos][HD/2]
// cos, sin; the row is its position): the inverse rotation first, the backward of RoPE
// (column c's partner c + HD/2 sits in tile i + HD/16 of the same lane).
template <int HD>
__device__ __forceinline__ void store_rows(float (&acc)[HD / 8][4], float m0, float m1, float* dst, int64_t ld, int row0, int T, int t,
                                           const float2* rope = nullptr) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + 8 * half;
    const float mul = half == 0 ? m0 : m1;
    if (row >= T) continue;
    if (rope != nullptr) {
#pragma unroll
      for (int i = 0; i < HD / 16; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float2 cs = rope[static_cast<int64_t>(row) * (HD / 2) + 8 * i + 2 * t + e];
          float& a = acc[i][2 * half + e];
          float& b = acc[i + HD / 16][2 * half + e];
          const float x = a, y = b;
          a = x * cs.x + y * cs.y, b = y * cs.x - x * cs.y;
        }
      }
    }
    float* o = dst + static_cast<int64_t>(row) * ld + 2 * t;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) {
      *reinterpret_cast<float2*>(o + 8 * i) = make_float2(acc[i][2 * half] * mul, acc[i][2 * half + 1] * mul);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
}

__device__ __forceinline__ float absmax4(float4 x, float m) { return fmaxf(fmaxf(m, fmaxf(fabsf(x.x), fabsf(x.y))), fmaxf(fabsf(x.z), fabsf(x.w))); }

// The prep kernels (a warp per (row, head) pair, grid-stride): each block folds its
// largest magnitudes of q, k, v, dO into amax[0..3] as float bits (unsigned order is float
// order for values >= 0; amax zeroed before), one atomic per block and value.
constexpr int kPrepThreads = 256;
__device__ __forceinline__ void publish_amax(const float (&r)[4], float* red, unsigned* amax) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float x = block_reduce<kPrepThreads>(r[i], red, MaxOp{});
    if (threadIdx.x == 0) atomicMax(amax + i, __float_as_uint(x));
  }
}
// A few blocks per SM for `pairs` warps of work.
inline unsigned prep_blocks(int64_t pairs) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(4 * static_cast<int64_t>(sm_count()), (pairs + kPrepThreads / 32 - 1) / (kPrepThreads / 32))));
}

}  // namespace
}  // namespace tern::cuda
