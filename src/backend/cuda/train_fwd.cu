// Forward pieces of the LoRA training step (lora_train.cu) that the inference kernels do
// not provide in the form training needs: the normed float input of every linear (the
// LoRA branch and the backward read it) next to its int8 quantization (rows padded with
// zeros to the int8 GEMM's stride), the linear's scale epilogue on the GEMM's exact int32
// sums, residual adds, peft's dropout generated on the device, and row gather/scatter for
// the loss.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/mma_tf32.cuh"
#include "backend/cuda/norm_quant.cuh"
#include "backend/cuda/train_kernels.h"
#include "train/ops.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Three passes over the row: value (+ h_out) and sum of squares, the normed value
// (+ xn_out) and its absmax, the quantized values (then zeros up to ldq). VPT > 0: the row
// stays in registers (VPT values per thread, n <= VPT * kThreads) and is read from memory
// once, all its loads in flight together (re-reading it from L1/L2 between the block
// reductions left the kernel latency-bound at 1.9-2.5 TB/s); VPT = 0: any n, re-read.
// The arithmetic, and the order of the sums, is norm_quant.cuh's (cpu::rmsnorm then
// cpu::quantize_row_i8). h_out (gated only) and q8out (with s_out) may be null: the training
// step needs neither h (the backward recomputes it from [gate | up]) nor, when it recomputes
// activations for the backward, the int8 rows of a linear it does not run again.
template <bool GATED, int VPT>
__global__ void __launch_bounds__(kThreads) train_norm_quant_kernel(const float* __restrict__ x, int ldx, int act, const float* __restrict__ w,
                                                                    int n, float eps, float* __restrict__ h_out, float* __restrict__ xn_out,
                                                                    int8_t* __restrict__ q8out, int ldq, float* __restrict__ s_out,
                                                                    float* __restrict__ rs_out, __half* __restrict__ x16_out,
                                                                    __half* __restrict__ gu16_out) {
  __shared__ NormScratch sc;
  const int64_t m = blockIdx.x;
  const float* row = x + m * ldx;
  float* h = GATED && h_out != nullptr ? h_out + m * n : nullptr;
  __half* g16 = GATED && gu16_out != nullptr ? gu16_out + m * 2 * n : nullptr;
  auto value = [&](int i) {
    if (GATED && g16 != nullptr) g16[i] = __float2half_rn(row[i]), g16[n + i] = __float2half_rn(row[n + i]);
    return GATED ? gated(row[i], row[n + i], act) : row[i];
  };
  float v[VPT > 0 ? VPT : 1];
  double ss = 0;
  if constexpr (VPT > 0) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = threadIdx.x + k * kThreads;
      v[k] = i < n ? value(i) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = threadIdx.x + k * kThreads;
      if (i >= n) break;
      if (GATED && h != nullptr) h[i] = v[k];
      ss += static_cast<double>(v[k]) * v[k];
    }
  } else {
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const float t = value(i);
      if (GATED && h != nullptr) h[i] = t;
      ss += static_cast<double>(t) * t;
    }
  }
  ss = block_reduce<kThreads>(ss, sc.d, SumOp{});
  const float r = 1.0f / sqrtf(static_cast<float>(ss / n) + eps);
  if (rs_out != nullptr && threadIdx.x == 0) rs_out[m] = r;
  float amax = 0.0f;
  auto again = [&](int i) { return GATED ? (h != nullptr ? h[i] : gated(row[i], row[n + i], act)) : row[i]; };  // VPT = 0: the value re-read
  auto normed = [&](int i, float t) {
    const float tr = t * r;
    const float y = w[i] * tr;
    if (xn_out != nullptr) xn_out[m * n + i] = y;
    if (x16_out != nullptr) x16_out[m * n + i] = __float2half_rn(tr);
    amax = fmaxf(amax, fabsf(y));
    return y;
  };
  if constexpr (VPT > 0) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = threadIdx.x + k * kThreads;
      if (i >= n) break;
      v[k] = normed(i, v[k]);
    }
  } else {
    for (int i = threadIdx.x; i < n; i += kThreads) normed(i, again(i));
  }
  if (q8out == nullptr) return;
  amax = block_reduce<kThreads>(amax, sc.f, MaxOp{});
  const float s = 127.0f / fmaxf(amax, 1e-5f);
  int8_t* q = q8out + m * ldq;
  if constexpr (VPT > 0) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = threadIdx.x + k * kThreads;
      if (i >= n) break;
      q[i] = static_cast<int8_t>(q8(v[k], s));
    }
  } else {
    for (int i = threadIdx.x; i < n; i += kThreads) q[i] = static_cast<int8_t>(q8(w[i] * (again(i) * r), s));
  }
  for (int i = n + threadIdx.x; i < ldq; i += kThreads) q[i] = 0;
  if (threadIdx.x == 0) s_out[m] = s;
}

__device__ __forceinline__ float seg_scale(const ColScales& cs, int c) {
  if (cs.n == 0) return 1.0f;
  return c < cs.end[0] ? cs.scale[0] : (cs.n < 2 || c < cs.end[1]) ? cs.scale[1] : cs.scale[2];
}

__device__ __forceinline__ int seg_of(const ColScales& cs, int c) {
  if (cs.n == 0) return 0;
  return c < cs.end[0] ? 0 : (cs.n < 2 || c < cs.end[1]) ? 1 : 2;
}

// Thread = one column c over kRowsPerBlock rows: its B row sits in registers (reading it
// per element made this kernel 20x slower; staging the block's B rows through shared
// memory first, to coalesce those reads, made it 45 % slower), the block's rows of u and s
// in shared memory (read from global memory per row, they left every warp waiting on a
// dependent load). ncu on the first version: 149 instructions per element and half the
// issue slots idle, latency-bound. So: the rank is a template constant where it is
// exact (no per-FMA predicates), pointers walk the column (no 64-bit index products per
// element), and the loads of the next kStep rows are issued before the current ones are
// stored (y is read and written in place, so the compiler may not hoist them itself).
// R = 0: no LoRA; EXACT: r == R, else r <= R with predicates; R = -1: any rank, B and u
// read from memory.
constexpr int kRowsPerBlock = 32;  // 64 or 128 rows per block measured slower (before pipelining)
struct EpiArgs {
  int32_t* y;  // the GEMM's int32 sums, replaced by the floats' bits in place (without resid)
  int ld, M, N;
  const float* s;
  ColScales cs;
  LoraEpilogue le;
  const float* resid;
  float* out;
};

// scaling * (b . u) in the order j = 0, 1, ... (the CPU's lora_fwd order).
template <int R, bool EXACT>
__device__ __forceinline__ float lora_dot(const float (&b)[R > 0 ? R : 1], const float* um, int r) {
  float acc = 0.0f;
  if constexpr (R > 0) {
#pragma unroll
    for (int j = 0; j < R; j += 4) {
      if (EXACT || j < r) {  // the staged row is read 16 bytes at a time (a broadcast)
        const float4 q = *reinterpret_cast<const float4*>(um + j);
        acc = fmaf(b[j], q.x, acc);
        if (EXACT || j + 1 < r) acc = fmaf(b[j + 1], q.y, acc);
        if (EXACT || j + 2 < r) acc = fmaf(b[j + 2], q.z, acc);
        if (EXACT || j + 3 < r) acc = fmaf(b[j + 3], q.w, acc);
      }
    }
  }
  return acc;
}

template <int R, bool EXACT, bool RESID>
__global__ void __launch_bounds__(kThreads, 4) linear_epilogue_kernel(const EpiArgs a) {
  constexpr int RS = R > 0 ? R : 4;
  constexpr int kStep = RESID ? 4 : 8;  // rows in flight per thread (registers: 64 at 4 blocks/SM)
  __shared__ __align__(16) float us[3][kRowsPerBlock][RS];
  __shared__ float ss[kRowsPerBlock];
  const int m0 = blockIdx.y * kRowsPerBlock, rows = min(kRowsPerBlock, a.M - m0);
  const int r = EXACT ? R : a.le.r;
  const int c0 = blockIdx.x * kThreads, c = c0 + threadIdx.x;
  for (int i = threadIdx.x; i < rows; i += kThreads) ss[i] = a.s[m0 + i];
  if constexpr (R > 0) {
    // The u rows of the segments this block's columns fall in.
    const int k_lo = seg_of(a.cs, c0), k_hi = seg_of(a.cs, min(a.N, c0 + kThreads) - 1);
    for (int k = k_lo; k <= k_hi; ++k) {
      const float* u = a.le.u[k];
      if (u == nullptr) continue;
      for (int i = threadIdx.x; i < rows * r; i += kThreads) us[k][i / r][i % r] = u[static_cast<int64_t>(m0) * r + i];
    }
  }
  __syncthreads();
  if (c >= a.N) return;
  const int k = seg_of(a.cs, c), start = k == 0 ? 0 : a.cs.end[k - 1];
  const float scale = seg_scale(a.cs, c);
  const float* u = R != 0 && r > 0 ? a.le.u[k] : nullptr;
  const float* brow = u != nullptr ? a.le.B[k] + static_cast<int64_t>(c - start) * r : nullptr;
  float b[R > 0 ? R : 1];
  if constexpr (R > 0) {
#pragma unroll
    for (int j = 0; j < R; ++j) b[j] = u != nullptr && (EXACT || j < r) ? brow[j] : 0.0f;
  }
  const int64_t at = static_cast<int64_t>(m0) * a.ld + c;
  int32_t* yp = a.y + at;
  const float* rp = RESID ? a.resid + static_cast<int64_t>(m0) * a.N + c : nullptr;
  float* op = RESID ? a.out + static_cast<int64_t>(m0) * a.N + c : nullptr;
  auto one = [&](int i, int32_t yi, float ri) {  // row m0 + i
    // Explicit roundings: nvcc would contract `resid + q * scale` into an FMA (the CPU
    // rounds twice; a test caught it on the no-adapter path).
    float o = __fmul_rn(__fdiv_rn(static_cast<float>(yi), ss[i]), scale);
    if (u != nullptr) {
      float acc;
      if constexpr (R > 0) {
        acc = lora_dot<R, EXACT>(b, us[k][i], r);
      } else {
        acc = 0.0f;
        const float* um = u + (static_cast<int64_t>(m0) + i) * r;
        for (int j = 0; j < r; ++j) acc = fmaf(brow[j], um[j], acc);
      }
      o = __fadd_rn(o, __fmul_rn(a.le.scaling, acc));
    }
    if constexpr (RESID) {
      op[static_cast<int64_t>(i) * a.N] = __fadd_rn(ri, o);
    } else {
      yp[static_cast<int64_t>(i) * a.ld] = __float_as_int(o);  // int32-typed like its loads (no type punning)
    }
  };
  if (rows < kRowsPerBlock) {  // the last block row: one row at a time
    for (int i = 0; i < rows; ++i) one(i, yp[static_cast<int64_t>(i) * a.ld], RESID ? rp[static_cast<int64_t>(i) * a.N] : 0.0f);
    return;
  }
  int32_t v[kStep];
  float rs[kStep];
#pragma unroll
  for (int i = 0; i < kStep; ++i) {
    v[i] = yp[static_cast<int64_t>(i) * a.ld];
    rs[i] = RESID ? rp[static_cast<int64_t>(i) * a.N] : 0.0f;
  }
#pragma unroll
  for (int mb = 0; mb < kRowsPerBlock; mb += kStep) {
    int32_t vn[kStep];
    float rn[kStep];
    if (mb + kStep < kRowsPerBlock) {  // the next rows' loads in flight while these are computed
#pragma unroll
      for (int i = 0; i < kStep; ++i) {
        vn[i] = yp[static_cast<int64_t>(mb + kStep + i) * a.ld];
        rn[i] = RESID ? rp[static_cast<int64_t>(mb + kStep + i) * a.N] : 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < kStep; ++i) one(mb + i, v[i], rs[i]);
    if (mb + kStep < kRowsPerBlock) {
#pragma unroll
      for (int i = 0; i < kStep; ++i) v[i] = vn[i], rs[i] = rn[i];
    }
  }
}

__global__ void __launch_bounds__(kThreads) gather_kernel(const float* __restrict__ x, int n, const int32_t* __restrict__ idx, int count,
                                                          float* __restrict__ out, int scatter) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= static_cast<int64_t>(count) * n) return;
  const int64_t r = i / n, c = i % n, src = static_cast<int64_t>(idx[r]) * n + c;
  if (scatter) {
    out[src] = x[i];
  } else {
    out[i] = x[src];
  }
}

// Block (x, y) covers columns 256x.. of rows y, y + gridDim.y, ... (no 64-bit division
// per element: that, not the hash, was most of this kernel's time). Rows are padded to
// whole 32-column words, so a warp is one word of one row (its ballot is the word of bits).
__global__ void __launch_bounds__(kThreads) dropout_kernel(const float* __restrict__ src, int lds, int M, int n, const DropoutSpec d,
                                                           uint64_t threshold, float keep, float* __restrict__ out, int ldo, int accumulate) {
  const int words = dropout_words(n);
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= words * 32) return;  // whole warps: the padded row is a multiple of 32
  const bool valid = c < n;
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    bool kept;
    if (d.bits != nullptr && !d.write_bits) {
      kept = (d.bits[static_cast<int64_t>(m) * words + c / 32] >> (c & 31)) & 1u;
    } else {
      const int t = m % d.period;
      kept = valid && dropout_keep(d.seq_seed[m / d.period] + d.salt, static_cast<uint64_t>(t) * n + c, threshold);
      if (d.bits != nullptr) {
        const unsigned word = __ballot_sync(kFullMask, kept);
        if ((threadIdx.x & 31) == 0) d.bits[static_cast<int64_t>(m) * words + c / 32] = word;
      }
    }
    if (!valid) continue;
    const float v = kept ? src[static_cast<int64_t>(m) * lds + c] * keep : 0.0f;
    float& o = out[static_cast<int64_t>(m) * ldo + c];
    o = accumulate ? o + v : v;
  }
}

__global__ void __launch_bounds__(kThreads) f16_to_i8_rows_kernel(const __half* __restrict__ src, int64_t rows, int K, int8_t* dst,
                                                                   int ldd) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * ldd) return;
  const int64_t r = i / ldd, c = i % ldd;
  dst[i] = static_cast<int8_t>(c < K ? __half2int_rn(src[r * K + c]) : 0);
}

// The reverse, for the backward's F16 weights: row r = blockIdx.y, 16 columns a thread
// (one 16-byte load, two 16-byte stores; 4 columns a thread ran at 2.3 TB/s).
__global__ void __launch_bounds__(kThreads) i8_to_f16_rows_kernel(const int8_t* __restrict__ src, int lds, int K, __half* __restrict__ dst) {
  const int c = (blockIdx.x * kThreads + threadIdx.x) * 16;
  if (c >= K) return;
  const int64_t r = blockIdx.y;
  const int4 v = *reinterpret_cast<const int4*>(src + r * lds + c);  // lds % 16 == 0: in the row's zero padding past K
  const int8_t* b = reinterpret_cast<const int8_t*>(&v);
  alignas(16) __half h[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) h[i] = __int2half_rn(b[i]);
  __half* d = dst + r * K + c;
  if (K % 8 == 0 && c + 16 <= K) {
    *reinterpret_cast<int4*>(d) = *reinterpret_cast<const int4*>(h);
    *reinterpret_cast<int4*>(d + 8) = *reinterpret_cast<const int4*>(h + 8);
  } else {
    for (int i = 0; i < 16 && c + i < K; ++i) d[i] = h[i];
  }
}

template <bool GATED>
void launch_norm_quant_vpt(const float* x, int ldx, int act, const float* w, int n, float eps, int M, float* h_out, float* xn_out, int8_t* q8,
                           int ldq, float* s, float* rs, __half* x16, __half* gu16, cudaStream_t st) {
  if (n <= 12 * kThreads) {
    train_norm_quant_kernel<GATED, 12><<<M, kThreads, 0, st>>>(x, ldx, act, w, n, eps, h_out, xn_out, q8, ldq, s, rs, x16, gu16);
  } else if (n <= 28 * kThreads) {
    train_norm_quant_kernel<GATED, 28><<<M, kThreads, 0, st>>>(x, ldx, act, w, n, eps, h_out, xn_out, q8, ldq, s, rs, x16, gu16);
  } else {
    train_norm_quant_kernel<GATED, 0><<<M, kThreads, 0, st>>>(x, ldx, act, w, n, eps, h_out, xn_out, q8, ldq, s, rs, x16, gu16);
  }
}

// The tf32 path of the epilogue for rank 16: scaling * B u on TF32 tensor cores. A warp
// owns 16 rows x 64 columns: u's 16 x 16 block is the A fragment (two k-steps), each 8
// columns' B rows the B fragment, and the accumulators hold (row g or g + 8, columns 2t,
// 2t + 1) of each 8-column tile, so the int32 sums and the residual are read in that
// pattern (8 bytes per lane) and all of a warp's loads are issued before its first store
// (y is rewritten in place). The block's 64 columns of B are staged in shared memory first,
// transposed (a warp's B fragments then cost no global round trip per tile: read from L2
// tile by tile they left the kernel waiting at ~2.3 TB/s). The scalar kernel spent ~80
// instructions per element, most on the 16 LoRA FMAs, and was issue-bound (ncu, H200).
constexpr int kEpiMmaCols = 64, kEpiMmaRows = 64, kBtLd = kEpiMmaCols + 8;  // a block: 4 warps of 16 rows
template <bool RESID>
__global__ void __launch_bounds__(128) linear_epilogue_mma_kernel(const EpiArgs a) {
  constexpr int R = 16, NT = kEpiMmaCols / 8;
  __shared__ float bt[R][kBtLd];  // B^T of the block's columns (rank x column; columns without an adapter: 0)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.y * kEpiMmaRows + 16 * warp, c0 = blockIdx.x * kEpiMmaCols;
  for (int i = threadIdx.x; i < kEpiMmaCols * R; i += 128) {
    const int c = c0 + i / R, j = i % R;
    float b = 0.0f;
    if (c < a.N) {
      const int k = seg_of(a.cs, c), start = k == 0 ? 0 : a.cs.end[k - 1];
      if (a.le.u[k] != nullptr) b = a.le.B[k][static_cast<int64_t>(c - start) * R + j];
    }
    bt[j][i / R] = b;
  }
  __syncthreads();
  if (m0 >= a.M) return;
  const int r0 = m0 + g, r1 = r0 + 8;
  const bool v0 = r0 < a.M, v1 = r1 < a.M;
  // Every load first: the sums (and the residual) of both rows, 8 tiles.
  int2 y0[NT], y1[NT];
  float2 q0[NT], q1[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int c = c0 + 8 * j + 2 * t;
    const bool in = c < a.N;
    y0[j] = in && v0 ? *reinterpret_cast<const int2*>(a.y + static_cast<int64_t>(r0) * a.ld + c) : make_int2(0, 0);
    y1[j] = in && v1 ? *reinterpret_cast<const int2*>(a.y + static_cast<int64_t>(r1) * a.ld + c) : make_int2(0, 0);
    if constexpr (RESID) {
      q0[j] = in && v0 ? *reinterpret_cast<const float2*>(a.resid + static_cast<int64_t>(r0) * a.N + c) : make_float2(0.0f, 0.0f);
      q1[j] = in && v1 ? *reinterpret_cast<const float2*>(a.resid + static_cast<int64_t>(r1) * a.N + c) : make_float2(0.0f, 0.0f);
    }
  }
  const float s0 = v0 ? a.s[r0] : 1.0f, s1 = v1 ? a.s[r1] : 1.0f;
  int seg = -1;
  uint32_t ua[2][4] = {};
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int cb = c0 + 8 * j;
    if (cb >= a.N) break;  // uniform
    const int k = seg_of(a.cs, cb);
    const float* u = a.le.u[k];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (u != nullptr) {
      if (k != seg) {  // u's fragments of this segment (segments are multiples of 8 columns)
        seg = k;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          ua[ks][0] = to_tf32(v0 ? u[static_cast<int64_t>(r0) * R + 8 * ks + t] : 0.0f);
          ua[ks][1] = to_tf32(v1 ? u[static_cast<int64_t>(r1) * R + 8 * ks + t] : 0.0f);
          ua[ks][2] = to_tf32(v0 ? u[static_cast<int64_t>(r0) * R + 8 * ks + t + 4] : 0.0f);
          ua[ks][3] = to_tf32(v1 ? u[static_cast<int64_t>(r1) * R + 8 * ks + t + 4] : 0.0f);
        }
      }
      const int lc = 8 * j + g;  // column cb + g in the block
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        mma_tf32(acc, ua[ks][0], ua[ks][1], ua[ks][2], ua[ks][3], to_tf32(bt[8 * ks + t][lc]), to_tf32(bt[8 * ks + t + 4][lc]));
      }
    }
    const float scale = seg_scale(a.cs, cb);
    auto value = [&](int32_t yi, float sm, float lora) {
      const float o = __fmul_rn(__fdiv_rn(static_cast<float>(yi), sm), scale);
      return u != nullptr ? __fadd_rn(o, __fmul_rn(a.le.scaling, lora)) : o;
    };
    const int c = cb + 2 * t;
    const float2 o0 = make_float2(value(y0[j].x, s0, acc[0]), value(y0[j].y, s0, acc[1]));
    const float2 o1 = make_float2(value(y1[j].x, s1, acc[2]), value(y1[j].y, s1, acc[3]));
    if constexpr (RESID) {
      if (v0) *reinterpret_cast<float2*>(a.out + static_cast<int64_t>(r0) * a.N + c) = make_float2(__fadd_rn(q0[j].x, o0.x), __fadd_rn(q0[j].y, o0.y));
      if (v1) *reinterpret_cast<float2*>(a.out + static_cast<int64_t>(r1) * a.N + c) = make_float2(__fadd_rn(q1[j].x, o1.x), __fadd_rn(q1[j].y, o1.y));
    } else {
      if (v0) *reinterpret_cast<int2*>(a.y + static_cast<int64_t>(r0) * a.ld + c) = make_int2(__float_as_int(o0.x), __float_as_int(o0.y));
      if (v1) *reinterpret_cast<int2*>(a.y + static_cast<int64_t>(r1) * a.ld + c) = make_int2(__float_as_int(o1.x), __float_as_int(o1.y));
    }
  }
}

// Whether linear_epilogue_mma_kernel applies: tf32, rank 16, 8-column tiles that never
// straddle a segment, 8-byte aligned rows.
bool epilogue_mma_applies(const EpiArgs& a) {
  if (!a.le.tf32 || a.le.r != 16 || a.N % 8 != 0 || a.ld % 2 != 0 || reinterpret_cast<uintptr_t>(a.y) % 8 != 0) return false;
  for (int k = 0; k < a.cs.n && k < 2; ++k) {
    if (a.cs.end[k] % 8 != 0) return false;
  }
  return a.resid == nullptr || (reinterpret_cast<uintptr_t>(a.resid) % 8 == 0 && reinterpret_cast<uintptr_t>(a.out) % 8 == 0);
}

template <bool RESID>
void launch_epilogue_r(dim3 grid, int r, const EpiArgs& a, cudaStream_t st) {
  if (r == 0) {
    linear_epilogue_kernel<0, true, RESID><<<grid, kThreads, 0, st>>>(a);
  } else if (r == 8) {
    linear_epilogue_kernel<8, true, RESID><<<grid, kThreads, 0, st>>>(a);
  } else if (r == 16) {
    linear_epilogue_kernel<16, true, RESID><<<grid, kThreads, 0, st>>>(a);
  } else if (r < 16) {
    linear_epilogue_kernel<16, false, RESID><<<grid, kThreads, 0, st>>>(a);
  } else if (r == 32) {
    linear_epilogue_kernel<32, true, RESID><<<grid, kThreads, 0, st>>>(a);
  } else if (r <= 32) {
    linear_epilogue_kernel<32, false, RESID><<<grid, kThreads, 0, st>>>(a);
  } else if (r <= 64) {
    linear_epilogue_kernel<64, false, RESID><<<grid, kThreads, 0, st>>>(a);
  } else {
    linear_epilogue_kernel<-1, false, RESID><<<grid, kThreads, 0, st>>>(a);
  }
}

}  // namespace

void launch_f16_to_i8_rows(const void* src, int64_t rows, int K, int8_t* dst, int ldd, cudaStream_t st) {
  if (rows <= 0) return;
  f16_to_i8_rows_kernel<<<blocks_for(rows * ldd), kThreads, 0, st>>>(static_cast<const __half*>(src), rows, K, dst, ldd);
  TERN_CUDA_LAUNCHED("f16_to_i8_rows_kernel");
}

void launch_i8_to_f16_rows(const int8_t* src, int64_t rows, int K, int lds, void* dst, cudaStream_t st) {
  if (rows <= 0 || K <= 0) return;
  if (lds % 16 != 0 || lds < (K + 15) / 16 * 16) throw_error("launch_i8_to_f16_rows: int8 rows must be padded to a multiple of 16");
  const dim3 grid(static_cast<unsigned>((K + 16 * kThreads - 1) / (16 * kThreads)), static_cast<unsigned>(rows));
  i8_to_f16_rows_kernel<<<grid, kThreads, 0, st>>>(src, lds, K, static_cast<__half*>(dst));
  TERN_CUDA_LAUNCHED("i8_to_f16_rows_kernel");
}

void launch_train_norm_quant(const float* x, int ldx, bool gated, int act, const float* w, int n, float eps, int M, float* h_out,
                             float* xn_out, int8_t* q8, int ldq, float* s, cudaStream_t st, float* rs_out, void* x16_out,
                             void* gu16_out) {
  if (M <= 0) return;
  auto *x16 = static_cast<__half*>(x16_out), *gu16 = static_cast<__half*>(gu16_out);
  if (gated) {
    launch_norm_quant_vpt<true>(x, ldx, act, w, n, eps, M, h_out, xn_out, q8, ldq, s, rs_out, x16, gu16, st);
  } else {
    launch_norm_quant_vpt<false>(x, ldx, act, w, n, eps, M, h_out, xn_out, q8, ldq, s, rs_out, x16, nullptr, st);
  }
  TERN_CUDA_LAUNCHED("train_norm_quant_kernel");
}

void launch_linear_epilogue(float* y, int ld, int M, int N, const float* s, const ColScales& cs, const LoraEpilogue& lora,
                            const float* resid, float* out, cudaStream_t st) {
  if (M <= 0 || N <= 0) return;
  const dim3 grid((N + kThreads - 1) / kThreads, (M + kRowsPerBlock - 1) / kRowsPerBlock);
  const EpiArgs a{reinterpret_cast<int32_t*>(y), ld, M, N, s, cs, lora, resid, out};
  const int r = lora.r;
  if (epilogue_mma_applies(a)) {
    const dim3 mgrid((N + kEpiMmaCols - 1) / kEpiMmaCols, (M + kEpiMmaRows - 1) / kEpiMmaRows);
    if (resid != nullptr) {
      linear_epilogue_mma_kernel<true><<<mgrid, 128, 0, st>>>(a);
    } else {
      linear_epilogue_mma_kernel<false><<<mgrid, 128, 0, st>>>(a);
    }
    TERN_CUDA_LAUNCHED("linear_epilogue_mma_kernel");
    return;
  }
  if (resid != nullptr) {
    launch_epilogue_r<true>(grid, r, a, st);
  } else {
    launch_epilogue_r<false>(grid, r, a, st);
  }
  TERN_CUDA_LAUNCHED("linear_epilogue_kernel");
}

void launch_gather_rows(const float* x, int n, const int32_t* idx, int count, float* out, cudaStream_t st) {
  if (count <= 0) return;
  gather_kernel<<<blocks_for(static_cast<int64_t>(count) * n), kThreads, 0, st>>>(x, n, idx, count, out, 0);
  TERN_CUDA_LAUNCHED("gather_kernel");
}

void launch_scatter_rows(const float* x, int n, const int32_t* idx, int count, float* out, cudaStream_t st) {
  if (count <= 0) return;
  gather_kernel<<<blocks_for(static_cast<int64_t>(count) * n), kThreads, 0, st>>>(x, n, idx, count, out, 1);
  TERN_CUDA_LAUNCHED("gather_kernel");
}

uint64_t dropout_threshold(float p) { return train::dropout_threshold(p); }

void launch_dropout(const float* src, int lds, int M, int n, const DropoutSpec& d, float* out, int ldo, bool accumulate, cudaStream_t st) {
  if (M <= 0 || n <= 0) return;
  const dim3 grid((dropout_words(n) * 32 + kThreads - 1) / kThreads, std::min(M, 65535));
  dropout_kernel<<<grid, kThreads, 0, st>>>(src, lds, M, n, d, dropout_threshold(d.p), 1.0f / (1.0f - d.p), out, ldo, accumulate ? 1 : 0);
  TERN_CUDA_LAUNCHED("dropout_kernel");
}

}  // namespace tern::cuda
