// Decode (M = 1) ternary GEMV on 2-bit weights x int8 activations with __dp4a.
// CPU reference: ternary_linear in backend/cpu/cpu_engine.cpp (cpu::quantize_row_i8,
// cpu::ternary_dot, y = dot / s * m) and cpu::gated_activation for the gate/up epilogue.
//
// A block owns TPB 16-row tiles (tern2-mma layout, kernels.h). Its prologue RMSNorms and
// quantizes the float input into shared memory (every block redoes this small step:
// it saves a launch and a round trip), while the first weight loads are already in
// flight. The 8 warps split K: warp w takes 128-blocks w, w+8, ...; each lane loads 16
// bytes (rows g and g+8 of the tile, 4 words) per block, 32 lanes = 512 contiguous bytes.
// Per word and shift s, (word >> (6-2s)) & 0x03030303 holds 4 codes (w+1) that __dp4a
// multiplies with 4 int8 activations; sum(q) is subtracted at the end (code = w + 1).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/norm_quant.cuh"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256, kWarps = 8;
// Weight blocks per tile prefetched before the prologue: 32 registers of uint4 in all.
template <int TPB>
constexpr int kPre = 8 / TPB;
constexpr uint32_t kMask = 0x03030303u;

// Accumulates one 512-byte block of a tile: rows g (accA) and g+8 (accB).
// a: this lane's 8 permuted activation words of the block (t = lane % 4).
__device__ __forceinline__ void dot_block(const uint4 w, const uint32_t* a, int& accA, int& accB) {
  const uint4 a0 = *reinterpret_cast<const uint4*>(a);      // (s0,h0) (s0,h1) (s1,h0) (s1,h1)
  const uint4 a1 = *reinterpret_cast<const uint4*>(a + 4);  // (s2,h0) (s2,h1) (s3,h0) (s3,h1)
  accA = __dp4a(static_cast<int>((w.x >> 6) & kMask), static_cast<int>(a0.x), accA);
  accA = __dp4a(static_cast<int>((w.z >> 6) & kMask), static_cast<int>(a0.y), accA);
  accB = __dp4a(static_cast<int>((w.y >> 6) & kMask), static_cast<int>(a0.x), accB);
  accB = __dp4a(static_cast<int>((w.w >> 6) & kMask), static_cast<int>(a0.y), accB);
  accA = __dp4a(static_cast<int>((w.x >> 4) & kMask), static_cast<int>(a0.z), accA);
  accA = __dp4a(static_cast<int>((w.z >> 4) & kMask), static_cast<int>(a0.w), accA);
  accB = __dp4a(static_cast<int>((w.y >> 4) & kMask), static_cast<int>(a0.z), accB);
  accB = __dp4a(static_cast<int>((w.w >> 4) & kMask), static_cast<int>(a0.w), accB);
  accA = __dp4a(static_cast<int>((w.x >> 2) & kMask), static_cast<int>(a1.x), accA);
  accA = __dp4a(static_cast<int>((w.z >> 2) & kMask), static_cast<int>(a1.y), accA);
  accB = __dp4a(static_cast<int>((w.y >> 2) & kMask), static_cast<int>(a1.x), accB);
  accB = __dp4a(static_cast<int>((w.w >> 2) & kMask), static_cast<int>(a1.y), accB);
  accA = __dp4a(static_cast<int>(w.x & kMask), static_cast<int>(a1.z), accA);
  accA = __dp4a(static_cast<int>(w.z & kMask), static_cast<int>(a1.w), accA);
  accB = __dp4a(static_cast<int>(w.y & kMask), static_cast<int>(a1.z), accB);
  accB = __dp4a(static_cast<int>(w.w & kMask), static_cast<int>(a1.w), accB);
}

// PER: register slots per thread of the norm+quant prologue (n <= 1024 * PER; 0 = loop
// over any n). Small PER keeps the kernel under ~80 registers: 3 blocks per SM.
template <int TPB, int EPI, int PER>
__global__ void __launch_bounds__(kThreads, PER <= 3 ? 3 : 2) gemv_kernel(const GemvArgs p) {
  extern __shared__ uint4 smem_dyn[];
  uint32_t* act = reinterpret_cast<uint32_t*>(smem_dyn);  // kwords permuted int8x4 words
  __shared__ NormScratch sc;
  __shared__ int part[kWarps][TPB][16];
  __shared__ float ys[TPB * 16];
  __shared__ float s_scale;
  __shared__ int32_t s_qsum;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nblk = p.w.nblk, kwords = nblk * 32;
  const int tile0 = blockIdx.x * TPB;

  pdl_trigger();
  // Weight prefetch: issued before the prologue (and, with PDL, while the previous
  // kernel still runs) so its latency overlaps the wait and the norm.
  uint4 pre[TPB][kPre<TPB>];
#pragma unroll
  for (int j = 0; j < TPB; ++j) {
    const uint4* base = p.w.data + static_cast<int64_t>(tile0 + j) * nblk * 32 + lane;
#pragma unroll
    for (int i = 0; i < kPre<TPB>; ++i) {
      const int b = warp + kWarps * i;
      pre[j][i] = (b < nblk && tile0 + j < p.w.ntiles) ? ld_stream(base + b * 32) : make_uint4(0, 0, 0, 0);
    }
  }

  // Epilogue constants are weights too: fetched before the wait, not after the dot.
  const int ej = threadIdx.x >> 4, er = threadIdx.x & 15;
  const bool epi_thread = threadIdx.x < TPB * 16 && tile0 + ej < p.w.ntiles;
  TileMeta meta{};
  if (epi_thread) meta = p.w.meta[tile0 + ej];
  TileMeta gate_meta{};
  if constexpr (EPI == kEpiGateUp) {
    if (threadIdx.x < TPB * 8 && tile0 + 2 * ej < p.w.ntiles) gate_meta = p.w.meta[tile0 + 2 * ej];
  }

  pdl_wait();
  // The residual this thread will add to: loaded now, in parallel with the input.
  float resid = 0.0f;
  if constexpr (EPI == kEpiAdd) {
    if (epi_thread && er < meta.valid) resid = p.out[meta.out_row0 + er];
  }
  if (p.preq != nullptr) {
    for (int i = threadIdx.x; i < kwords; i += kThreads) act[i] = p.preq[i];
    if (threadIdx.x == 0) {
      s_scale = p.pre_s;
      s_qsum = p.pre_qsum;
    }
  } else {
    if constexpr (PER > 0) {
      norm_quant_regs<kThreads, PER, PlainRow, true>(PlainRow{p.in, p.n}, p.normw, p.n, kwords, p.eps, act, &s_scale, &s_qsum, sc);
    } else {
      norm_quant_loop<kThreads>(PlainRow{p.in, p.n}, p.normw, p.n, kwords, p.eps, act, &s_scale, &s_qsum, sc);
    }
  }
  __syncthreads();

  const int t = lane & 3, g = lane >> 2;
#pragma unroll
  for (int j = 0; j < TPB; ++j) {
    int accA = 0, accB = 0;
    if (tile0 + j < p.w.ntiles) {
#pragma unroll
      for (int i = 0; i < kPre<TPB>; ++i) {
        const int b = warp + kWarps * i;
        if (b < nblk) dot_block(pre[j][i], act + b * 32 + t * 8, accA, accB);
      }
      const uint4* base = p.w.data + static_cast<int64_t>(tile0 + j) * nblk * 32 + lane;
#pragma unroll 4
      for (int b = warp + kWarps * kPre<TPB>; b < nblk; b += kWarps) dot_block(ld_stream(base + b * 32), act + b * 32 + t * 8, accA, accB);
    }
    accA += __shfl_xor_sync(kFullMask, accA, 1);
    accA += __shfl_xor_sync(kFullMask, accA, 2);
    accB += __shfl_xor_sync(kFullMask, accB, 1);
    accB += __shfl_xor_sync(kFullMask, accB, 2);
    if (t == 0) {
      part[warp][j][g] = accA;
      part[warp][j][g + 8] = accB;
    }
  }
  __syncthreads();

  if (epi_thread) {
    const int j = ej, r = er;
    int qs = s_qsum;
    if (PER > 0 && p.preq == nullptr) {  // norm_quant_regs left per-warp partials
      qs = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) qs += sc.i[w];
    }
    int d = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) d += part[w][j][r];
    d -= qs;
    const TileMeta m = meta;
    // Explicit roundings: a contracted fma(d/s, m, x) in the residual add would differ
    // from the CPU's two roundings by an ulp, and int8 rounding ties amplify that.
    float y = __fmul_rn(__fdiv_rn(static_cast<float>(d), s_scale), m.scale);
    if (p.lora_R > 0 && r < m.valid) y = __fadd_rn(y, lora_dot(p.lora_B + static_cast<int64_t>(m.out_row0 + r) * p.lora_R, p.lora_t, p.lora_R));
    if constexpr (EPI == kEpiStore) {
      if (r < m.valid) p.out[m.out_row0 + r] = y;
    } else if constexpr (EPI == kEpiAdd) {
      if (r < m.valid) p.out[m.out_row0 + r] = __fadd_rn(resid, y);
    } else if constexpr (EPI == kEpiRaw) {
      if (r < m.valid) p.raw[m.out_row0 + r] = d;
    } else {
      ys[threadIdx.x] = y;
    }
  }
  if constexpr (EPI == kEpiGateUp) {
    // Tiles (2p, 2p+1) of the block are (gate j, up j).
    __syncthreads();
    if (threadIdx.x < TPB * 8) {
      const int pr = threadIdx.x >> 4, r = threadIdx.x & 15;
      if (tile0 + 2 * pr < p.w.ntiles) {
        const TileMeta m = gate_meta;
        if (r < m.valid) p.out[m.out_row0 + r] = gated(ys[2 * pr * 16 + r], ys[(2 * pr + 1) * 16 + r], p.act);
      }
    }
  }
}

template <int TPB, int EPI, int PER>
void launch_per(const GemvArgs& a, cudaStream_t st, bool pdl) {
  const int blocks = (a.w.ntiles + TPB - 1) / TPB;
  const size_t smem = static_cast<size_t>(a.w.kwords()) * 4;
  if (smem > 48 * 1024) {
    TERN_CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<TPB, EPI, PER>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  launch_kernel("gemv_kernel", gemv_kernel<TPB, EPI, PER>, dim3(blocks), dim3(kThreads), smem, st, pdl, a);
}

template <int TPB, int EPI>
void launch(const GemvArgs& a, cudaStream_t st, bool pdl) {
  // The pre-quantized test path needs no prologue registers.
  if (a.preq != nullptr || a.n <= 4 * kThreads) return launch_per<TPB, EPI, 1>(a, st, pdl);
  if (a.n <= 12 * kThreads) return launch_per<TPB, EPI, 3>(a, st, pdl);
  if (a.n <= 28 * kThreads) return launch_per<TPB, EPI, 7>(a, st, pdl);
  return launch_per<TPB, EPI, 0>(a, st, pdl);
}

}  // namespace

void launch_gemv(int epi, const GemvArgs& a, cudaStream_t st, bool pdl) {
  if (a.w.ntiles == 0) return;
  switch (epi) {
    case kEpiStore: return launch<1, kEpiStore>(a, st, pdl);
    case kEpiAdd: return launch<1, kEpiAdd>(a, st, pdl);
    case kEpiRaw: return launch<1, kEpiRaw>(a, st, pdl);
    case kEpiGateUp:
      if (a.w.ntiles % 2 != 0) throw_error("launch_gemv: gate/up needs an even number of tiles");
      return launch<4, kEpiGateUp>(a, st, pdl);
  }
  throw_error("launch_gemv: unknown epilogue");
}

}  // namespace tern::cuda
