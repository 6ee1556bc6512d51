// Backward ops of the LoRA training step on the GPU, each checked against its CPU
// reference in train/ops.h (tests/cuda/test_cuda_kernels.cpp): RMSNorm backward (frozen
// weight), the gated activation's backward, and the LoRA branch forward/backward on cuBLAS
// (float32: the adapter's matrices are small, accuracy is what matters).
#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_util.cuh"
#include "backend/cuda/train_kernels.h"

namespace tern::cuda {

namespace {

constexpr int kThreads = 256;

// train::rmsnorm_bwd's per-row factors and per-element formula, rounded as the CPU rounds
// them: r and coef once per row, then float products (no contraction). Per element in
// double (as before: r w dy - x r^3 / n dot, a double division each) these kernels were
// bound by FP64 issue (H200: the gated one 275 us a call at 2 TB/s).
struct RowCoef {
  float r, coef;
  __device__ __forceinline__ float grad(float w, float dy, float x) const { return __fsub_rn(__fmul_rn(r, __fmul_rn(w, dy)), __fmul_rn(x, coef)); }
};
__device__ __forceinline__ RowCoef row_coef(double ss, double dot, int n, float eps) {
  const float r = 1.0f / sqrtf(__fadd_rn(static_cast<float>(ss / n), eps));
  const double rd = r;
  return {r, static_cast<float>(rd * rd * rd / static_cast<double>(n) * dot)};
}

// train::rmsnorm_bwd: dx = r w dy - x r^3 / n sum_j w_j dy_j x_j, sums in double. (Keeping
// the row's x and dy in registers, 12 values each per thread at the hidden width, measured
// slower: 9.9 ms a step against ~7.5 on the H100, as 84 values per thread had in session 3.)
__global__ void __launch_bounds__(kThreads) rmsnorm_bwd_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                                               const float* __restrict__ dy, int n, float eps, float* dx,
                                                               int accumulate, float* __restrict__ rscale) {
  __shared__ double sd[kThreads / 32];
  __shared__ float sf[kThreads / 32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  double ss = 0.0, dot = 0.0;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    ss += static_cast<double>(x[base + i]) * x[base + i];
    dot += static_cast<double>(w[i]) * dy[base + i] * x[base + i];
  }
  ss = block_reduce<kThreads>(ss, sd, SumOp{});
  dot = block_reduce<kThreads>(dot, sd, SumOp{});
  const RowCoef c = row_coef(ss, dot, n, eps);
  float amax = 0.0f;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const float g = c.grad(w[i], dy[base + i], x[base + i]);
    const float v = accumulate ? __fadd_rn(dx[base + i], g) : g;
    dx[base + i] = v;
    amax = fmaxf(amax, fabsf(v));
  }
  if (rscale != nullptr) {  // uniform: the row's split scale for lora_dy.cu
    amax = block_reduce<kThreads>(amax, sf, MaxOp{});
    if (threadIdx.x == 0) rscale[blockIdx.x] = row_rscale(amax);
  }
}

// train::gated_act_bwd for one element (act 0 relu^2, 1 silu, 2 gelu with the engine's constant).
__device__ __forceinline__ void gated_bwd(float gi, float ui, float d, int act, float& dg, float& du) {
  if (act == 0) {
    const float r = fmaxf(gi, 0.0f);
    du = d * (r * r);
    dg = d * ui * (2.0f * r);
  } else if (act == 1) {
    const float sig = 1.0f / (1.0f + expf(-gi));
    du = d * (gi / (1.0f + expf(-gi)));
    dg = d * ui * (sig * (1.0f + gi * (1.0f - sig)));
  } else {
    const float c = 0.70710678f, k = 1.12837916709551257390f, z = gi * c;
    du = d * (0.5f * gi * (1.0f + erff(z)));
    dg = d * ui * (0.5f * (1.0f + erff(z)) + 0.5f * gi * c * k * expf(-z * z));
  }
}

// The feed-forward block's sub-norm backward and gating backward in one pass: h = act(g) * u
// is recomputed from [gate | up] (so the forward never stores it), then rmsnorm_bwd_kernel's
// sums and dh, then gated_bwd; dh never reaches memory. VPT > 0: the row's g and u stay in
// registers (n <= VPT * kThreads; dy is read twice), else everything is read twice. Rounds
// exactly as rmsnorm_bwd_kernel followed by the gating backward. TI: float, or __half for
// the F16 gate/up the training step keeps with --precision tf32.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <int VPT, class TI>
__global__ void __launch_bounds__(kThreads) gated_rmsnorm_bwd_kernel(const TI* __restrict__ gu, int ldi, int act,
                                                                     const float* __restrict__ w, const float* __restrict__ dy, int n,
                                                                     float eps, float* __restrict__ dgu, int ldo,
                                                                     float* __restrict__ rscale, float s_gate, float s_up,
                                                                     __half* __restrict__ split) {
  __shared__ double sd[kThreads / 32];
  __shared__ float sf[kThreads / 32];
  const int64_t m = blockIdx.x;
  const TI *g = gu + m * ldi, *u = g + n;
  const float* dyr = dy + m * n;
  constexpr int V = VPT > 0 ? VPT : 1;
  float gv[V], uv[V];
  if constexpr (VPT > 0) {
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int i = threadIdx.x + k * kThreads;
      gv[k] = i < n ? to_float(g[i]) : 0.0f;
      uv[k] = i < n ? to_float(u[i]) : 0.0f;
    }
  }
  auto each = [&](auto f) {  // f(i, g[i], u[i]) over this thread's columns, in order
    if constexpr (VPT > 0) {
#pragma unroll
      for (int k = 0; k < VPT; ++k) {
        if (threadIdx.x + k * kThreads < n) f(threadIdx.x + k * kThreads, gv[k], uv[k]);
      }
    } else {
      for (int i = threadIdx.x; i < n; i += kThreads) f(i, to_float(g[i]), to_float(u[i]));
    }
  };
  double ss = 0.0, dot = 0.0;
  each([&](int i, float gi, float ui) {
    const float h = gated(gi, ui, act);
    ss += static_cast<double>(h) * h;
    dot += static_cast<double>(w[i]) * dyr[i] * h;
  });
  ss = block_reduce<kThreads>(ss, sd, SumOp{});
  dot = block_reduce<kThreads>(dot, sd, SumOp{});
  const RowCoef c = row_coef(ss, dot, n, eps);
  float* dg = split == nullptr ? dgu + m * ldo : nullptr;
  float* du = dg != nullptr ? dg + n : nullptr;
  float amax = 0.0f;
  each([&](int i, float gi, float ui) {
    float a, b;
    gated_bwd(gi, ui, c.grad(w[i], dyr[i], gated(gi, ui, act)), act, a, b);
    if (split == nullptr) dg[i] = a, du[i] = b;
    amax = fmaxf(amax, fmaxf(fabsf(a * s_gate), fabsf(b * s_up)));  // as split_rows_kernel's column-scaled row
  });
  if (rscale == nullptr) return;
  amax = block_reduce<kThreads>(amax, sf, MaxOp{});
  if (threadIdx.x == 0) rscale[m] = row_rscale(amax);
  if (split == nullptr) return;
  // The split instead of dgu: the same values again, now that the row's scale is known.
  const SplitPow2 e = split_pow2(row_rscale(amax));
  __half *sg = split + m * ldo, *su = sg + n;
  each([&](int i, float gi, float ui) {
    float a, b;
    gated_bwd(gi, ui, c.grad(w[i], dyr[i], gated(gi, ui, act)), act, a, b);
    sg[i] = split_half(a * s_gate, e), su[i] = split_half(b * s_up, e);
  });
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void __launch_bounds__(kThreads) add_partials_kernel(const float* __restrict__ part, int S, int m, int n, float* __restrict__ C,
                                                                int ldc) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t mn = static_cast<int64_t>(m) * n;
  if (i >= mn) return;
  float s = 0.0f;
  for (int c = 0; c < S; ++c) s += part[c * mn + i];
  C[(i / n) * ldc + i % n] += s;
}

// C [m][n] += alpha A^T B for A [K][m], B [K][n] (row strides lda, ldb): the LoRA
// gradients dA, dB, a reduction over K = every token of the batch into a small output.
// As one GEMM that leaves most SMs idle, so the K rows are cut into S chunks of one
// strided batched GEMM, and the S partials are then summed in chunk order.
void gemm_tn_chunked(TrainBlas& blas, int m, int n, int K, float alpha, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                     bool tf32) {
  const int S = std::min(16, K / 256);
  if (S <= 1) return blas.gemm(true, false, m, n, K, alpha, A, lda, B, ldb, 1.0f, C, ldc, tf32);
  const int chunk = K / S, rest = K - S * chunk;
  const int64_t mn = static_cast<int64_t>(m) * n;
  auto* part = static_cast<float*>(blas.scratch(kSlotSplitK, static_cast<size_t>(S) * mn * sizeof(float)));
  blas.gemm_strided(true, false, m, n, chunk, alpha, A, lda, static_cast<int64_t>(chunk) * lda, B, ldb, static_cast<int64_t>(chunk) * ldb,
                    0.0f, part, n, mn, S, tf32);
  if (rest > 0) {
    blas.gemm(true, false, m, n, rest, alpha, A + static_cast<int64_t>(S) * chunk * lda, lda, B + static_cast<int64_t>(S) * chunk * ldb, ldb,
              1.0f, part, n, tf32);
  }
  add_partials_kernel<<<blocks_for(mn), kThreads, 0, blas.stream()>>>(part, S, m, n, C, ldc);
  TERN_CUDA_LAUNCHED("add_partials_kernel");
}

// dx (+)= dropout_mask * (du A) / (1 - p) without materialising du A: thread = one input
// column c over kDxRows rows, its column of A in registers, the block's du rows in shared
// memory (from global memory they were a dependent load per row: ncu showed two thirds of
// the cycles stalled on them). As the linear's epilogue (train_fwd.cu): the rank a
// template constant where exact (EXACT: r == R, else r <= R with predicates), pointers
// walking the column, and the next kDxStep rows' dx and mask loads issued before the
// current rows are stored (dx is read and written in place).
constexpr int kDxRows = 32, kDxStep = 8;
template <int R, bool EXACT>
__global__ void __launch_bounds__(kThreads) lora_dx_kernel(const float* __restrict__ du, const float* __restrict__ A, int M, int in, int r_,
                                                           const DropoutSpec d, uint64_t threshold, float keep, float* __restrict__ dx,
                                                           int accumulate) {
  __shared__ __align__(16) float dus[kDxRows][R];
  const int r = EXACT ? R : r_;
  const int m0 = blockIdx.y * kDxRows, rows = min(kDxRows, M - m0);
  for (int i = threadIdx.x; i < rows * r; i += kThreads) dus[i / r][i % r] = du[static_cast<int64_t>(m0) * r + i];
  __syncthreads();
  const int words = dropout_words(in);
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= in) return;
  float a[R];
#pragma unroll
  for (int j = 0; j < R; ++j) a[j] = EXACT || j < r ? A[static_cast<int64_t>(j) * in + c] : 0.0f;
  float* dxp = dx + static_cast<int64_t>(m0) * in + c;
  const uint32_t* bp = d.bits != nullptr ? d.bits + static_cast<int64_t>(m0) * words + c / 32 : nullptr;
  const int shift = c & 31;
  auto kept_at = [&](int i) -> bool {  // row m0 + i
    if (bp != nullptr) return (bp[static_cast<int64_t>(i) * words] >> shift) & 1u;
    const int m = m0 + i, t = m % d.period;
    return dropout_keep(d.seq_seed[m / d.period] + d.salt, static_cast<uint64_t>(t) * in + c, threshold);
  };
  auto one = [&](int i, float old, bool kept) {
    const float* dum = dus[i];
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < R; j += 4) {
      if (EXACT || j < r) {  // the staged row read 16 bytes at a time (a broadcast)
        const float4 q = *reinterpret_cast<const float4*>(dum + j);
        acc = fmaf(q.x, a[j], acc);
        if (EXACT || j + 1 < r) acc = fmaf(q.y, a[j + 1], acc);
        if (EXACT || j + 2 < r) acc = fmaf(q.z, a[j + 2], acc);
        if (EXACT || j + 3 < r) acc = fmaf(q.w, a[j + 3], acc);
      }
    }
    const float v = kept ? __fmul_rn(acc, keep) : 0.0f;
    dxp[static_cast<int64_t>(i) * in] = accumulate ? __fadd_rn(old, v) : v;
  };
  if (rows < kDxRows) {  // the last block row: one row at a time
    for (int i = 0; i < rows; ++i) one(i, accumulate ? dxp[static_cast<int64_t>(i) * in] : 0.0f, kept_at(i));
    return;
  }
  float old[kDxStep];
  bool kept[kDxStep];
#pragma unroll
  for (int i = 0; i < kDxStep; ++i) old[i] = accumulate ? dxp[static_cast<int64_t>(i) * in] : 0.0f, kept[i] = kept_at(i);
#pragma unroll
  for (int mb = 0; mb < kDxRows; mb += kDxStep) {
    float on[kDxStep];
    bool kn[kDxStep];
    if (mb + kDxStep < kDxRows) {  // the next rows' loads in flight while these are computed
#pragma unroll
      for (int i = 0; i < kDxStep; ++i) {
        on[i] = accumulate ? dxp[static_cast<int64_t>(mb + kDxStep + i) * in] : 0.0f;
        kn[i] = kept_at(mb + kDxStep + i);
      }
    }
#pragma unroll
    for (int i = 0; i < kDxStep; ++i) one(mb + i, old[i], kept[i]);
    if (mb + kDxStep < kDxRows) {
#pragma unroll
      for (int i = 0; i < kDxStep; ++i) old[i] = on[i], kept[i] = kn[i];
    }
  }
}

}  // namespace

void launch_rmsnorm_bwd(const float* x, const float* w, const float* dy, int M, int n, float eps, float* dx, bool accumulate,
                        cudaStream_t st, float* rscale) {
  if (M <= 0) return;
  rmsnorm_bwd_kernel<<<M, kThreads, 0, st>>>(x, w, dy, n, eps, dx, accumulate ? 1 : 0, rscale);
  TERN_CUDA_LAUNCHED("rmsnorm_bwd_kernel");
}

void launch_gated_rmsnorm_bwd(const float* gu, int ldi, int act, const float* w, const float* dy, int M, int F, float eps, float* dgu, int ldo,
                              cudaStream_t st, float* rscale, float s_gate, float s_up, bool gu_f16, void* split) {
  if (M <= 0 || F <= 0) return;
  if (split != nullptr && rscale == nullptr) throw_error("launch_gated_rmsnorm_bwd: the split needs its row scales");
  auto* sp = static_cast<__half*>(split);
  auto run = [&](const auto* in) {
    if (F <= 28 * kThreads) {
      gated_rmsnorm_bwd_kernel<28><<<M, kThreads, 0, st>>>(in, ldi, act, w, dy, F, eps, dgu, ldo, rscale, s_gate, s_up, sp);
    } else {
      gated_rmsnorm_bwd_kernel<0><<<M, kThreads, 0, st>>>(in, ldi, act, w, dy, F, eps, dgu, ldo, rscale, s_gate, s_up, sp);
    }
  };
  if (gu_f16) {
    run(reinterpret_cast<const __half*>(gu));
  } else {
    run(gu);
  }
  TERN_CUDA_LAUNCHED("gated_rmsnorm_bwd_kernel");
}

void lora_fwd_gpu(TrainBlas& blas, const float* x, const float* A, const float* B, int M, int in, int r, int out, float scaling,
                  const DropoutSpec& d, float* u, float* y, int ldy, bool accumulate, bool tf32) {
  if (!lora_rows_product(blas, x, M, in, A, r, d, u, tf32)) {
    if (folded(d)) throw_error("CUDA training: a folded RMSNorm or F16 input needs lora_mma.cu's kernels (tf32, rank <= 32)");
    const float* xd = x;
    if (d.p > 0.0f) {
      auto* t = static_cast<float*>(blas.scratch(kSlotLoraX, static_cast<size_t>(M) * in * sizeof(float)));
      launch_dropout(x, in, M, in, d, t, in, false, blas.stream());
      xd = t;
      blas.mark("f.lora.dropout");
    }
    blas.gemm(false, true, M, r, in, 1.0f, xd, in, A, in, 0.0f, u, r, tf32);
  }
  if (y != nullptr) blas.gemm(false, true, M, out, r, scaling, u, r, B, r, accumulate ? 1.0f : 0.0f, y, ldy, tf32);
}

void lora_du_gpu(TrainBlas& blas, const float* dy, int ldy, const float* B, int M, int r, int out, float scaling, float* du, bool tf32) {
  // du = s dy B on cuBLAS (the TF32 rows kernel, fed from registers or a cp.async ring, was slower).
  blas.gemm(false, false, M, r, out, scaling, dy, ldy, B, r, 0.0f, du, r, tf32);
}

void lora_bwd_gpu(TrainBlas& blas, const float* x, const float* A, const float* B, const float* u, const float* dy, int ldy, int M, int in,
                  int r, int out, float scaling, const DropoutSpec& d, float* dx, float* dA, float* dB, bool accumulate, bool tf32,
                  const float* du_in) {
  const float* du = du_in;
  if (du == nullptr) {
    auto* d = static_cast<float*>(blas.scratch(kSlotLoraU, static_cast<size_t>(M) * r * sizeof(float)));
    lora_du_gpu(blas, dy, ldy, B, M, r, out, scaling, d, tf32);
    blas.mark("b.lora.du");
    du = d;
  }
  const bool drop = d.p > 0.0f;
  DropoutSpec dd = d;  // the forward stored the mask bits (if any): read them
  dd.write_bits = false;
  float* t = nullptr;
  auto scratch_x = [&] {
    if (t == nullptr) t = static_cast<float*>(blas.scratch(kSlotLoraX, static_cast<size_t>(M) * in * sizeof(float)));
    return t;
  };
  // dB += s dy^T u (with tf32 by the ring-fed cols kernel, writing [out][r]); null: done by lora_dy_pass.
  if (dB != nullptr && !(tf32 && lora_skinny_enabled() && lora_cols_mma(blas, u, dy, M, out, r, scaling, DropoutSpec{}, dB, ldy, true))) {
    gemm_tn_chunked(blas, out, r, M, scaling, dy, ldy, u, r, dB, r, tf32);
  }
  if (dB != nullptr) blas.mark("b.lora.dB");
  if (!lora_cols_product(blas, du, x, M, in, r, 1.0f, dd, dA, tf32)) {
    if (folded(d)) throw_error("CUDA training: a folded RMSNorm or F16 input needs lora_mma.cu's kernels (tf32, rank <= 32)");
    const float* xd = x;
    if (drop) {
      launch_dropout(x, in, M, in, dd, scratch_x(), in, false, blas.stream());
      xd = t;
      blas.mark("b.lora.dropout");
    }
    gemm_tn_chunked(blas, r, in, M, 1.0f, du, r, xd, in, dA, in, tf32);  // dA += du^T x_d
  }
  blas.mark("b.lora.dA");
  if (dx == nullptr) return;
  if (drop && r <= 64) {
    // dx (+)= (du A) * mask / (1 - p), masked as it is computed.
    const dim3 grid((in + kThreads - 1) / kThreads, (M + kDxRows - 1) / kDxRows);
    const float keep = 1.0f / (1.0f - d.p);
    const int acc = accumulate ? 1 : 0;
    const uint64_t thr = dropout_threshold(d.p);
    if (r == 16) {
      lora_dx_kernel<16, true><<<grid, kThreads, 0, blas.stream()>>>(du, A, M, in, r, dd, thr, keep, dx, acc);
    } else if (r <= 16) {
      lora_dx_kernel<16, false><<<grid, kThreads, 0, blas.stream()>>>(du, A, M, in, r, dd, thr, keep, dx, acc);
    } else if (r == 32) {
      lora_dx_kernel<32, true><<<grid, kThreads, 0, blas.stream()>>>(du, A, M, in, r, dd, thr, keep, dx, acc);
    } else if (r <= 32) {
      lora_dx_kernel<32, false><<<grid, kThreads, 0, blas.stream()>>>(du, A, M, in, r, dd, thr, keep, dx, acc);
    } else {
      lora_dx_kernel<64, false><<<grid, kThreads, 0, blas.stream()>>>(du, A, M, in, r, dd, thr, keep, dx, acc);
    }
    TERN_CUDA_LAUNCHED("lora_dx_kernel");
  } else if (drop) {
    // Ranks above 64: through the scratch rows, then the mask.
    blas.gemm(false, false, M, in, r, 1.0f, du, r, A, in, 0.0f, scratch_x(), in, tf32);
    if (!accumulate) TERN_CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<size_t>(M) * in * sizeof(float), blas.stream()));
    launch_dropout(t, in, M, in, dd, dx, in, true, blas.stream());
  } else {
    blas.gemm(false, false, M, in, r, 1.0f, du, r, A, in, accumulate ? 1.0f : 0.0f, dx, in, tf32);
  }
}

}  // namespace tern::cuda
