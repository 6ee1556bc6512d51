// Each CUDA kernel against its CPU reference (backend/cpu/kernels.h) on fresh random
// inputs and odd shapes. Integer results must match exactly; float results by
// relative L2 (NaN never passes: test::rel_l2 returns +inf). Skipped without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cuda/testing.h"
#include "train/ops.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace tern {
namespace {

namespace ct = cuda::testing;

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

std::mt19937& rng() {
  static std::mt19937 r(std::random_device{}());
  return r;
}

std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng());
  return v;
}

TernaryMatrix random_ternary(int64_t rows, int64_t cols) {
  std::vector<int8_t> w(rows * cols);
  for (auto& x : w) x = static_cast<int8_t>(static_cast<int>(rng()() % 3) - 1);
  std::uniform_real_distribution<float> s(0.5f, 2.0f);
  return make_ternary(w, rows, cols, s(rng()));
}

// CPU chain for one row of activations: rmsnorm + quantize_row_i8.
struct CpuQuant {
  std::vector<int8_t> q;
  float s = 0;
  int32_t sum = 0;
};
CpuQuant cpu_quant(const float* x, const float* w, int64_t n, int64_t padded, float eps) {
  std::vector<float> y(n);
  cpu::rmsnorm(x, w, n, eps, y.data());
  CpuQuant r;
  r.q.resize(padded);
  r.s = cpu::quantize_row_i8(y.data(), n, padded, r.q.data(), &r.sum);
  return r;
}

TEST(CudaKernels, NormQuantMatchesCpuExactly) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {128, 200, 1000, 2560, 6912}) {
    for (int64_t M : {1, 3, 17}) {
      auto x = randn(M * n, n == 200 ? 30.0f : 1.0f);
      auto w = randn(n, 0.3f);
      for (auto& v : w) v += 1.0f;
      auto got = ct::norm_quant(x.data(), w.data(), M, n, 1e-5f);
      ASSERT_EQ(got.padded, (n + 127) / 128 * 128);
      for (int64_t m = 0; m < M; ++m) {
        CpuQuant want = cpu_quant(x.data() + m * n, w.data(), n, got.padded, 1e-5f);
        EXPECT_EQ(got.s[m], want.s) << "n=" << n << " m=" << m;
        EXPECT_EQ(got.qsum[m], want.sum) << "n=" << n << " m=" << m;
        int64_t diff = 0;
        for (int64_t k = 0; k < got.padded; ++k) diff += got.q[m * got.padded + k] != want.q[k];
        EXPECT_EQ(diff, 0) << "n=" << n << " m=" << m;
      }
    }
  }
}

// The training step's norm + quantization (train_fwd.cu): the float normed row and the
// int8 values bit for bit as cpu::rmsnorm + quantize_row_i8, gated or not, and zeros in
// the row's padding up to the int8 GEMM's stride.
TEST(CudaKernels, TrainNormQuantMatchesCpuExactly) {
  SKIP_WITHOUT_GPU();
  // Widths for each of the kernel's paths: row in registers (<= 3072, <= 7168) or re-read.
  for (int64_t n : {128, 200, 2560, 3100, 6912, 7300}) {
    for (bool gated : {false, true}) {
      const int M = 5;
      auto x = randn(M * n * (gated ? 2 : 1), n == 200 ? 30.0f : 1.0f);
      auto w = randn(n, 0.3f);
      for (auto& v : w) v += 1.0f;
      auto got = ct::train_norm_quant(x, w, M, static_cast<int>(n), gated, 0, 1e-5f);
      for (int m = 0; m < M; ++m) {
        std::vector<float> v(n), xn(n);
        if (gated) {
          cpu::gated_activation(x.data() + m * 2 * n, x.data() + m * 2 * n + n, n, Activation::Relu2, v.data());
          EXPECT_EQ(0, std::memcmp(v.data(), got.h.data() + m * n, n * 4)) << "h n=" << n;
        } else {
          std::copy(x.begin() + m * n, x.begin() + (m + 1) * n, v.begin());
        }
        cpu::rmsnorm(v.data(), w.data(), n, 1e-5f, xn.data());
        EXPECT_EQ(0, std::memcmp(xn.data(), got.xn.data() + m * n, n * 4)) << "xn n=" << n << " gated " << gated;
        // The folded norm's outputs (--precision tf32's training step): the row's inverse RMS
        // (xn = w * (v * rs) to the bit), F16 v * rs and, gated, the F16 gate/up.
        int64_t bad = 0;
        for (int64_t k = 0; k < n; ++k) {
          const float vr = v[k] * got.rs[m];
          bad += w[k] * vr != xn[k];
          bad += f32_to_f16(vr) != got.x16[m * n + k];
          if (gated) {
            const size_t at = m * 2 * n + k;
            bad += f32_to_f16(x[at]) != got.gu16[at] || f32_to_f16(x[at + n]) != got.gu16[at + n];
          }
        }
        EXPECT_EQ(bad, 0) << "rs / x16 / gu16 n=" << n << " gated " << gated;
        std::vector<int8_t> q(n);
        int32_t qsum = 0;
        const float s = cpu::quantize_row_i8(xn.data(), n, n, q.data(), &qsum);
        EXPECT_EQ(s, got.s[m]) << "n=" << n;
        int64_t diff = 0;
        for (int64_t k = 0; k < n; ++k) diff += q[k] != got.q[m * n + k];
        EXPECT_EQ(diff, 0) << "n=" << n << " gated " << gated;
      }
      EXPECT_EQ(std::count(got.pad.begin(), got.pad.end(), 0), static_cast<std::ptrdiff_t>(got.pad.size())) << "pad n=" << n;
    }
  }
}

// Small M takes the GEMM's split-K path (launch_gemm splits K when there are few
// blocks); 16384 rows x 200 tokens has enough blocks to run unsplit.
TEST(CudaKernels, TernaryDotsExactGemvAndGemm) {
  SKIP_WITHOUT_GPU();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 128}, {7, 200}, {13, 384}, {100, 2560}, {33, 6912},
                                                          {640, 2560}, {2565, 2560}, {257, 6912}, {3, 1000}, {16384, 256}};
  for (auto [rows, cols] : shapes) {
    TernaryMatrix w = random_ternary(rows, cols);
    const int64_t padded = w.padded_cols();
    for (int64_t M : {1, 3, 17, 70, 200}) {
      if ((M == 200) != (rows == 16384)) continue;
      std::uniform_int_distribution<int> d(-128, 127);
      std::vector<int8_t> q(M * padded, 0);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t k = 0; k < cols; ++k) q[m * padded + k] = static_cast<int8_t>(d(rng()));
      }
      std::vector<int32_t> want(M * rows);
      for (int64_t m = 0; m < M; ++m) {
        int32_t sum = 0;
        for (int64_t k = 0; k < padded; ++k) sum += q[m * padded + k];
        for (int64_t r = 0; r < rows; ++r) want[m * rows + r] = cpu::ternary_dot(w.data + r * w.row_bytes, q.data() + m * padded, padded, sum);
      }
      for (bool gemm : {false, true}) {
        if (M > 1 && !gemm) continue;
        auto got = ct::ternary_dots(w, q.data(), M, gemm);
        ASSERT_EQ(got.size(), want.size());
        int64_t bad = 0;
        for (size_t i = 0; i < got.size(); ++i) bad += got[i] != want[i];
        EXPECT_EQ(bad, 0) << rows << "x" << cols << " M=" << M << (gemm ? " gemm" : " gemv");
      }
    }
  }
}

// The float path: fused norm+quant prologue (GEMV, M = 1) or quant kernel + GEMM.
TEST(CudaKernels, TernaryLinearMatchesCpuChain) {
  SKIP_WITHOUT_GPU();
  for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{37, 256}, {2560, 2560}, {300, 6912}, {45, 333}}) {
    TernaryMatrix w = random_ternary(rows, cols);
    auto normw = randn(cols, 0.2f);
    for (auto& v : normw) v += 1.0f;
    for (int64_t M : {1, 3, 17}) {
      auto x = randn(M * cols);
      for (bool add : {false, true}) {
        std::vector<float> init = add ? randn(M * rows) : std::vector<float>();
        auto got = ct::ternary_linear(w, x.data(), normw.data(), M, 1e-5f, add, init);
        std::vector<float> want(M * rows);
        for (int64_t m = 0; m < M; ++m) {
          CpuQuant cq = cpu_quant(x.data() + m * cols, normw.data(), cols, w.padded_cols(), 1e-5f);
          for (int64_t r = 0; r < rows; ++r) {
            const int32_t d = cpu::ternary_dot(w.data + r * w.row_bytes, cq.q.data(), w.padded_cols(), cq.sum);
            const float y = static_cast<float>(d) / cq.s * w.scale;
            want[m * rows + r] = add ? init[m * rows + r] + y : y;
          }
        }
        const double err = test::rel_l2(got.data(), want.data(), want.size());
        EXPECT_LT(err, 1e-6) << rows << "x" << cols << " M=" << M << " add=" << add;
      }
    }
  }
}

TEST(CudaKernels, GateUpEpilogue) {
  SKIP_WITHOUT_GPU();
  for (int act = 0; act < 3; ++act) {
    for (auto [F, H] : std::vector<std::pair<int64_t, int64_t>>{{512, 256}, {6912, 2560}, {100, 200}}) {
      TernaryMatrix g = random_ternary(F, H), u = random_ternary(F, H);
      auto x = randn(H), normw = randn(H, 0.1f);
      for (auto& v : normw) v += 1.0f;
      auto got = ct::gate_up(g, u, x.data(), normw.data(), 1e-5f, act);
      CpuQuant cq = cpu_quant(x.data(), normw.data(), H, g.padded_cols(), 1e-5f);
      std::vector<float> gv(F), uv(F), want(F);
      for (int64_t r = 0; r < F; ++r) {
        gv[r] = static_cast<float>(cpu::ternary_dot(g.data + r * g.row_bytes, cq.q.data(), g.padded_cols(), cq.sum)) / cq.s * g.scale;
        uv[r] = static_cast<float>(cpu::ternary_dot(u.data + r * u.row_bytes, cq.q.data(), u.padded_cols(), cq.sum)) / cq.s * u.scale;
      }
      const Activation a = act == 0 ? Activation::Relu2 : act == 1 ? Activation::Silu : Activation::Gelu;
      cpu::gated_activation(gv.data(), uv.data(), F, a, want.data());
      EXPECT_LT(test::rel_l2(got.data(), want.data(), F), 1e-5) << "act=" << act << " F=" << F;
    }
  }
}

// The training linear's epilogue (train_fwd.cu) against its definition, bit for bit:
// v = float(y) / s[m] * scale(segment), + scaling * (B u) (fmaf over j in order), + the
// residual; every rank path (none, exact 8/16/32, up to 16/32/64 with predicates, any),
// one to three segments (one without an adapter), full 32-row blocks and a tail.
TEST(CudaKernels, LinearEpilogueMatchesDefinition) {
  SKIP_WITHOUT_GPU();
  std::uniform_int_distribution<int32_t> sums(-40000, 40000);
  for (int r : {0, 16, 8, 12, 32, 48, 80}) {
    for (auto [M, segs] : std::vector<std::pair<int, std::vector<int>>>{{96, {300}}, {70, {260, 333, 517}}, {33, {64, 100}}, {70, {128, 192, 264}}}) {
      for (bool with_resid : {false, true}) {
        const int N = segs.back(), nseg = static_cast<int>(segs.size());
        std::vector<int32_t> y(static_cast<size_t>(M) * N);
        for (auto& v : y) v = sums(rng());
        auto s = randn(M, 0.5f), resid = with_resid ? randn(static_cast<size_t>(M) * N) : std::vector<float>{};
        for (auto& v : s) v = 1.0f + std::abs(v);
        std::vector<float> scale(nseg);
        std::vector<std::vector<float>> u(nseg), B(nseg);
        for (int k = 0; k < nseg; ++k) {
          scale[k] = 0.5f + 0.25f * static_cast<float>(k);
          const int width = segs[k] - (k == 0 ? 0 : segs[k - 1]);
          if (r > 0 && !(nseg > 1 && k == 1)) u[k] = randn(static_cast<size_t>(M) * r), B[k] = randn(static_cast<size_t>(width) * r, 0.1f);
        }
        const float scaling = 1.75f;
        auto got = ct::linear_epilogue(y, M, N, s, segs, scale, r, scaling, u, B, resid);
        std::vector<float> want(static_cast<size_t>(M) * N);
        for (int m = 0; m < M; ++m) {
          for (int c = 0, k = 0; c < N; ++c) {
            while (c >= segs[k]) ++k;
            const int start = k == 0 ? 0 : segs[k - 1];
            volatile float o = static_cast<float>(y[static_cast<size_t>(m) * N + c]) / s[m] * scale[k];
            if (!u[k].empty()) {
              float acc = 0.0f;
              for (int j = 0; j < r; ++j) acc = std::fma(B[k][static_cast<size_t>(c - start) * r + j], u[k][static_cast<size_t>(m) * r + j], acc);
              volatile float t = scaling * acc;
              o = o + t;
            }
            want[static_cast<size_t>(m) * N + c] = with_resid ? resid[static_cast<size_t>(m) * N + c] + o : o;
          }
        }
        size_t bad = 0;
        for (size_t i = 0; i < want.size(); ++i) bad += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
        EXPECT_EQ(bad, 0u) << "r=" << r << " M=" << M << " N=" << N << " segments " << nseg << " resid " << with_resid;
        // tf32 (rank 16, segments of whole 8-column tiles: B u on tensor cores): the LoRA
        // term to TF32 accuracy (its difference to the adapter-less value, rounded at the sums'
        // magnitude ~4e4: 1e-2), everything else exact as above.
        if (r == 16) {
          const auto gt = ct::linear_epilogue(y, M, N, s, segs, scale, r, scaling, u, B, resid, true);
          const auto base = ct::linear_epilogue(y, M, N, s, segs, scale, 0, scaling, u, B, resid);
          std::vector<float> dg(want.size()), dw(want.size());
          for (size_t i = 0; i < want.size(); ++i) dg[i] = gt[i] - base[i], dw[i] = want[i] - base[i];
          EXPECT_LT(test::rel_l2(dg.data(), dw.data(), dw.size()), 1e-2) << "tf32 M=" << M << " N=" << N << " resid " << with_resid;
        }
      }
    }
  }
}

void cpu_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v, int n_heads,
                   int n_kv, int hd, int M, int pos0, std::vector<float>& out) {
  const int qd = n_heads * hd, kvd = n_kv * hd, group = n_heads / n_kv;
  out.assign(static_cast<size_t>(M) * qd, 0.0f);
  std::vector<float> scores(pos0 + M);
  for (int i = 0; i < M; ++i) {
    for (int h = 0; h < n_heads; ++h) {
      cpu::attention_head(q.data() + i * qd + h * hd, k.data() + (h / group) * hd, v.data() + (h / group) * hd, kvd, pos0 + i + 1,
                          hd, scores.data(), out.data() + i * qd + h * hd);
    }
  }
}

TEST(CudaKernels, AttentionPrefillMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv, hd, M, pos0;
  };
  for (Case c : std::vector<Case>{{4, 2, 64, 17, 0}, {20, 5, 128, 37, 5}, {6, 6, 32, 3, 100}, {8, 1, 256, 9, 2}, {12, 2, 64, 1, 0}}) {
    const int qd = c.n_heads * c.hd, kvd = c.n_kv * c.hd, n = c.pos0 + c.M;
    auto q = randn(static_cast<size_t>(c.M) * qd), k = randn(static_cast<size_t>(n) * kvd, 2.0f), v = randn(static_cast<size_t>(n) * kvd);
    auto got = ct::attention_prefill(q, k, v, c.n_heads, c.n_kv, c.hd, c.M, c.pos0);
    std::vector<float> want;
    cpu_attention(q, k, v, c.n_heads, c.n_kv, c.hd, c.M, c.pos0, want);
    EXPECT_LT(test::rel_l2(got.data(), want.data(), want.size()), 1e-5) << c.n_heads << "/" << c.n_kv << " hd=" << c.hd;
  }
}

TEST(CudaKernels, AttentionDecodeRopeCacheAndSplits) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int n_heads, n_kv, hd, pos, splits;
  };
  for (Case c : std::vector<Case>{{4, 2, 64, 0, 1}, {4, 2, 64, 10, 1}, {20, 5, 128, 300, 8}, {20, 5, 128, 5, 32},
                                  {6, 3, 32, 77, 3}, {16, 1, 256, 40, 4},
                                  {20, 5, 128, 1500, 16}, {4, 2, 64, 700, 8}}) {  // splits of >= 128 positions
    const int qd = c.n_heads * c.hd, kvd = c.n_kv * c.hd;
    const float theta = 500000.0f;
    auto qkv = randn(qd + 2 * kvd), kc = randn(static_cast<size_t>(c.pos) * kvd + 1), vc = randn(static_cast<size_t>(c.pos) * kvd + 1);
    std::vector<float> krow, vrow;
    auto got = ct::attention_decode(qkv, kc, vc, c.n_heads, c.n_kv, c.hd, c.pos, theta, c.splits, &krow, &vrow);
    // CPU: rope q and k at pos, append k/v, attend over pos + 1 positions.
    std::vector<float> inv(c.hd / 2);
    cpu::rope_inv_freq(theta, c.hd, inv.data());
    std::vector<float> q(qkv.begin(), qkv.begin() + qd), kn(qkv.begin() + qd, qkv.begin() + qd + kvd), vn(qkv.begin() + qd + kvd, qkv.end());
    cpu::rope_neox(q.data(), c.n_heads, c.hd, c.pos, inv.data());
    cpu::rope_neox(kn.data(), c.n_kv, c.hd, c.pos, inv.data());
    std::vector<float> k(kc.begin(), kc.begin() + static_cast<size_t>(c.pos) * kvd), v(vc.begin(), vc.begin() + static_cast<size_t>(c.pos) * kvd);
    k.insert(k.end(), kn.begin(), kn.end());
    v.insert(v.end(), vn.begin(), vn.end());
    std::vector<float> want;
    cpu_attention(q, k, v, c.n_heads, c.n_kv, c.hd, 1, c.pos, want);
    EXPECT_LT(test::rel_l2(got.data(), want.data(), want.size()), 1e-5) << "pos=" << c.pos << " splits=" << c.splits;
    EXPECT_LT(test::rel_l2(krow.data(), kn.data(), kvd), 1e-6);
    EXPECT_EQ(vrow, vn);
  }
}

FloatMatrix random_embedding(FloatType type, int64_t V, int64_t H) {
  FloatMatrix m;
  m.type = type;
  m.rows = V;
  m.cols = H;
  auto f = randn(V * H, 0.05f);
  if (type == FloatType::F32) {
    auto buf = std::make_shared<std::vector<float>>(f);
    m.data = buf->data();
    m.owner = buf;
  } else {
    auto buf = std::make_shared<std::vector<uint16_t>>(V * H);
    for (int64_t i = 0; i < V * H; ++i) (*buf)[i] = type == FloatType::F16 ? f32_to_f16(f[i]) : f32_to_bf16(f[i]);
    m.data = buf->data();
    m.owner = buf;
  }
  return m;
}

// Both head paths (CUDA-core GEMV passes, cuBLAS with split inputs) and the fused
// argmax, against cpu::rmsnorm + cpu::dot_f32.
TEST(CudaKernels, LmHeadAllTypes) {
  SKIP_WITHOUT_GPU();
  for (FloatType type : {FloatType::F16, FloatType::BF16, FloatType::F32}) {
    for (auto [V, H] : std::vector<std::pair<int64_t, int64_t>>{{1001, 256}, {513, 200}, {3000, 2560}, {77, 36}}) {
      FloatMatrix emb = random_embedding(type, V, H);
      auto normw = randn(H, 0.1f);
      for (auto& v : normw) v += 1.0f;
      for (int64_t M : {1, 3, 6, 70}) {
        auto x = randn(M * H);
        std::vector<float> want(M * V), xn(H), row(H);
        for (int64_t m = 0; m < M; ++m) {
          cpu::rmsnorm(x.data() + m * H, normw.data(), H, 1e-5f, xn.data());
          for (int64_t v = 0; v < V; ++v) {
            emb.row_to_f32(v, row.data());
            want[m * V + v] = cpu::dot_f32(row.data(), xn.data(), H);
          }
        }
        for (bool gemm : {false, true}) {
          if (!gemm && M > 6) continue;
          auto got = ct::lm_head(emb, x.data(), normw.data(), M, 1e-5f, gemm);
          const std::string what = std::string(float_type_name(type)) + " V=" + std::to_string(V) + " H=" + std::to_string(H) +
                                   " M=" + std::to_string(M) + (gemm ? " cuBLAS" : " GEMV");
          EXPECT_LT(test::rel_l2(got.logits.data(), want.data(), want.size()), 1e-5) << what;
          for (int64_t m = 0; m < M; ++m) {
            EXPECT_EQ(got.argmax[m], static_cast<int32_t>(test::argmax(want.data() + m * V, V))) << what << " row " << m;
            EXPECT_EQ(got.argmax[m], argmax(got.logits.data() + m * V, V)) << what << " fused argmax, row " << m;
          }
        }
      }
    }
  }
}

// The int8 head (model/head_i8.h): exact int32 dots and the same two float roundings as
// the definition, so GEMV and cuBLAS paths equal a direct CPU evaluation bit for bit.
TEST(CudaKernels, LmHeadInt8MatchesDefinition) {
  SKIP_WITHOUT_GPU();
  ThreadPool pool(2);
  for (auto [V, H] : std::vector<std::pair<int64_t, int64_t>>{{1001, 256}, {3000, 2560}, {77, 36}, {130, 100}}) {
    FloatMatrix emb = random_embedding(FloatType::F16, V, H);
    const HeadI8 h8 = quantize_head_i8(emb, pool);
    auto normw = randn(H, 0.1f);
    for (auto& v : normw) v += 1.0f;
    for (int64_t M : {1, 5}) {
      auto x = randn(M * H);
      std::vector<float> want(M * V), xn(H);
      std::vector<int8_t> qx(H);
      for (int64_t m = 0; m < M; ++m) {
        cpu::rmsnorm(x.data() + m * H, normw.data(), H, 1e-5f, xn.data());
        int32_t qsum = 0;
        const float s = cpu::quantize_row_i8(xn.data(), H, H, qx.data(), &qsum);
        for (int64_t v = 0; v < V; ++v) {
          int32_t d = 0;
          for (int64_t c = 0; c < H; ++c) d += static_cast<int32_t>(h8.q[v * H + c]) * qx[c];
          want[m * V + v] = head_i8_logit(d, s, h8.scale[v]);
        }
      }
      for (bool gemm : {false, true}) {
        auto got = ct::lm_head(emb, x.data(), normw.data(), M, 1e-5f, gemm, &h8);
        const std::string what = "V=" + std::to_string(V) + " H=" + std::to_string(H) + " M=" + std::to_string(M) +
                                 (gemm ? " cuBLAS" : " GEMV");
        EXPECT_EQ(got.logits, want) << what;
        for (int64_t m = 0; m < M; ++m) EXPECT_EQ(got.argmax[m], argmax(want.data() + m * V, V)) << what;
      }
    }
  }
}


// The training loss over the tied head (head_loss.cu) against the CPU reference
// (train::rmsnorm_fwd -> cross_entropy_fwd_bwd -> rmsnorm_bwd), F16/BF16/F32 heads, more
// rows than one chunk, ignored labels.
TEST(CudaKernels, HeadLossMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  // M = 1100: two of head_loss_rows' chunks (1024 rows), odd V: the in-place terms' rows.
  for (FloatType type : {FloatType::F16, FloatType::BF16, FloatType::F32}) {
    for (auto [V, H, M] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1001, 256, 37}, {3000, 512, 150}, {77, 36, 5}, {2053, 64, 1100}}) {
      FloatMatrix emb = random_embedding(type, V, H);
      auto normw = randn(H, 0.1f);
      for (auto& v : normw) v += 1.0f;
      auto x = randn(M * H);
      std::vector<int32_t> labels(M);
      for (int64_t m = 0; m < M; ++m) labels[m] = m % 5 == 3 ? train::kIgnore : static_cast<int32_t>((m * 37 + 11) % V);
      const int64_t n_norm = M - (M + 1) / 5;
      std::vector<float> xn(M * H), dxn(M * H), want(M * H);
      train::rmsnorm_fwd<float>(x.data(), normw.data(), M, H, 1e-5f, xn.data());
      const double want_loss = train::cross_entropy_fwd_bwd<float>(xn.data(), emb, labels.data(), M, n_norm, 1.0, dxn.data());
      train::rmsnorm_bwd<float>(x.data(), normw.data(), dxn.data(), M, H, 1e-5f, want.data());
      // fast: --precision tf32's loss (one F16 / two BF16 terms: logits to ~1e-4).
      for (bool fast : {false, true}) {
        auto got = ct::head_loss(emb, x.data(), normw.data(), labels.data(), M, n_norm, 1e-5f, fast);
        const std::string what = std::string(float_type_name(type)) + " V=" + std::to_string(V) + " H=" + std::to_string(H) +
                                 " M=" + std::to_string(M) + (fast ? " fast" : "");
        EXPECT_NEAR(got.loss, want_loss, (fast ? 1e-3 : 1e-5) * std::fabs(want_loss)) << what;
        EXPECT_LT(test::rel_l2(got.dx.data(), want.data(), want.size()), fast ? 1e-2 : 1e-4) << what;
      }
    }
  }
}


// split_gemm keeps float32 accuracy on 16-bit tensor cores, including rows of tiny values
// (the row scale) and rows of zeros.
TEST(CudaKernels, SplitGemmIsFloatAccurate) {
  SKIP_WITHOUT_GPU();
  for (FloatType type : {FloatType::F16, FloatType::BF16, FloatType::F32}) {
    for (auto [M, N, K] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{5, 300, 64}, {70, 1001, 256}, {1, 77, 36}}) {
      FloatMatrix W = random_embedding(type, N, K);
      auto A = randn(M * N);
      for (int64_t i = 0; i < N; ++i) A[i] *= 1e-9f;  // row 0 tiny: F16 alone would flush it
      if (M > 2) std::fill(A.begin() + N, A.begin() + 2 * N, 0.0f);  // row 1 zero
      auto got = ct::split_gemm(A.data(), M, N, W, 0.5f);
      std::vector<double> want(M * K, 0.0);
      std::vector<float> wr(K);
      for (int64_t n = 0; n < N; ++n) {
        W.row_to_f32(n, wr.data());
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k) want[m * K + k] += 0.5 * double(A[m * N + n]) * wr[k];
      }
      for (int64_t m = 0; m < M; ++m) {
        std::vector<float> g(got.begin() + m * K, got.begin() + (m + 1) * K), w(want.begin() + m * K, want.begin() + (m + 1) * K);
        const double err = m == 1 && M > 2 ? test::rel_l2(g.data(), std::vector<float>(K, 0.0f).data(), K) : test::rel_l2(g.data(), w.data(), K);
        if (m == 1 && M > 2) {
          for (float x : g) EXPECT_EQ(x, 0.0f);
        } else {
          EXPECT_LT(err, 2e-6) << float_type_name(type) << " M=" << M << " N=" << N << " K=" << K << " row " << m;
        }
      }
    }
  }
}

// split_gemm with the LoRA input gradients of up to three parts fused into its combine
// (LoraDx): against the definition in double, masks from random bits or none, odd widths
// (mask words cut mid-word), the tail block of rows, accumulate and tf32.
TEST(CudaKernels, SplitGemmAddsLoraInputGradients) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int M, N, K, r, parts;
    bool masked, accumulate, tf32;
    float a_scale = 1.0f;  // 0: no STE part, the LoRA part alone is checked
  };
  // (tf32, rank 16, K % 8 == 0: the LoRA parts on TF32 tensor cores)
  for (Case c : std::vector<Case>{{70, 200, 300, 16, 3, true, false, false},
                                  {33, 64, 256, 16, 1, false, true, false},
                                  {100, 130, 2560, 8, 2, true, true, false},
                                  {64, 96, 100, 32, 1, true, false, false},
                                  {96, 300, 644, 16, 2, true, false, true},
                                  {5, 40, 36, 16, 3, false, false, false},
                                  {70, 200, 2560, 16, 3, true, true, true},
                                  {33, 64, 264, 16, 2, true, false, true, 0.0f},
                                  {70, 64, 512, 16, 1, false, true, true, 0.0f}}) {
    auto A = randn(c.M * c.N), cin = randn(c.M * c.K);
    for (auto& v : A) v *= c.a_scale;
    std::vector<float> W(c.N * c.K);
    for (auto& w : W) w = static_cast<float>(static_cast<int>(rng()() % 3) - 1);
    const int words = (c.K + 31) / 32;
    const float keep = 1.0f / (1.0f - 0.3f);
    std::vector<ct::LoraDxPart> parts(c.parts);
    for (auto& p : parts) {
      p.du = randn(c.M * c.r, 0.1f), p.A = randn(c.r * c.K, 0.1f);
      if (c.masked) {
        p.bits.resize(static_cast<size_t>(c.M) * words);
        for (auto& b : p.bits) b = static_cast<uint32_t>(rng()());
      }
    }
    const auto got = ct::split_gemm_lora(A, c.M, c.N, W, c.K, 0.75f, c.r, parts, keep, cin, c.accumulate, c.tf32);
    std::vector<double> want(c.M * c.K), ste(c.M * c.K);
    for (int m = 0; m < c.M; ++m) {
      for (int k = 0; k < c.K; ++k) {
        double s = 0;
        for (int n = 0; n < c.N; ++n) s += double(A[m * c.N + n]) * W[n * c.K + k];
        ste[m * c.K + k] = 0.75 * s;
        double v = ste[m * c.K + k] + (c.accumulate ? cin[m * c.K + k] : 0.0);
        for (const auto& p : parts) {
          const bool kept = p.bits.empty() || ((p.bits[m * words + k / 32] >> (k & 31)) & 1u);
          double d = 0;
          for (int j = 0; j < c.r; ++j) d += double(p.du[m * c.r + j]) * p.A[j * c.K + k];
          if (kept) v += d * keep;
        }
        want[m * c.K + k] = v;
      }
    }
    const std::string what = "M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) + " r=" + std::to_string(c.r) +
                             " parts=" + std::to_string(c.parts) + (c.tf32 ? " tf32" : "");
    if (!c.tf32) {
      const std::vector<float> wantf(want.begin(), want.end());
      EXPECT_LT(test::rel_l2(got.data(), wantf.data(), wantf.size()), 2e-6) << what;
    } else {  // one F16 term (~1e-3 of the STE part), the LoRA parts to TF32 (relative to this op's output)
      std::vector<double> d(want.size());
      for (size_t i = 0; i < d.size(); ++i) d[i] = got[i] - want[i];
      double e = 0, n = 0;
      for (size_t i = 0; i < d.size(); ++i) {
        const double own = want[i] - (c.accumulate ? cin[i] : 0.0);
        e += d[i] * d[i], n += own * own;
      }
      EXPECT_LT(std::sqrt(e / n), 2e-3) << what;
      for (float v : got) ASSERT_FALSE(std::isnan(v)) << what;
    }
  }
}

// The STE backward of a ternary linear (dx = m * Wq^T dy) against train::ternary_linear_bwd.
TEST(CudaKernels, TernaryLinearBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (auto [rows, cols, M] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{100, 256, 7}, {640, 2560, 33}, {13, 200, 1}}) {
    TernaryMatrix w = random_ternary(rows, cols);
    auto dy = randn(M * rows);
    std::vector<float> want(M * cols);
    train::ternary_linear_bwd<float>(w, dy.data(), M, want.data());
    auto got = ct::ternary_linear_bwd(w, dy.data(), M);
    EXPECT_LT(test::rel_l2(got.data(), want.data(), want.size()), 1e-5) << rows << "x" << cols << " M=" << M;
  }
}


// The GPU backward ops (train_ops.cu) against their CPU references in train/ops.h.
TEST(CudaKernels, TrainingOpsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int M = 9, n = 300;
  auto dy = randn(M * n);
  // RMSNorm backward at widths for each path (row in registers up to 3072 / 7168, re-read).
  for (int nb : {n, 3100, 7300}) {
    auto bx = randn(M * nb), bw = randn(nb, 0.1f), bdy = randn(M * nb), bacc = randn(M * nb);
    for (auto& v : bw) v += 1.0f;
    for (bool accumulate : {false, true}) {
      std::vector<float> want = bacc;
      train::rmsnorm_bwd<float>(bx.data(), bw.data(), bdy.data(), M, nb, 1e-5f, want.data(), accumulate);
      auto got = ct::rmsnorm_bwd(bx, bw, bdy, M, nb, 1e-5f, bacc, accumulate);
      EXPECT_LT(test::rel_l2(got.data(), want.data(), want.size()), 1e-5) << "rmsnorm_bwd n " << nb << " accumulate " << accumulate;
    }
  }
  // The feed-forward sub-norm + gating backward: train::rmsnorm_bwd on h = act(g) * u, then
  // train::gated_act_bwd.
  // f16: gate/up passed as F16 (the values made exact in F16 first, so the reference is the same).
  for (int act = 0; act < 3; ++act) {
    for (auto [nb, f16] : std::vector<std::pair<int, bool>>{{n, false}, {3100, false}, {6912, false}, {300, true}, {6912, true}, {7300, true}}) {
      auto gu = randn(M * 2 * nb), sw = randn(nb, 0.1f), sdy = randn(M * nb);
      for (auto& v : sw) v += 1.0f;
      if (f16) {
        for (auto& v : gu) v = f16_to_f32(f32_to_f16(v));
      }
      std::vector<float> g(M * nb), u(M * nb), h(M * nb), dh(M * nb), wg(M * nb), wu(M * nb);
      for (int m = 0; m < M; ++m) {
        std::copy_n(gu.begin() + m * 2 * nb, nb, g.begin() + m * nb);
        std::copy_n(gu.begin() + m * 2 * nb + nb, nb, u.begin() + m * nb);
        cpu::gated_activation(g.data() + m * nb, u.data() + m * nb, nb, static_cast<Activation>(act), h.data() + m * nb);
      }
      train::rmsnorm_bwd<float>(h.data(), sw.data(), sdy.data(), M, nb, 1e-5f, dh.data());
      train::gated_act_bwd<float>(g.data(), u.data(), dh.data(), M * nb, static_cast<Activation>(act), wg.data(), wu.data());
      const auto got = ct::gated_rmsnorm_bwd(gu, sw, sdy, M, nb, act, 1e-5f, nullptr, 1.0f, 1.0f, f16);
      std::vector<float> gg(M * nb), gv(M * nb);
      for (int m = 0; m < M; ++m) {
        std::copy_n(got.begin() + m * 2 * nb, nb, gg.begin() + m * nb);
        std::copy_n(got.begin() + m * 2 * nb + nb, nb, gv.begin() + m * nb);
      }
      EXPECT_LT(test::rel_l2(gg.data(), wg.data(), wg.size()), 1e-5) << "gated rmsnorm dg act " << act << " n " << nb << (f16 ? " f16" : "");
      EXPECT_LT(test::rel_l2(gv.data(), wu.data(), wu.size()), 1e-5) << "gated rmsnorm du act " << act << " n " << nb << (f16 ? " f16" : "");
      if (!f16) continue;
      // The split written instead of dgu (the training step with --precision tf32): bit for
      // bit split_rows_kernel's rule applied to the dgu and row scales of a plain run.
      const float sgt = 0.75f, sup = 1.5f;
      std::vector<float> rs1, rs2;
      std::vector<uint16_t> sp;
      const auto ref = ct::gated_rmsnorm_bwd(gu, sw, sdy, M, nb, act, 1e-5f, &rs1, sgt, sup, true);
      ct::gated_rmsnorm_bwd(gu, sw, sdy, M, nb, act, 1e-5f, &rs2, sgt, sup, true, &sp);
      EXPECT_EQ(rs1, rs2) << "gated rmsnorm split row scales act " << act << " n " << nb;
      size_t bad = 0;
      for (int m = 0; m < M; ++m) {
        const int e = -std::ilogb(rs1[m]);
        for (int i = 0; i < 2 * nb; ++i) {
          const size_t k = static_cast<size_t>(m) * 2 * nb + i;
          bad += sp[k] != f32_to_f16(std::ldexp(ref[k] * (i < nb ? sgt : sup), e)) ? 1 : 0;
        }
      }
      EXPECT_EQ(bad, 0u) << "gated rmsnorm split act " << act << " n " << nb;
    }
  }
  // LoRA branch: the one-pass kernels (lora_skinny.cu: ranks up to 64, widths a multiple of
  // 4) and the cuBLAS fallback (odd widths, rank 80), dropout hashed or stored as bits; with
  // tf32, lora_mma.cu's tensor-core kernels (ranks up to 32; TF32 products: 5e-3).
  struct LoraCase {
    int M, in, r, out;
  };
  for (LoraCase c : std::vector<LoraCase>{{9, 96, 8, 70}, {9, 97, 8, 70}, {300, 640, 16, 388}, {77, 256, 64, 132}, {130, 516, 32, 68},
                                          {33, 64, 80, 36}, {1030, 2560, 16, 6912}, {70, 528, 12, 44}}) {
    for (float p : {0.0f, 0.3f}) {
      for (int variant = 0; variant < 4; ++variant) {
        const bool bits = variant & 1, tf32 = variant & 2;
        if (p == 0.0f && bits) continue;
        const double tol = tf32 ? 5e-3 : 1e-5;
        const int Ml = c.M, in = c.in, r = c.r, out = c.out;
        auto lx = randn(Ml * in), A = randn(r * in, 0.1f), B = randn(out * r, 0.1f), ldy = randn(Ml * out);
        auto y0 = randn(Ml * out), dx0 = randn(Ml * in), dA0 = randn(r * in), dB0 = randn(out * r);
        std::vector<uint8_t> mask;
        if (p > 0) {
          mask.resize(static_cast<size_t>(Ml) * in);
          train::dropout_mask(static_cast<int64_t>(Ml) * in, p, 17, mask.data());
        }
        std::vector<float> u(Ml * r), y = y0, dx = dx0, dA = dA0, dB = dB0;
        train::lora_fwd<float>(lx.data(), A.data(), B.data(), Ml, in, r, out, 2.0f, p > 0 ? mask.data() : nullptr, p, u.data(), y.data(),
                               true);
        train::lora_bwd<float>(lx.data(), A.data(), B.data(), u.data(), ldy.data(), Ml, in, r, out, 2.0f, p > 0 ? mask.data() : nullptr, p,
                               dx.data(), dA.data(), dB.data(), true);
        auto g = ct::lora_round_trip(lx, A, B, Ml, in, r, out, 2.0f, 17, p, y0, ldy, dx0, dA0, dB0, bits, tf32);
        const std::string what = "lora M=" + std::to_string(Ml) + " in=" + std::to_string(in) + " r=" + std::to_string(r) +
                                 " out=" + std::to_string(out) + " p=" + std::to_string(p) + (bits ? " bits" : "") + (tf32 ? " tf32" : "");
        // Against the accumulated totals, the updates alone (tf32's errors are relative to those).
        auto delta = [](const std::vector<float>& v, const std::vector<float>& v0) {
          std::vector<float> d(v.size());
          for (size_t i = 0; i < v.size(); ++i) d[i] = v[i] - v0[i];
          return d;
        };
        auto check = [&](const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& base, const char* name) {
          const auto gd = delta(got, base), wd = delta(want, base);
          EXPECT_LT(test::rel_l2(gd.data(), wd.data(), wd.size()), tol) << what << " " << name;
        };
        EXPECT_LT(test::rel_l2(g.u.data(), u.data(), u.size()), tol) << what << " u";
        check(g.y, y, y0, "y");
        check(g.dx, dx, dx0, "dx");
        check(g.dA, dA, dA0, "dA");
        check(g.dB, dB, dB0, "dB");
        if (!tf32 || r > 32 || in % 4 != 0) continue;
        // A folded RMSNorm (the training step's tf32 path): the kernels get the norm's input
        // and scales; the reference runs on the normalized input w * (x * rs), as written
        // by the norm kernel. Row scales over three octaves, like real inverse RMS values.
        std::vector<float> rs(Ml), nw(in), xn(lx.size());
        for (int m = 0; m < Ml; ++m) rs[m] = std::ldexp(1.0f + 0.5f * std::abs(randn(1)[0]), m % 7 - 3);
        for (int i = 0; i < in; ++i) nw[i] = 1.0f + 0.3f * randn(1)[0];
        for (int m = 0; m < Ml; ++m) {
          for (int i = 0; i < in; ++i) xn[m * in + i] = nw[i] * (lx[m * in + i] * rs[m]);
        }
        std::vector<float> fu(Ml * r), fy = y0, fdx = dx0, fdA = dA0, fdB = dB0;
        train::lora_fwd<float>(xn.data(), A.data(), B.data(), Ml, in, r, out, 2.0f, p > 0 ? mask.data() : nullptr, p, fu.data(), fy.data(),
                               true);
        train::lora_bwd<float>(xn.data(), A.data(), B.data(), fu.data(), ldy.data(), Ml, in, r, out, 2.0f, p > 0 ? mask.data() : nullptr,
                               p, fdx.data(), fdA.data(), fdB.data(), true);
        auto f = ct::lora_round_trip(lx, A, B, Ml, in, r, out, 2.0f, 17, p, y0, ldy, dx0, dA0, dB0, bits, tf32, &rs, &nw);
        EXPECT_LT(test::rel_l2(f.u.data(), fu.data(), fu.size()), tol) << what << " folded norm u";
        check(f.y, fy, y0, "folded norm y");
        check(f.dx, fdx, dx0, "folded norm dx");
        check(f.dA, fdA, dA0, "folded norm dA");
        check(f.dB, fdB, dB0, "folded norm dB");
        if (in % 8 != 0) continue;
        // Down's input in the training step: F16 x * rs (hn16_), the weight folded in; the
        // reference on w * float(F16(x * rs)).
        std::vector<float> xr(lx.size());
        for (int m = 0; m < Ml; ++m) {
          for (int i = 0; i < in; ++i) {
            xr[m * in + i] = lx[m * in + i] * rs[m];
            xn[m * in + i] = nw[i] * f16_to_f32(f32_to_f16(xr[m * in + i]));
          }
        }
        std::vector<float> hu(Ml * r), hy = y0, hdx = dx0, hdA = dA0, hdB = dB0;
        train::lora_fwd<float>(xn.data(), A.data(), B.data(), Ml, in, r, out, 2.0f, p > 0 ? mask.data() : nullptr, p, hu.data(), hy.data(),
                               true);
        train::lora_bwd<float>(xn.data(), A.data(), B.data(), hu.data(), ldy.data(), Ml, in, r, out, 2.0f, p > 0 ? mask.data() : nullptr,
                               p, hdx.data(), hdA.data(), hdB.data(), true);
        auto h = ct::lora_round_trip(xr, A, B, Ml, in, r, out, 2.0f, 17, p, y0, ldy, dx0, dA0, dB0, bits, tf32, nullptr, &nw, true);
        EXPECT_LT(test::rel_l2(h.u.data(), hu.data(), hu.size()), tol) << what << " F16 input u";
        check(h.y, hy, y0, "F16 input y");
        check(h.dx, hdx, dx0, "F16 input dx");
        check(h.dA, hdA, dA0, "F16 input dA");
        check(h.dB, hdB, dB0, "F16 input dB");
      }
    }
  }
}


// split_gemm's row scale of a row's largest magnitude (split_rows_kernel's rule).
float host_rscale(float amax) { return amax > 0.0f ? std::ldexp(1.0f, std::ilogb(amax)) : 1.0f; }

// lora_dy_pass (lora_dy.cu): du and dB of every adapted part against float64 sums, and the
// F16 split of dy bit for bit against split_rows_kernel's rule; the RMSNorm and sub-norm
// backwards' row scales (its producers) against the same rule.
TEST(CudaKernels, LoraDyPassMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int M, N, r;
    std::vector<std::pair<int, int>> parts;  // [beg, end); a negative beg: no LoRA on [-beg, end)
    std::vector<int> seg_end;                // empty: no split
    std::vector<float> seg_scale;
    bool extreme = false;  // every 7th row times 1e20 or 1e-30 (the split's row scale)
  };
  for (const Case& c : std::vector<Case>{{300, 640, 16, {{0, 384}, {384, 512}, {512, 640}}, {384, 512, 640}, {0.5f, 2.0f, 3.0f}, true},
                                         {1030, 1536, 8, {{0, 768}, {768, 1536}}, {768, 1536}, {1.5f, 0.25f}, true},
                                         {300, 640, 16, {{0, 384}, {384, 512}, {512, 640}}, {384, 512, 640}, {0.5f, 2.0f, 3.0f}},
                                         {70, 260, 12, {{0, 260}}, {}, {}},
                                         {33, 512, 16, {{0, 256}, {-256, 512}}, {512}, {1.0f}},
                                         {4096, 2560, 16, {{0, 2560}}, {2560}, {0.7f}}}) {
    const int M = c.M, N = c.N, r = c.r;
    auto dy = randn(static_cast<size_t>(M) * N);
    for (int m = 0; c.extreme && m < M; m += 7) {
      for (int i = 0; i < N; ++i) dy[static_cast<size_t>(m) * N + i] *= (m % 2 ? 1e-30f : 1e20f);
    }
    const float scaling = 2.0f;
    std::vector<ct::DyPassPart> parts;
    for (auto [beg, end] : c.parts) {
      ct::DyPassPart q;
      q.beg = std::abs(beg), q.end = end;
      if (beg >= 0) q.B = randn(static_cast<size_t>(end - beg) * r, 0.1f), q.u = randn(static_cast<size_t>(M) * r), q.dB_in = randn(q.B.size());
      parts.push_back(q);
    }
    auto cs = [&](int col) {
      for (size_t k = 0; k < c.seg_end.size(); ++k) {
        if (col < c.seg_end[k]) return c.seg_scale[k];
      }
      return 1.0f;
    };
    auto check_dy_pass = [&](const ct::DyPassResult& got, const std::string& what) {
      for (size_t p = 0; p < parts.size(); ++p) {
        const ct::DyPassPart& q = parts[p];
        if (q.B.empty()) continue;
        const int w = q.end - q.beg;
        // Rows scaled by 1e20 dominate a plain L2: compare row by row (du) and on rows of one scale (dB).
        std::vector<double> du(static_cast<size_t>(M) * r), db(static_cast<size_t>(w) * r);
        for (int m = 0; m < M; ++m) {
          for (int j = 0; j < r; ++j) {
            double acc = 0;
            for (int i = 0; i < w; ++i) acc += static_cast<double>(dy[static_cast<size_t>(m) * N + q.beg + i]) * q.B[static_cast<size_t>(i) * r + j];
            du[static_cast<size_t>(m) * r + j] = scaling * acc;
          }
        }
        for (int m = 0; m < M; ++m) {
          std::vector<float> gw(r), ww(r);
          for (int j = 0; j < r; ++j) gw[j] = got.du[p][static_cast<size_t>(m) * r + j], ww[j] = static_cast<float>(du[static_cast<size_t>(m) * r + j]);
          ASSERT_LT(test::rel_l2(gw.data(), ww.data(), r), 5e-3) << what << " part " << p << " du row " << m;
        }
        // dB: with extreme rows only their share is resolvable in float next to 1e20 ones, so
        // then against float64 with an absolute bound relative to the terms' magnitudes.
        double big = 0;
        for (int i = 0; i < w; ++i) {
          for (int j = 0; j < r; ++j) {
            double acc = 0, mag = 0;
            for (int m = 0; m < M; ++m) {
              const double t = static_cast<double>(dy[static_cast<size_t>(m) * N + q.beg + i]) * q.u[static_cast<size_t>(m) * r + j];
              acc += t, mag += std::fabs(t);
            }
            db[static_cast<size_t>(i) * r + j] = scaling * acc;
            big = std::max(big, scaling * mag);
          }
        }
        double err = 0, e2 = 0, w2 = 0;
        for (size_t k = 0; k < db.size(); ++k) {
          const double d = static_cast<double>(got.dB[p][k]) - q.dB_in[k] - db[k];
          ASSERT_FALSE(std::isnan(d)) << what << " part " << p << " dB " << k;
          err = std::max(err, std::fabs(d)), e2 += d * d, w2 += db[k] * db[k];
        }
        if (c.extreme) {
          EXPECT_LT(err, 2e-3 * big) << what << " part " << p << " dB";
        } else {
          EXPECT_LT(std::sqrt(e2 / w2), 5e-3) << what << " part " << p << " dB";
        }
      }
    };
    std::vector<float> rs;
    if (!c.seg_end.empty()) {
      for (int m = 0; m < M; ++m) {
        float amax = 0.0f;
        for (int i = 0; i < N; ++i) amax = std::max(amax, std::fabs(dy[static_cast<size_t>(m) * N + i] * cs(i)));
        rs.push_back(host_rscale(amax));
      }
    }
    const auto got = ct::lora_dy_pass(dy, M, N, r, scaling, parts, rs, c.seg_end, c.seg_scale);
    const std::string what = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " r=" + std::to_string(r);
    ASSERT_TRUE(got.applied) << what;
    check_dy_pass(got, what);
    if (!c.seg_end.empty()) {
      // dy given as that split (the gating backward's output with --precision tf32): the same
      // du and dB to F16's precision, which the tolerances cover.
      const auto got16 = ct::lora_dy_pass({}, M, N, r, scaling, parts, rs, c.seg_end, c.seg_scale, &got.split);
      ASSERT_TRUE(got16.applied) << what << " F16 dy";
      check_dy_pass(got16, what + " F16 dy");
    }
    if (!c.seg_end.empty()) {
      size_t bad = 0;
      for (int m = 0; m < M; ++m) {
        const int e = -std::ilogb(rs[m]);
        for (int i = 0; i < N; ++i) {
          const size_t k = static_cast<size_t>(m) * N + i;
          bad += got.split[k] != f32_to_f16(std::ldexp(dy[k] * cs(i), e)) ? 1 : 0;
        }
      }
      EXPECT_EQ(bad, 0u) << what << " split";
    }
  }
  // Out of its scope (rank above 16, a part not on a 128-column boundary): not applied.
  ct::DyPassPart q;
  q.beg = 0, q.end = 256, q.B = randn(256 * 32), q.u = randn(64 * 32), q.dB_in = randn(256 * 32);
  EXPECT_FALSE(ct::lora_dy_pass(randn(64 * 256), 64, 256, 32, 1.0f, {q}, {}, {}, {}).applied);
  q.beg = 64, q.B.resize(192 * 16), q.u.resize(64 * 16), q.dB_in.resize(192 * 16);
  EXPECT_FALSE(ct::lora_dy_pass(randn(64 * 256), 64, 256, 16, 1.0f, {q}, {}, {}, {}).applied);
  // The backward's F16 weights from the int8 ones (rows padded; K odd and even).
  for (int K : {2560, 37}) {
    const int rows = 5, lds = (K + 15) / 16 * 16;
    std::vector<int8_t> w8(static_cast<size_t>(rows) * lds, 0);
    std::mt19937 rng(3);
    for (int r0 = 0; r0 < rows; ++r0) {
      for (int i = 0; i < K; ++i) w8[static_cast<size_t>(r0) * lds + i] = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    }
    const auto h = ct::i8_to_f16_rows(w8, rows, K, lds);
    size_t bad = 0;
    for (int r0 = 0; r0 < rows; ++r0) {
      for (int i = 0; i < K; ++i) bad += h[static_cast<size_t>(r0) * K + i] != f32_to_f16(w8[static_cast<size_t>(r0) * lds + i]) ? 1 : 0;
    }
    EXPECT_EQ(bad, 0u) << "i8_to_f16_rows K " << K;
  }
  // The producers' row scales: the rule on what they wrote.
  const int M = 37, n = 700;
  auto x = randn(M * n), w = randn(n, 0.1f), g = randn(M * n), acc = randn(M * n);
  for (auto& v : w) v += 1.0f;
  for (int i = 0; i < n; ++i) g[5 * n + i] *= 1e-25f, acc[5 * n + i] *= 1e-25f;
  std::vector<float> rs;
  const auto dx = ct::rmsnorm_bwd(x, w, g, M, n, 1e-5f, acc, true, &rs);
  for (int m = 0; m < M; ++m) {
    float amax = 0.0f;
    for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(dx[static_cast<size_t>(m) * n + i]));
    EXPECT_EQ(rs[m], host_rscale(amax)) << "rmsnorm_bwd row " << m;
  }
  auto gu = randn(M * 2 * n);
  const auto dgu = ct::gated_rmsnorm_bwd(gu, w, g, M, n, 0, 1e-5f, &rs, 0.75f, 3.0f);
  for (int m = 0; m < M; ++m) {
    float amax = 0.0f;
    for (int i = 0; i < 2 * n; ++i) amax = std::max(amax, std::fabs(dgu[static_cast<size_t>(m) * 2 * n + i] * (i < n ? 0.75f : 3.0f)));
    EXPECT_EQ(rs[m], host_rscale(amax)) << "gated_rmsnorm_bwd row " << m;
  }
}

// RoPE backward and attention forward/backward for training (train_attention.cu) against
// train::rope_neox_bwd / attention_fwd / attention_bwd.
TEST(CudaKernels, TrainingAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int B, T, nh, nkv, hd;
    float qmul = 1.0f, vmul = 1.0f, dmul = 1.0f;  // magnitudes far from 1 (the F16 backward scales its operands)
  };
  for (Case c : std::vector<Case>{{1, 37, 4, 2, 64},
                                  {1, 1, 4, 4, 32},
                                  {2, 70, 8, 2, 128},
                                  {3, 5, 6, 3, 16},
                                  {3, 2048, 8, 2, 16},
                                  {2, 512, 8, 2, 128},
                                  {2, 130, 4, 4, 64},
                                  {2, 200, 8, 2, 128, 0.02f, 3000.0f, 1e-9f},
                                  {1, 96, 4, 1, 64, 3.0f, 1e-3f, 1e6f}}) {
    const int qd = c.nh * c.hd, kvd = c.nkv * c.hd, M = c.B * c.T;
    auto q = randn(M * qd), k = randn(M * kvd), v = randn(M * kvd), dout = randn(M * qd);
    for (float& x : q) x *= c.qmul;
    for (float& x : v) x *= c.vmul;
    for (float& x : dout) x *= c.dmul;
    std::vector<float> out(M * qd), lse(c.T * c.nh), dq(M * qd), dk(M * kvd), dv(M * kvd);
    for (int b = 0; b < c.B; ++b) {  // each sequence on its own
      const size_t oq = static_cast<size_t>(b) * c.T * qd, ok = static_cast<size_t>(b) * c.T * kvd;
      train::attention_fwd<float>(q.data() + oq, k.data() + ok, v.data() + ok, c.T, c.nh, c.nkv, c.hd, out.data() + oq, lse.data());
      train::attention_bwd<float>(q.data() + oq, k.data() + ok, v.data() + ok, lse.data(), dout.data() + oq, c.T, c.nh, c.nkv, c.hd,
                                  dq.data() + oq, dk.data() + ok, dv.data() + ok);
    }
    auto g = ct::attention_train(q, k, v, dout, c.B, c.T, c.nh, c.nkv, c.hd);
    const std::string what = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " nh=" + std::to_string(c.nh) +
                             " nkv=" + std::to_string(c.nkv) + " hd=" + std::to_string(c.hd) + " q*" + std::to_string(c.qmul) +
                             " v*" + std::to_string(c.vmul) + " dout*" + std::to_string(c.dmul);
    EXPECT_LT(test::rel_l2(g.out.data(), out.data(), out.size()), 1e-5) << what << " out";
    EXPECT_LT(test::rel_l2(g.dq.data(), dq.data(), dq.size()), 1e-5) << what << " dq";
    EXPECT_LT(test::rel_l2(g.dk.data(), dk.data(), dk.size()), 1e-5) << what << " dk";
    EXPECT_LT(test::rel_l2(g.dv.data(), dv.data(), dv.size()), 1e-5) << what << " dv";
    // tf32: flash_attention.cu's forward (head dims 64, 128) and the F16 backward.
    auto gt = ct::attention_train(q, k, v, dout, c.B, c.T, c.nh, c.nkv, c.hd, true);
    EXPECT_LT(test::rel_l2(gt.out.data(), out.data(), out.size()), 5e-3) << what << " out tf32";
    EXPECT_LT(test::rel_l2(gt.dq.data(), dq.data(), dq.size()), 5e-3) << what << " dq tf32";
    EXPECT_LT(test::rel_l2(gt.dk.data(), dk.data(), dk.size()), 5e-3) << what << " dk tf32";
    EXPECT_LT(test::rel_l2(gt.dv.data(), dv.data(), dv.size()), 5e-3) << what << " dv tf32";
    // The same with RoPE inside the attention (q, k before rotation; the training step's
    // path): against rope_neox_fwd, the attention, rope_neox_bwd per sequence on the CPU.
    {
      std::vector<float> inv(c.hd / 2), qr = q, kr = k;
      cpu::rope_inv_freq(500000.0f, c.hd, inv.data());
      std::vector<float> rout(M * qd), rdq(M * qd), rdk(M * kvd), rdv(M * kvd);
      for (int b = 0; b < c.B; ++b) {
        const size_t oq = static_cast<size_t>(b) * c.T * qd, ok = static_cast<size_t>(b) * c.T * kvd;
        train::rope_neox_fwd<float>(qr.data() + oq, c.T, c.nh, c.hd, 0, inv.data());
        train::rope_neox_fwd<float>(kr.data() + ok, c.T, c.nkv, c.hd, 0, inv.data());
        train::attention_fwd<float>(qr.data() + oq, kr.data() + ok, v.data() + ok, c.T, c.nh, c.nkv, c.hd, rout.data() + oq, lse.data());
        train::attention_bwd<float>(qr.data() + oq, kr.data() + ok, v.data() + ok, lse.data(), dout.data() + oq, c.T, c.nh, c.nkv, c.hd,
                                    rdq.data() + oq, rdk.data() + ok, rdv.data() + ok);
        train::rope_neox_bwd<float>(rdq.data() + oq, c.T, c.nh, c.hd, 0, inv.data());
        train::rope_neox_bwd<float>(rdk.data() + ok, c.T, c.nkv, c.hd, 0, inv.data());
      }
      for (bool tf32 : {false, true}) {
        const double tol = tf32 ? 5e-3 : 1e-5;
        auto gr = ct::attention_train(q, k, v, dout, c.B, c.T, c.nh, c.nkv, c.hd, tf32, 500000.0f);
        EXPECT_LT(test::rel_l2(gr.out.data(), rout.data(), rout.size()), tol) << what << " rope out" << (tf32 ? " tf32" : "");
        EXPECT_LT(test::rel_l2(gr.dq.data(), rdq.data(), rdq.size()), tol) << what << " rope dq" << (tf32 ? " tf32" : "");
        EXPECT_LT(test::rel_l2(gr.dk.data(), rdk.data(), rdk.size()), tol) << what << " rope dk" << (tf32 ? " tf32" : "");
        EXPECT_LT(test::rel_l2(gr.dv.data(), rdv.data(), rdv.size()), tol) << what << " rope dv" << (tf32 ? " tf32" : "");
      }
    }
    // RoPE backward on dq-shaped rows at positions 3.. .
    std::vector<float> want = dout;
    std::vector<float> inv(c.hd / 2);
    cpu::rope_inv_freq(500000.0f, c.hd, inv.data());
    train::rope_neox_bwd<float>(want.data(), M, c.nh, c.hd, 3, inv.data());
    auto got = ct::rope_bwd(dout, M, c.nh, c.hd, 3, 500000.0f);
    EXPECT_LT(test::rel_l2(got.data(), want.data(), want.size()), 1e-6) << what << " rope";
  }
}

}  // namespace
}  // namespace tern
