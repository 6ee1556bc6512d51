// The LoRA branch's thin products against a wide, dropout-masked activation (rank r <= 64),
// in one pass over the activation with the mask applied on the fly. cuBLAS needs the
// masked activation materialised first (a write and a read of [M][K] floats per adapter,
// plus hashing the mask); these kernels read it once.
//
//  rows: U [M][r] = drop(X) A^T (the forward's A x). Block = 8 warps on BM = 64 / R rows;
//        the warps split K, each lane 4 columns (float4; A's matching 16 bytes serve all BM
//        rows); the block's 64 sums are reduced across lanes in registers, then across
//        warps in shared memory, in a fixed order (deterministic). The forward hashes the
//        mask and stores it as bits for the backward.
//  cols: G += alpha * U^T drop(X) (the backward's dA). Block = one warp's width of columns
//        (CW per lane) x 4 row groups over a chunk of rows, 4 rows' loads in flight per
//        lane; per-chunk partials are summed in chunk order by a second kernel
//        (deterministic, no atomics).
// Products without a mask (du = dy B, dB = dy^T u) stay on cuBLAS, which measured faster.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/launch.h"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kRowsWarps = 8;

constexpr int kRowsSums = 64;  // BM x R per lane: two blocks per SM fit in registers

// One step of the warp's reduce-scatter of kRowsSums sums (see lora_rows_kernel).
template <int OFF, int HALF>
__device__ __forceinline__ void reduce_scatter_step(float (&acc)[kRowsSums], int lane) {
  const bool hi = (lane & OFF) != 0;
#pragma unroll
  for (int k = 0; k < HALF; ++k) {
    const float send = hi ? acc[k] : acc[k + HALF];
    const float own = hi ? acc[k + HALF] : acc[k];
    acc[k] = own + __shfl_xor_sync(kFullMask, send, OFF);
  }
}

template <int R>
__global__ void __launch_bounds__(kRowsWarps * 32) lora_rows_kernel(const float* __restrict__ X, int ldx, int M, int K,
                                                                    const float* __restrict__ A, int r, const DropoutSpec d, uint64_t thr,
                                                                    float keep, float* __restrict__ U) {
  constexpr int BM = kRowsSums / R;
  static_assert(BM * R == kRowsSums);
  __shared__ float red[kRowsWarps][kRowsSums];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = blockIdx.x * BM;
  const bool drop = d.p > 0.0f, from_bits = d.bits != nullptr && !d.write_bits, write_bits = drop && d.bits != nullptr && d.write_bits;
  const int words = dropout_words(K);
  float acc[kRowsSums];
#pragma unroll
  for (int i = 0; i < kRowsSums; ++i) acc[i] = 0.0f;
  // The loop bound is uniform across the warp (the bit-word assembly shuffles).
  for (int cb = warp * 128; cb < K; cb += kRowsWarps * 128) {
    const int c = cb + lane * 4;
    const bool valid = c < K;
    float4 xv[BM];
#pragma unroll
    for (int i = 0; i < BM; ++i) {
      const int m = m0 + i;
      xv[i] = valid && m < M ? *reinterpret_cast<const float4*>(X + static_cast<int64_t>(m) * ldx + c) : make_float4(0, 0, 0, 0);
    }
    if (drop) {
#pragma unroll
      for (int i = 0; i < BM; ++i) {
        const int m = m0 + i;
        if (m >= M) break;  // uniform
        unsigned nib = 0;
        if (valid) {
          if (from_bits) {
            nib = (d.bits[static_cast<int64_t>(m) * words + c / 32] >> (c & 31)) & 15u;
          } else {
            const int t = m % d.period;
            nib = dropout_bits<4>(d.seq_seed[m / d.period] + d.salt, static_cast<uint64_t>(t) * K + c, thr);
          }
        }
        if (write_bits) {  // lanes 8g..8g+7 hold the 32 bits of one word
          unsigned word = nib << ((lane & 7) * 4);
          word |= __shfl_xor_sync(kFullMask, word, 1);
          word |= __shfl_xor_sync(kFullMask, word, 2);
          word |= __shfl_xor_sync(kFullMask, word, 4);
          if ((lane & 7) == 0 && valid) d.bits[static_cast<int64_t>(m) * words + c / 32] = word;
        }
        xv[i].x = (nib & 1u) ? xv[i].x * keep : 0.0f;
        xv[i].y = (nib & 2u) ? xv[i].y * keep : 0.0f;
        xv[i].z = (nib & 4u) ? xv[i].z * keep : 0.0f;
        xv[i].w = (nib & 8u) ? xv[i].w * keep : 0.0f;
      }
    }
    if (!valid) continue;
    // A's columns c..c+3 of row j: one 16-byte load serves the BM rows.
#pragma unroll
    for (int j = 0; j < R; ++j) {
      if (j >= r) break;
      const float4 a = __ldg(reinterpret_cast<const float4*>(A + static_cast<int64_t>(j) * K + c));
#pragma unroll
      for (int i = 0; i < BM; ++i) {
        float s = acc[i * R + j];
        s = fmaf(xv[i].x, a.x, s), s = fmaf(xv[i].y, a.y, s), s = fmaf(xv[i].z, a.z, s), s = fmaf(xv[i].w, a.w, s);
        acc[i * R + j] = s;
      }
    }
  }
  // Reduce-scatter the 64 sums across the warp: after the step at offset o a lane keeps
  // the half its bit o selects, so lane l ends with sums 2l and 2l + 1.
  reduce_scatter_step<16, 32>(acc, lane);
  reduce_scatter_step<8, 16>(acc, lane);
  reduce_scatter_step<4, 8>(acc, lane);
  reduce_scatter_step<2, 4>(acc, lane);
  reduce_scatter_step<1, 2>(acc, lane);
  red[warp][lane * 2] = acc[0], red[warp][lane * 2 + 1] = acc[1];
  __syncthreads();
  if (threadIdx.x < kRowsSums) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kRowsWarps; ++w) sum += red[w][threadIdx.x];
    const int i = threadIdx.x / R, j = threadIdx.x % R, m = m0 + i;
    if (m < M && j < r) U[static_cast<int64_t>(m) * r + j] = sum;
  }
}

// Columns per lane and row groups of the cols kernel (the accumulators, R x CW, stay
// at 64 registers; the row groups' hand-over, 3 x R x 32 CW floats, at 24 KB).
template <int R>
__host__ __device__ constexpr int cols_width() {
  return R <= 16 ? 4 : R <= 32 ? 2 : 1;
}
constexpr int kColsGroups = 4, kColsTile = 64, kColsUnroll = 4;

template <int CW>
struct Vec;
template <>
struct Vec<4> {
  using T = float4;
};
template <>
struct Vec<2> {
  using T = float2;
};
template <>
struct Vec<1> {
  using T = float;
};
template <int CW>
__device__ __forceinline__ void load_cols(const float* p, float (&v)[CW]) {
  const auto q = *reinterpret_cast<const typename Vec<CW>::T*>(p);
  if constexpr (CW == 4) {
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else if constexpr (CW == 2) {
    v[0] = q.x, v[1] = q.y;
  } else {
    v[0] = q;
  }
}

// Partials P[s][j][c] = sum over rows of chunk s of U[m][j] drop(X)[m][c].
template <int R>
__global__ void __launch_bounds__(32 * kColsGroups) lora_cols_kernel(const float* __restrict__ U, const float* __restrict__ X, int ldx,
                                                                     int M, int K, int r, int chunk, const DropoutSpec d, uint64_t thr,
                                                                     float keep, float* __restrict__ P) {
  constexpr int CW = cols_width<R>(), G = kColsGroups;
  __shared__ float us[kColsTile][R];
  __shared__ float red[G - 1][R][32 * CW];
  const int lane = threadIdx.x % 32, g = threadIdx.x / 32;
  const int c = (blockIdx.x * 32 + lane) * CW;
  const bool valid = c < K;
  const int s = blockIdx.y, m_begin = s * chunk, m_end = min(M, m_begin + chunk);
  const bool drop = d.p > 0.0f, from_bits = d.bits != nullptr;
  const int words = dropout_words(K);
  float acc[R][CW];
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int k = 0; k < CW; ++k) acc[j][k] = 0.0f;
  }
  for (int t0 = m_begin; t0 < m_end; t0 += kColsTile) {
    const int rows = min(kColsTile, m_end - t0);
    __syncthreads();
    for (int i = threadIdx.x; i < kColsTile * R; i += 32 * G) {
      const int tr = i / R, j = i % R;
      us[tr][j] = tr < rows && j < r ? U[static_cast<int64_t>(t0 + tr) * r + j] : 0.0f;
    }
    __syncthreads();
    if (!valid) continue;
    for (int tb = g * kColsUnroll; tb < rows; tb += G * kColsUnroll) {
      float xv[kColsUnroll][CW];
#pragma unroll
      for (int u = 0; u < kColsUnroll; ++u) {
        const int tr = tb + u, m = t0 + tr;
        if (tr < rows) {
          load_cols<CW>(X + static_cast<int64_t>(m) * ldx + c, xv[u]);
        } else {
#pragma unroll
          for (int k = 0; k < CW; ++k) xv[u][k] = 0.0f;
        }
      }
      if (drop) {
#pragma unroll
        for (int u = 0; u < kColsUnroll; ++u) {
          const int tr = tb + u, m = t0 + tr;
          if (tr >= rows) break;
          unsigned b;
          if (from_bits) {
            b = d.bits[static_cast<int64_t>(m) * words + c / 32] >> (c & 31);
          } else {
            const int t = m % d.period;
            b = dropout_bits<CW>(d.seq_seed[m / d.period] + d.salt, static_cast<uint64_t>(t) * K + c, thr);
          }
#pragma unroll
          for (int k = 0; k < CW; ++k) xv[u][k] = (b >> k) & 1u ? xv[u][k] * keep : 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < kColsUnroll; ++u) {
        const int tr = tb + u;
        if (tr >= rows) break;
#pragma unroll
        for (int j = 0; j < R; ++j) {
          const float uj = us[tr][j];
#pragma unroll
          for (int k = 0; k < CW; ++k) acc[j][k] = fmaf(uj, xv[u][k], acc[j][k]);
        }
      }
    }
  }
  // Row groups 1.. hand their sums to group 0, which adds them in group order.
  if (g > 0) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int k = 0; k < CW; ++k) red[g - 1][j][lane * CW + k] = acc[j][k];
    }
  }
  __syncthreads();
  if (g > 0 || !valid) return;
#pragma unroll
  for (int h = 0; h < G - 1; ++h) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int k = 0; k < CW; ++k) acc[j][k] += red[h][j][lane * CW + k];
    }
  }
  float* ps = P + static_cast<int64_t>(s) * r * K;
#pragma unroll
  for (int j = 0; j < R; ++j) {
    if (j >= r) break;
#pragma unroll
    for (int k = 0; k < CW; ++k) ps[static_cast<int64_t>(j) * K + c + k] = acc[j][k];
  }
}

// out (+)= alpha * sum_s P[s] in chunk order (times the row / column scales where given).
__global__ void __launch_bounds__(256) partials_sum_kernel(const float* __restrict__ P, int S, int64_t n, int64_t stride, float alpha,
                                                           float* out, int accumulate, const float* __restrict__ row_scale, int row_len,
                                                           const float* __restrict__ col_scale, int ncols) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= n) return;
  float sum = 0.0f;
  for (int s = 0; s < S; ++s) sum += P[s * stride + i];
  float v = alpha * sum;
  if (row_scale != nullptr) v *= row_scale[i / row_len];
  if (col_scale != nullptr) v *= col_scale[i % ncols];
  out[i] = accumulate ? out[i] + v : v;
}



template <int R>
void launch_rows(const float* X, int M, int K, const float* A, int r, const DropoutSpec& d, float* U, cudaStream_t st) {
  constexpr int BM = kRowsSums / R;
  lora_rows_kernel<R><<<static_cast<unsigned>((M + BM - 1) / BM), kRowsWarps * 32, 0, st>>>(
      X, K, M, K, A, r, d, dropout_threshold(d.p), 1.0f / (1.0f - d.p), U);
  TERN_CUDA_LAUNCHED("lora_rows_kernel");
}

template <int R>
void launch_cols(const float* U, const float* X, int M, int K, int r, const DropoutSpec& d, TrainBlas& blas, float alpha, float* G) {
  constexpr int CW = cols_width<R>();
  // About four blocks per SM, in chunks of at least kColsTile rows (the partials cost a
  // write and a read of r x K floats each).
  const int col_blocks = (K + 32 * CW - 1) / (32 * CW);
  const int S = std::max(1, std::min((M + kColsTile - 1) / kColsTile, (4 * sm_count() + col_blocks - 1) / col_blocks));
  const int chunk = (M + S - 1) / S, S_used = (M + chunk - 1) / chunk;
  auto* P = static_cast<float*>(blas.scratch(kSlotSplitK, static_cast<size_t>(S_used) * r * K * sizeof(float)));
  cudaStream_t st = blas.stream();
  lora_cols_kernel<R><<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(S_used)), 32 * kColsGroups, 0, st>>>(
      U, X, K, M, K, r, chunk, d, dropout_threshold(d.p), 1.0f / (1.0f - d.p), P);
  TERN_CUDA_LAUNCHED("lora_cols_kernel");
  launch_partials_sum(P, S_used, static_cast<int64_t>(r) * K, alpha, G, true, st);
}

}  // namespace

bool lora_skinny_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("TERN_TRAIN_LORA");
    return e == nullptr || std::string(e) != "cublas";
  }();
  return on;
}

void launch_partials_sum(const float* P, int S, int64_t n, float alpha, float* out, bool accumulate, cudaStream_t st, int64_t stride,
                         const float* row_scale, int row_len, const float* col_scale, int ncols) {
  if (n <= 0) return;
  partials_sum_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, st>>>(P, S, n, stride > 0 ? stride : n, alpha, out,
                                                                               accumulate ? 1 : 0, row_scale, std::max(row_len, 1),
                                                                               col_scale, std::max(ncols, 1));
  TERN_CUDA_LAUNCHED("partials_sum_kernel");
}

bool lora_rows_product(TrainBlas& blas, const float* X, int M, int K, const float* A, int r, const DropoutSpec& d, float* U, bool tf32) {
  if (!lora_skinny_enabled()) return false;
  if (tf32 && lora_rows_mma(blas, X, M, K, A, r, 1.0f, d, U)) return true;
  if (folded(d)) return false;  // lora_mma.cu only
  if (M <= 0 || K <= 0 || r <= 0) return true;
  cudaStream_t st = blas.stream();
  if (r > 64 || K % 4 != 0 || !aligned_to(X, 16) || !aligned_to(A, 16)) return false;
  if (r <= 8) {
    launch_rows<8>(X, M, K, A, r, d, U, st);
  } else if (r <= 16) {
    launch_rows<16>(X, M, K, A, r, d, U, st);
  } else if (r <= 32) {
    launch_rows<32>(X, M, K, A, r, d, U, st);
  } else {
    launch_rows<64>(X, M, K, A, r, d, U, st);
  }
  return true;
}

bool lora_cols_product(TrainBlas& blas, const float* U, const float* X, int M, int K, int r, float alpha, const DropoutSpec& d, float* G,
                       bool tf32) {
  if (!lora_skinny_enabled()) return false;
  if (tf32 && lora_cols_mma(blas, U, X, M, K, r, alpha, d, G)) return true;
  if (folded(d)) return false;  // lora_mma.cu only
  if (M <= 0 || K <= 0 || r <= 0) return true;
  const int cw = r <= 16 ? 4 : r <= 32 ? 2 : 1;
  if (r > 64 || K % cw != 0 || !aligned_to(X, 4 * cw)) return false;
  DropoutSpec dd = d;
  dd.write_bits = false;
  if (r <= 8) {
    launch_cols<8>(U, X, M, K, r, dd, blas, alpha, G);
  } else if (r <= 16) {
    launch_cols<16>(U, X, M, K, r, dd, blas, alpha, G);
  } else if (r <= 32) {
    launch_cols<32>(U, X, M, K, r, dd, blas, alpha, G);
  } else {
    launch_cols<64>(U, X, M, K, r, dd, blas, alpha, G);
  }
  return true;
}

}  // namespace tern::cuda
