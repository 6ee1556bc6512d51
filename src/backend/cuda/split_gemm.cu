// C = alpha * A . W for a float32 A on 16-bit tensor cores without losing float32
// accuracy (the training backward: dlogits . E, dy . Wq). Each row of A is scaled by an
// exact power of two (so values down to ~1e-9 keep their bits in F16) and split into
// 16-bit terms whose sum is the scaled row to ~22 bits (store_split); all terms go
// through ONE cuBLAS GEMM as extra rows, so W is read once; a combine kernel adds the
// terms and undoes the scale. Every product of a 16-bit term with a 16-bit weight is exact
// in the float32 accumulator. F32 weights use SGEMM (float32, no TF32).
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/mma_tf32.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

// Row m of A (column-scaled) -> terms; rscale[m] undoes the power-of-two row scale.
// (Measured on the H200, 2026-11-27: keeping the row in registers between the max and the
// stores, or 16-byte loads, is no faster for these rows, and 56 values per thread slower.)
template <int TYPE, int TERMS>
__global__ void __launch_bounds__(kThreads) split_rows_kernel(const float* __restrict__ A, int lda, int M, int N, const ColScales cs,
                                                              void* split, float* __restrict__ rscale) {
  __shared__ float sf[kThreads / 32];
  const int m = blockIdx.x;
  const float* row = A + static_cast<int64_t>(m) * lda;
  float amax = 0.0f;
  for (int i = threadIdx.x; i < N; i += kThreads) amax = fmaxf(amax, fabsf(row[i] * cs.at(i)));
  amax = block_reduce<kThreads>(amax, sf, MaxOp{});
  const int e = row_split_exp(amax);
  const int64_t stride = static_cast<int64_t>(M) * N;
  for (int i = threadIdx.x; i < N; i += kThreads) {
    store_terms<TYPE, TERMS>(split, static_cast<int64_t>(m) * N + i, stride, ldexpf(row[i] * cs.at(i), e));
  }
  if (threadIdx.x == 0) rscale[m] = row_rscale(amax);
}

// Block (x, y): a stripe of 256 V columns (V per thread: 16-byte accesses when V == 4) of
// kCombineRows rows from y * kCombineRows, every load of a thread issued before its first
// store (one row of 256 columns per block, as before, ran at 1.8 TB/s).
constexpr int kCombineRows = 8;
template <int V>
__global__ void __launch_bounds__(kThreads) combine_kernel(const float* __restrict__ acc, int terms, int M, int K,
                                                           const float* __restrict__ rscale, float alpha, float* __restrict__ C, int ldc,
                                                           int accumulate) {
  using Vec = std::conditional_t<V == 4, float4, float>;
  const int k = (blockIdx.x * kThreads + threadIdx.x) * V;
  if (k >= K) return;
  const int64_t stride = static_cast<int64_t>(M) * K;
  for (int m0 = blockIdx.y * kCombineRows; m0 < M; m0 += gridDim.y * kCombineRows) {  // grid.y <= 65535
    const int rows = min(kCombineRows, M - m0);
    float s[kCombineRows][V], old[kCombineRows][V];
    auto load = [](const float* p, float (&v)[V]) {
      const Vec q = *reinterpret_cast<const Vec*>(p);
      if constexpr (V == 4) {
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
      } else {
        v[0] = q;
      }
    };
#pragma unroll
    for (int i = 0; i < kCombineRows; ++i) {
      if (i >= rows) break;
      const int64_t idx = static_cast<int64_t>(m0 + i) * K + k;
      load(acc + idx, s[i]);
      for (int t = 1; t < terms; ++t) {
        float e[V];
        load(acc + idx + t * stride, e);
#pragma unroll
        for (int j = 0; j < V; ++j) s[i][j] = __fadd_rn(s[i][j], e[j]);
      }
      if (accumulate) load(C + static_cast<int64_t>(m0 + i) * ldc + k, old[i]);
    }
#pragma unroll
    for (int i = 0; i < kCombineRows; ++i) {
      if (i >= rows) break;
      const float rs = rscale[m0 + i];
      float out[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float v = __fmul_rn(alpha, __fmul_rn(s[i][j], rs));  // no contraction: combine_lora_kernel rounds alike
        out[j] = accumulate ? __fadd_rn(old[i][j], v) : v;
      }
      float* c = C + static_cast<int64_t>(m0 + i) * ldc + k;
      if constexpr (V == 4) {
        *reinterpret_cast<float4*>(c) = make_float4(out[0], out[1], out[2], out[3]);
      } else {
        *c = out[0];
      }
    }
  }
}

// combine_kernel plus the LoRA input gradients of LoraDx (the masked dx kernel of
// train_ops.cu, whose separate pass read and wrote dx once more per adapted part).
// Thread = one column k over kLoraRows rows, the parts' columns of A in registers (so few
// registers are left for loads in flight: a register pipeline of 8 rows ran at 0.4-1.4
// TB/s), the block's du rows and row scales in shared memory, and the GEMM's terms and
// the mask words streamed through a cp.async ring of kLoraStages x kLoraStep rows.
// K % 4 == 0 and 16-byte aligned rows (LoraDx::fusable).
constexpr int kLoraRows = 64, kLoraStep = 8, kLoraWords = kThreads / 32;
template <int T>
using LoraRing = RowRing<T, kLoraStep, kThreads>;  // the GEMM's T terms
template <int R, int P, int T>
constexpr size_t combine_lora_smem() {
  return (P * kLoraRows * R + kLoraRows + LoraRing<T>::kFloats + LoraRing<T>::kStages * P * kLoraStep * kLoraWords) * 4;
}
template <int R, int P, int T>
__global__ void __launch_bounds__(kThreads) combine_lora_kernel(const float* __restrict__ acc, int M, int K, const float* __restrict__ rscale,
                                                                float alpha, float* __restrict__ C, int ldc, int accumulate, const LoraDx lx) {
  extern __shared__ __align__(16) float sm[];
  float* dus = sm;                       // [P][kLoraRows][R]
  float* rss = dus + P * kLoraRows * R;  // [kLoraRows]
  const int m0 = blockIdx.y * kLoraRows, rows = min(kLoraRows, M - m0);
  const int c0 = blockIdx.x * kThreads, cols = min(kThreads, K - c0), k = c0 + threadIdx.x;
  LoraRing<T> ring;
  ring.buf = rss + kLoraRows, ring.rows = rows, ring.cols = cols;  // K % 4 == 0 (LoraDx::fusable)
#pragma unroll
  for (int t = 0; t < T; ++t) ring.src[t] = acc + t * static_cast<int64_t>(M) * K + static_cast<int64_t>(m0) * K + c0, ring.ld[t] = K;
  auto* bring = reinterpret_cast<uint32_t*>(ring.buf + ring.kFloats);  // [stage][part][row][word]: the mask words
  const int words = (K + 31) / 32, nw = (cols + 31) / 32;
  auto issue = [&](int step) {
    ring.issue(step);
    uint32_t* b = bring + (step % ring.kStages) * P * kLoraStep * kLoraWords;
    for (int i = threadIdx.x; i < P * kLoraStep * kLoraWords; i += kThreads) {
      const int p = i / (kLoraStep * kLoraWords), rr = i / kLoraWords % kLoraStep, w = i % kLoraWords, row = step * kLoraStep + rr;
      const uint32_t* bits = p == 0 ? lx.bits[0] : p == 1 ? lx.bits[1] : lx.bits[2];  // no dynamic index into the parameter
      if (bits != nullptr && row < rows && w < nw) {
        cp_async4(b + i, bits + static_cast<int64_t>(m0 + row) * words + c0 / 32 + w, 4);
      } else {
        b[i] = ~0u;  // no mask: every element kept
      }
    }
    cp_async_commit();
  };
  const int steps = (rows + kLoraStep - 1) / kLoraStep;
  issue(0);
  if (steps > 1) issue(1);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    for (int i = threadIdx.x; i < rows * R; i += kThreads) dus[p * kLoraRows * R + i] = lx.du[p][static_cast<int64_t>(m0) * R + i];
  }
  for (int i = threadIdx.x; i < rows; i += kThreads) rss[i] = rscale[m0 + i];
  float a[P][R];
#pragma unroll
  for (int p = 0; p < P; ++p) {
#pragma unroll
    for (int j = 0; j < R; ++j) a[p][j] = k < K ? lx.A[p][static_cast<int64_t>(j) * K + k] : 0.0f;
  }
  for (int step = 0; step < steps; ++step) {
    ring_advance(step, steps, issue);  // (at step 0 also du and the row scales)
    const uint32_t* bt = bring + (step % ring.kStages) * P * kLoraStep * kLoraWords + threadIdx.x / 32;
    if (k < K) {
#pragma unroll
      for (int rr = 0; rr < kLoraStep; ++rr) {  // unrolled: the rows' dot chains interleave
        const int i = step * kLoraStep + rr;
        if (i < rows) {
          float s = ring.at(step, 0, rr)[threadIdx.x];
#pragma unroll
          for (int t = 1; t < T; ++t) s = __fadd_rn(s, ring.at(step, t, rr)[threadIdx.x]);
          const float v = __fmul_rn(alpha, __fmul_rn(s, rss[i]));
          float* cp = C + static_cast<int64_t>(m0 + i) * ldc + k;
          float out = accumulate ? __fadd_rn(*cp, v) : v;
#pragma unroll
          for (int p = 0; p < P; ++p) {
            const float* du = dus + (p * kLoraRows + i) * R;
            float dot = 0.0f;
#pragma unroll
            for (int j = 0; j < R; j += 4) {  // lora_dx_kernel's order; the du row read 16 bytes at a time (a broadcast)
              const float4 q = *reinterpret_cast<const float4*>(du + j);
              dot = fmaf(q.x, a[p][j], dot);
              dot = fmaf(q.y, a[p][j + 1], dot);
              dot = fmaf(q.z, a[p][j + 2], dot);
              dot = fmaf(q.w, a[p][j + 3], dot);
            }
            const bool kept = (bt[(p * kLoraStep + rr) * kLoraWords] >> (threadIdx.x & 31)) & 1u;
            out = __fadd_rn(out, kept ? __fmul_rn(dot, lx.keep) : 0.0f);
          }
          *cp = out;
        }
      }
    }
    __syncthreads();  // everyone is done with this stage before it is refilled
  }
}

// The tf32 path for rank 16 (one GEMM term): each part's du A on TF32 tensor cores instead
// of 16 FMAs per element and part (the kernel above ran at 0.8 TB/s with three parts). A
// warp owns 16 rows x 64 columns: du's 16 x 16 block is the A fragment, A's 8-column slices
// the B fragments, and the accumulators hold (row g or g + 8, columns 2t, 2t + 1), so the
// GEMM's sums, C and the mask words are read in that pattern, all before the first store.
// Adds in the order of combine_lora_kernel (terms, accumulate, then part by part).
// The parts' A columns of the block are staged in shared memory first (as the epilogue's B).
constexpr int kCmbCols = 64, kCmbRows = 64, kCmbLd = kCmbCols + 8;  // a block: 4 warps of 16 rows
template <int P>
__global__ void __launch_bounds__(128) combine_lora_mma_kernel(const float* __restrict__ acc, int M, int K, const float* __restrict__ rscale,
                                                               float alpha, float* __restrict__ C, int ldc, int accumulate, const LoraDx lx) {
  constexpr int R = 16, NT = kCmbCols / 8;
  __shared__ float as[P][R][kCmbLd];  // [part][rank][column of the block] (padded: conflict-free fragment reads)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.y * kCmbRows + 16 * warp, c0 = blockIdx.x * kCmbCols;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const float* A = p == 0 ? lx.A[0] : p == 1 ? lx.A[1] : lx.A[2];
    for (int i = threadIdx.x; i < R * kCmbCols; i += 128) {
      const int j = i / kCmbCols, c = i % kCmbCols;
      as[p][j][c] = c0 + c < K ? A[static_cast<int64_t>(j) * K + c0 + c] : 0.0f;
    }
  }
  __syncthreads();
  if (m0 >= M) return;
  const int r0 = m0 + g, r1 = r0 + 8;
  const bool v0 = r0 < M, v1 = r1 < M;
  float2 s0[NT], s1[NT], o0[NT], o1[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int c = c0 + 8 * j + 2 * t;
    const bool in = c < K;
    const float2 z = make_float2(0.0f, 0.0f);
    s0[j] = in && v0 ? *reinterpret_cast<const float2*>(acc + static_cast<int64_t>(r0) * K + c) : z;
    s1[j] = in && v1 ? *reinterpret_cast<const float2*>(acc + static_cast<int64_t>(r1) * K + c) : z;
    o0[j] = accumulate && in && v0 ? *reinterpret_cast<const float2*>(C + static_cast<int64_t>(r0) * ldc + c) : z;
    o1[j] = accumulate && in && v1 ? *reinterpret_cast<const float2*>(C + static_cast<int64_t>(r1) * ldc + c) : z;
  }
  const int words = (K + 31) / 32, w0 = c0 / 32;
  uint32_t mb[P][2][2];  // [part][row r0 / r1][the tile's two 32-column words]
  uint32_t ua[P][2][4];  // [part][k-step]: du's A fragments
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const uint32_t* bits = p == 0 ? lx.bits[0] : p == 1 ? lx.bits[1] : lx.bits[2];  // no dynamic index into the parameter
    const float* du = p == 0 ? lx.du[0] : p == 1 ? lx.du[1] : lx.du[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = h == 0 ? r0 : r1;
      const bool vr = h == 0 ? v0 : v1;
#pragma unroll
      for (int w = 0; w < 2; ++w) {
        mb[p][h][w] = bits == nullptr ? ~0u : vr && w0 + w < words ? bits[static_cast<int64_t>(row) * words + w0 + w] : 0u;
      }
    }
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      ua[p][ks][0] = to_tf32(v0 ? du[static_cast<int64_t>(r0) * R + 8 * ks + t] : 0.0f);
      ua[p][ks][1] = to_tf32(v1 ? du[static_cast<int64_t>(r1) * R + 8 * ks + t] : 0.0f);
      ua[p][ks][2] = to_tf32(v0 ? du[static_cast<int64_t>(r0) * R + 8 * ks + t + 4] : 0.0f);
      ua[p][ks][3] = to_tf32(v1 ? du[static_cast<int64_t>(r1) * R + 8 * ks + t + 4] : 0.0f);
    }
  }
  const float rs0 = v0 ? rscale[r0] : 0.0f, rs1 = v1 ? rscale[r1] : 0.0f;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int cb = c0 + 8 * j, c = cb + 2 * t;
    if (cb >= K) break;  // uniform (K % 8 == 0)
    auto base = [&](float sv, float rs, float old) {
      const float v = __fmul_rn(alpha, __fmul_rn(sv, rs));
      return accumulate ? __fadd_rn(old, v) : v;
    };
    float out[4] = {base(s0[j].x, rs0, o0[j].x), base(s0[j].y, rs0, o0[j].y), base(s1[j].x, rs1, o1[j].x), base(s1[j].y, rs1, o1[j].y)};
#pragma unroll
    for (int p = 0; p < P; ++p) {
      float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        mma_tf32(d, ua[p][ks][0], ua[p][ks][1], ua[p][ks][2], ua[p][ks][3], to_tf32(as[p][8 * ks + t][8 * j + g]),
                 to_tf32(as[p][8 * ks + t + 4][8 * j + g]));
      }
      const int w = j >= 4 ? 1 : 0, b = c & 31;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool kept = (mb[p][e >> 1][w] >> (b + (e & 1))) & 1u;
        out[e] = __fadd_rn(out[e], kept ? __fmul_rn(d[e], lx.keep) : 0.0f);
      }
    }
    if (v0) *reinterpret_cast<float2*>(C + static_cast<int64_t>(r0) * ldc + c) = make_float2(out[0], out[1]);
    if (v1) *reinterpret_cast<float2*>(C + static_cast<int64_t>(r1) * ldc + c) = make_float2(out[2], out[3]);
  }
}

template <int R, int P, int T>
void launch_combine_lora_t(dim3 grid, cudaStream_t st, const float* acc, int M, int K, const float* rscale, float alpha, float* C, int ldc,
                           int accumulate, const LoraDx& lx) {
  constexpr size_t smem = combine_lora_smem<R, P, T>();
  static const bool attr = [] {  // above 48 KB a kernel must opt in
    return cudaFuncSetAttribute(combine_lora_kernel<R, P, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) == cudaSuccess;
  }();
  (void)attr;
  combine_lora_kernel<R, P, T><<<grid, kThreads, smem, st>>>(acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
}

template <int R, int T>
void launch_combine_lora(dim3 grid, cudaStream_t st, const float* acc, int M, int K, const float* rscale, float alpha, float* C, int ldc,
                         int accumulate, const LoraDx& lx) {
  if (lx.n == 1) {
    launch_combine_lora_t<R, 1, T>(grid, st, acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
  } else if constexpr (R <= 16) {  // rank 32 fuses one part only (LoraDx::fusable: A's registers)
    if (lx.n == 2) {
      launch_combine_lora_t<R, 2, T>(grid, st, acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
    } else {
      launch_combine_lora_t<R, 3, T>(grid, st, acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
    }
  }
}

template <int T>
void launch_combine_lora_r(dim3 grid, cudaStream_t st, const float* acc, int M, int K, const float* rscale, float alpha, float* C, int ldc,
                           int accumulate, const LoraDx& lx) {
  if (lx.r == 8) {
    launch_combine_lora<8, T>(grid, st, acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
  } else if (lx.r == 16) {
    launch_combine_lora<16, T>(grid, st, acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
  } else {
    launch_combine_lora<32, T>(grid, st, acc, M, K, rscale, alpha, C, ldc, accumulate, lx);
  }
}

__global__ void __launch_bounds__(kThreads) scale_cols_kernel(const float* __restrict__ A, int lda, int M, int N, const ColScales cs,
                                                              float* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(M) * N) return;
  const int m = static_cast<int>(idx / N), c = static_cast<int>(idx % N);
  out[idx] = A[static_cast<int64_t>(m) * lda + c] * cs.at(c);
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void TrainBlas::split_gemm(const float* A, int lda, int M, int N, const ColScales& cs, const void* W, int type, int K, float alpha,
                           float* C, int ldc, bool accumulate, bool tf32, const LoraDx* lora) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (type == 0) {
    if (lora != nullptr && lora->n > 0) throw_error("split_gemm: LoRA parts need F16 or BF16 weights");
    const float* a = A;
    int la = lda;
    if (cs.n > 0) {
      auto* t = static_cast<float*>(scratch(kSlotSplitA, static_cast<size_t>(M) * N * sizeof(float)));
      scale_cols_kernel<<<blocks(static_cast<int64_t>(M) * N), kThreads, 0, st_>>>(A, lda, M, N, cs, t);
      TERN_CUDA_LAUNCHED("scale_cols_kernel");
      a = t, la = N;
    }
    gemm(false, false, M, K, N, alpha, a, la, static_cast<const float*>(W), K, accumulate ? 1.0f : 0.0f, C, ldc, tf32);
    return;
  }
  const int terms = split_terms(type, tf32);
  void* split = scratch(kSlotSplitA, static_cast<size_t>(terms) * M * N * 2);
  auto* rscale = static_cast<float*>(scratch(kSlotSplitScale, static_cast<size_t>(M) * sizeof(float)));
  if (type == 1) {
    if (tf32) {
      split_rows_kernel<1, 1><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
    } else {
      split_rows_kernel<1, 2><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
    }
  } else if (tf32) {
    split_rows_kernel<2, 2><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
  } else {
    split_rows_kernel<2, 3><<<M, kThreads, 0, st_>>>(A, lda, M, N, cs, split, rscale);
  }
  TERN_CUDA_LAUNCHED("split_rows_kernel");
  terms_gemm(split, terms, rscale, M, N, W, type, K, alpha, C, ldc, accumulate, lora);
}

void TrainBlas::terms_gemm(const void* split, int terms, const float* rscale, int M, int N, const void* W, int type, int K, float alpha,
                           float* C, int ldc, bool accumulate, const LoraDx* lora, int lds) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (lds == 0) lds = N;
  auto* acc = static_cast<float*>(scratch(kSlotSplitAcc, static_cast<size_t>(terms) * M * K * sizeof(float)));
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType t = type == 1 ? CUDA_R_16F : CUDA_R_16BF;
  const cublasStatus_t s = cublasGemmEx(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_N, CUBLAS_OP_N, K, terms * M, N, &one, W, t, K, split,
                                        t, lds, &zero, acc, CUDA_R_32F, K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) throw_error(std::string("cuBLAS split_gemm GEMM failed: ") + cublasGetStatusString(s));
  if (lora != nullptr && lora->n > 0) {
    if (!LoraDx::fusable(lora->r, lora->n, K, C, ldc) || reinterpret_cast<uintptr_t>(acc) % 16 != 0 || terms > 2) {
      throw_error("split_gemm: these LoRA parts cannot be fused (LoraDx::fusable)");
    }
    const int a = accumulate ? 1 : 0;
    if (lora->tf32 && lora->r == 16 && terms == 1 && K % 8 == 0) {
      const dim3 mgrid((K + kCmbCols - 1) / kCmbCols, (M + kCmbRows - 1) / kCmbRows);
      if (lora->n == 1) {
        combine_lora_mma_kernel<1><<<mgrid, 128, 0, st_>>>(acc, M, K, rscale, alpha, C, ldc, a, *lora);
      } else if (lora->n == 2) {
        combine_lora_mma_kernel<2><<<mgrid, 128, 0, st_>>>(acc, M, K, rscale, alpha, C, ldc, a, *lora);
      } else {
        combine_lora_mma_kernel<3><<<mgrid, 128, 0, st_>>>(acc, M, K, rscale, alpha, C, ldc, a, *lora);
      }
      TERN_CUDA_LAUNCHED("combine_lora_mma_kernel");
      return;
    }
    const dim3 grid((K + kThreads - 1) / kThreads, (M + kLoraRows - 1) / kLoraRows);
    if (terms == 1) {
      launch_combine_lora_r<1>(grid, st_, acc, M, K, rscale, alpha, C, ldc, a, *lora);
    } else {
      launch_combine_lora_r<2>(grid, st_, acc, M, K, rscale, alpha, C, ldc, a, *lora);
    }
    TERN_CUDA_LAUNCHED("combine_lora_kernel");
    return;
  }
  const bool v4 = K % 4 == 0 && ldc % 4 == 0 && reinterpret_cast<uintptr_t>(C) % 16 == 0 && reinterpret_cast<uintptr_t>(acc) % 16 == 0;
  const int per = v4 ? 4 : 1, rows = std::min((M + kCombineRows - 1) / kCombineRows, 65535);
  const dim3 grid((K + kThreads * per - 1) / (kThreads * per), rows);
  if (v4) {
    combine_kernel<4><<<grid, kThreads, 0, st_>>>(acc, terms, M, K, rscale, alpha, C, ldc, accumulate ? 1 : 0);
  } else {
    combine_kernel<1><<<grid, kThreads, 0, st_>>>(acc, terms, M, K, rscale, alpha, C, ldc, accumulate ? 1 : 0);
  }
  TERN_CUDA_LAUNCHED("combine_kernel");
}

void split_gemm(const float* A, int M, int N, const void* W, int type, int K, float alpha, float* C, cudaStream_t st) {
  TrainBlas blas(st);
  blas.split_gemm(A, N, M, N, ColScales{}, W, type, K, alpha, C, K, false);
}

}  // namespace tern::cuda
