// The training ops (train/ops.h): every backward against central finite differences of
// its forward in float64 (relative L2 of the whole gradient, plus a dot-product test
// <dy, J d> vs <J^T dy, d> along a random direction), and every float32 forward against
// the inference kernels it must equal, up to a whole-model forward against the CPU
// engine's logits. The ternary linear's backward is the straight-through estimator: it
// is checked against its surrogate y = m * Wq x (ActQuant::None), not the quantized
// forward, whose rounding has no useful derivative.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"
#include "engine_util.h"
#include "model/model.h"
#include "model/ternary.h"
#include "test_util.h"
#include "train/ops.h"

namespace tern {
namespace {

using train::ActQuant;
using VecD = std::vector<double>;
using VecF = std::vector<float>;
using Fn = std::function<VecD(const VecD&)>;

constexpr double kFdEps = 1e-6;
constexpr double kGradTol = 1e-6;

VecD randn(std::mt19937& rng, size_t n, double sd = 1.0) {
  std::normal_distribution<double> nd(0, sd);
  VecD v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

VecF to_f(const VecD& v) { return VecF(v.begin(), v.end()); }
VecD to_d(const VecF& v) { return VecD(v.begin(), v.end()); }

// test::rel_l2 in double: ||a - b|| / ||b||, +inf on any NaN/inf so it never passes.
double rel_l2d(const VecD& a, const VecD& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den == 0 ? (num == 0 ? 0 : INFINITY) : std::sqrt(num / den);
}

double rel_f(const VecF& a, const VecF& b) {
  return a.size() == b.size() ? test::rel_l2(a.data(), b.data(), a.size()) : INFINITY;
}

double dotd(const VecD& a, const VecD& b) { return std::inner_product(a.begin(), a.end(), b.begin(), 0.0); }

VecD concat(std::initializer_list<const VecD*> parts) {
  VecD out;
  for (const VecD* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

// grad is the analytic J^T dy of f at p. Checks it against central differences of
// L(p) = <dy, f(p)>, and <dy, J d> (a central difference along a random d) against
// <grad, d>.
void check_grad(const Fn& f, const VecD& p, const VecD& dy, const VecD& grad, const std::string& what,
                double tol = kGradTol) {
  ASSERT_EQ(grad.size(), p.size()) << what;
  VecD num(p.size());
  VecD q = p;
  for (size_t i = 0; i < p.size(); ++i) {
    q[i] = p[i] + kFdEps;
    const double lp = dotd(dy, f(q));
    q[i] = p[i] - kFdEps;
    const double lm = dotd(dy, f(q));
    q[i] = p[i];
    num[i] = (lp - lm) / (2 * kFdEps);
  }
  ASSERT_GT(dotd(num, num), 0.0) << what << ": the numeric gradient is zero, the check would be vacuous";
  const double err = rel_l2d(grad, num);
  EXPECT_LT(err, tol) << what << ": analytic vs finite-difference gradient, relative L2";

  std::mt19937 rng(12345);
  const VecD d = randn(rng, p.size());
  VecD pp = p, pm = p;
  for (size_t i = 0; i < p.size(); ++i) pp[i] += kFdEps * d[i], pm[i] -= kFdEps * d[i];
  const VecD fp = f(pp), fm = f(pm);
  VecD jd(fp.size());
  for (size_t i = 0; i < fp.size(); ++i) jd[i] = (fp[i] - fm[i]) / (2 * kFdEps);
  const double lhs = dotd(dy, jd), rhs = dotd(grad, d);
  const double rel = std::fabs(lhs - rhs) / std::max({std::fabs(lhs), std::fabs(rhs), 1e-300});
  EXPECT_TRUE(std::isfinite(lhs) && std::isfinite(rhs) && rel < tol)
      << what << ": dot-product test <dy, J d> = " << lhs << " vs <J^T dy, d> = " << rhs << " (rel " << rel << ")";
}

TernaryMatrix random_ternary(std::mt19937& rng, int64_t rows, int64_t cols, float scale) {
  std::vector<int8_t> w(rows * cols);
  for (auto& v : w) v = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
  return make_ternary(w, rows, cols, scale);
}

// A float32 F32 FloatMatrix over `data` (which must outlive it).
FloatMatrix f32_matrix(const VecF& data, int64_t rows, int64_t cols) {
  FloatMatrix m;
  m.type = FloatType::F32;
  m.rows = rows;
  m.cols = cols;
  m.data = data.data();
  return m;
}

// ---------------------------------------------------------------------------------------
// RMSNorm

TEST(TrainOps, RmsnormGradient) {
  std::mt19937 rng(1);
  const int64_t M = 3, n = 13;
  const float eps = 1e-5f;
  const VecD x = randn(rng, M * n);
  VecF w(n);
  for (auto& v : w) v = 1.0f + 0.3f * static_cast<float>(randn(rng, 1)[0]);
  const VecD dy = randn(rng, M * n);
  Fn f = [&](const VecD& p) {
    VecD y(M * n);
    train::rmsnorm_fwd<double>(p.data(), w.data(), M, n, eps, y.data());
    return y;
  };
  VecD dx(M * n);
  train::rmsnorm_bwd<double>(x.data(), w.data(), dy.data(), M, n, eps, dx.data());
  check_grad(f, x, dy, dx, "rmsnorm dx");

  // A small-norm row, where eps matters.
  VecD xs = x;
  for (auto& v : xs) v *= 1e-3;
  train::rmsnorm_bwd<double>(xs.data(), w.data(), dy.data(), M, n, eps, dx.data());
  check_grad(f, xs, dy, dx, "rmsnorm dx (small x)");

  // accumulate adds onto dx.
  VecD acc(M * n, 0.5);
  train::rmsnorm_bwd<double>(xs.data(), w.data(), dy.data(), M, n, eps, acc.data(), true);
  for (int64_t i = 0; i < M * n; ++i) EXPECT_NEAR(acc[i], dx[i] + 0.5, 1e-12);
}

TEST(TrainOps, RmsnormForwardIsTheEngineKernel) {
  std::mt19937 rng(2);
  for (int64_t n : {13, 777}) {
    const int64_t M = 4;
    const VecF x = to_f(randn(rng, M * n, 2.0));
    VecF w(n);
    for (auto& v : w) v = 1.0f + 0.2f * static_cast<float>(randn(rng, 1)[0]);
    VecF got(M * n), want(M * n);
    train::rmsnorm_fwd<float>(x.data(), w.data(), M, n, 1e-5f, got.data());
    for (int64_t m = 0; m < M; ++m) cpu::rmsnorm(x.data() + m * n, w.data(), n, 1e-5f, want.data() + m * n);
    EXPECT_EQ(rel_f(got, want), 0.0) << n;
    // The double forward (the one finite-differenced) is the same function.
    VecD gd(M * n);
    train::rmsnorm_fwd<double>(to_d(x).data(), w.data(), M, n, 1e-5f, gd.data());
    EXPECT_LT(rel_f(to_f(gd), want), 1e-6) << n;
  }
}

// ---------------------------------------------------------------------------------------
// Ternary linear (STE)

TEST(TrainOps, TernaryLinearSteGradient) {
  std::mt19937 rng(3);
  for (int64_t in : {12, 200}) {
    const int64_t M = 5, out = 7;
    const TernaryMatrix W = random_ternary(rng, out, in, 0.7f);
    const VecD x = randn(rng, M * in);
    const VecD dy = randn(rng, M * out);
    // The surrogate y = m * Wq x: what the STE backward differentiates.
    Fn f = [&](const VecD& p) {
      VecD y(M * out);
      train::ternary_linear_fwd<double>(p.data(), W, M, y.data(), ActQuant::None);
      return y;
    };
    VecD dx(M * in);
    train::ternary_linear_bwd<double>(W, dy.data(), M, dx.data());
    check_grad(f, x, dy, dx, "ternary linear dx (STE vs surrogate), in " + std::to_string(in));

    // And literally m * Wq^T dy.
    const std::vector<int8_t> wq = unpack_ternary(W);
    VecD want(M * in, 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; ++c) want[m * in + c] += double(W.scale) * wq[r * in + c] * dy[m * out + r];
    EXPECT_LT(rel_l2d(dx, want), 1e-12);

    VecD acc(M * in, -1.0);
    train::ternary_linear_bwd<double>(W, dy.data(), M, acc.data(), true);
    for (int64_t i = 0; i < M * in; ++i) EXPECT_NEAR(acc[i], dx[i] - 1.0, 1e-12);
  }
}

TEST(TrainOps, TernaryLinearForwardIsTheEngine) {
  std::mt19937 rng(4);
  for (int64_t in : {12, 300}) {
    const int64_t M = 5, out = 9;
    const float scale = 1.37f;
    const TernaryMatrix W = random_ternary(rng, out, in, scale);
    const VecF x = to_f(randn(rng, M * in, 3.0));
    VecF got(M * out);
    train::ternary_linear_fwd<float>(x.data(), W, M, got.data());
    // cpu_engine.cpp's ternary_linear from the kernels: int8 per token, exact int dot.
    VecF want(M * out);
    std::vector<int8_t> q(W.padded_cols());
    for (int64_t m = 0; m < M; ++m) {
      int32_t qsum;
      const float s = cpu::quantize_row_i8(x.data() + m * in, in, W.padded_cols(), q.data(), &qsum);
      for (int64_t r = 0; r < out; ++r) {
        const int32_t d = cpu::ternary_dot(W.data + r * W.row_bytes, q.data(), W.padded_cols(), qsum);
        want[m * out + r] = static_cast<float>(d) / s * W.scale;
      }
    }
    for (int64_t i = 0; i < M * out; ++i) EXPECT_EQ(got[i], want[i]) << i;
    // accumulate adds the same values.
    VecF acc(M * out, 2.0f);
    train::ternary_linear_fwd<float>(x.data(), W, M, acc.data(), ActQuant::Int8, true);
    for (int64_t i = 0; i < M * out; ++i) EXPECT_EQ(acc[i], 2.0f + want[i]);
    // The double Int8 path is the same float arithmetic.
    VecD gd(M * out);
    train::ternary_linear_fwd<double>(to_d(x).data(), W, M, gd.data());
    for (int64_t i = 0; i < M * out; ++i) EXPECT_EQ(static_cast<float>(gd[i]), want[i]);
    // The surrogate is the quantized forward up to the int8 rounding (~1/127 relative).
    VecF sur(M * out);
    train::ternary_linear_fwd<float>(x.data(), W, M, sur.data(), ActQuant::None);
    EXPECT_LT(rel_f(sur, want), 0.03) << in;
  }
}

// ---------------------------------------------------------------------------------------
// LoRA

TEST(TrainOps, LoraGradients) {
  const int64_t M = 5, in = 12, r = 3, out = 7;
  const float scaling = 2.0f;
  for (float p : {0.0f, 0.3f}) {
    std::mt19937 rng(5);
    const VecD x = randn(rng, M * in), A = randn(rng, r * in, 0.5), B = randn(rng, out * r, 0.5);
    const VecD dy = randn(rng, M * out);
    std::vector<uint8_t> mask(M * in);
    train::dropout_mask(M * in, p, 99, mask.data());
    const uint8_t* mk = p > 0 ? mask.data() : nullptr;
    if (p > 0) {
      const int dropped = static_cast<int>(std::count(mask.begin(), mask.end(), 0));
      ASSERT_GT(dropped, 0);
      ASSERT_LT(dropped, M * in);
    }
    auto fwd = [&](const VecD& xx, const VecD& aa, const VecD& bb) {
      VecD u(M * r), y(M * out);
      train::lora_fwd<double>(xx.data(), aa.data(), bb.data(), M, in, r, out, scaling, mk, p, u.data(), y.data());
      return y;
    };
    VecD u(M * r), y(M * out);
    train::lora_fwd<double>(x.data(), A.data(), B.data(), M, in, r, out, scaling, mk, p, u.data(), y.data());
    // u = A x_d with x_d = x * mask / (1 - p).
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < r; ++j) {
        double want = 0;
        for (int64_t i = 0; i < in; ++i) {
          const double xd = p > 0 ? (mask[m * in + i] ? x[m * in + i] / (1.0 - p) : 0.0) : x[m * in + i];
          want += A[j * in + i] * xd;
        }
        EXPECT_NEAR(u[m * r + j], want, 1e-12);
      }
    VecD dx(M * in), dA(r * in, 0.0), dB(out * r, 0.0);
    train::lora_bwd<double>(x.data(), A.data(), B.data(), u.data(), dy.data(), M, in, r, out, scaling, mk, p,
                            dx.data(), dA.data(), dB.data());
    const std::string tag = " (dropout " + std::to_string(p) + ")";
    check_grad([&](const VecD& v) { return fwd(v, A, B); }, x, dy, dx, "lora dx" + tag);
    check_grad([&](const VecD& v) { return fwd(x, v, B); }, A, dy, dA, "lora dA" + tag);
    check_grad([&](const VecD& v) { return fwd(x, A, v); }, B, dy, dB, "lora dB" + tag);
    // All three at once (one joint Jacobian).
    check_grad(
        [&](const VecD& v) {
          return fwd(VecD(v.begin(), v.begin() + M * in), VecD(v.begin() + M * in, v.begin() + M * in + r * in),
                     VecD(v.begin() + M * in + r * in, v.end()));
        },
        concat({&x, &A, &B}), dy, concat({&dx, &dA, &dB}), "lora joint" + tag);

    // Parameter gradients accumulate; dx accumulates only when asked; dx may be null.
    VecD dx2(M * in, 1.0);
    train::lora_bwd<double>(x.data(), A.data(), B.data(), u.data(), dy.data(), M, in, r, out, scaling, mk, p,
                            dx2.data(), dA.data(), dB.data(), true);
    train::lora_bwd<double>(x.data(), A.data(), B.data(), u.data(), dy.data(), M, in, r, out, scaling, mk, p, nullptr,
                            dA.data(), dB.data());
    VecD dA1(r * in, 0.0), dB1(out * r, 0.0);
    train::lora_bwd<double>(x.data(), A.data(), B.data(), u.data(), dy.data(), M, in, r, out, scaling, mk, p, nullptr,
                            dA1.data(), dB1.data());
    for (size_t i = 0; i < dA.size(); ++i) EXPECT_NEAR(dA[i], 3 * dA1[i], 1e-12);
    for (size_t i = 0; i < dB.size(); ++i) EXPECT_NEAR(dB[i], 3 * dB1[i], 1e-12);
    for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx2[i], dx[i] + 1.0, 1e-12);

    // float32 forward = the float64 one (there is no engine LoRA kernel to compare here).
    const VecF xf = to_f(x), Af = to_f(A), Bf = to_f(B);
    VecF uf(M * r), yf(M * out, 3.0f);
    train::lora_fwd<float>(xf.data(), Af.data(), Bf.data(), M, in, r, out, scaling, mk, p, uf.data(), yf.data(), true);
    VecD yd = fwd(to_d(xf), to_d(Af), to_d(Bf));
    for (auto& v : yd) v += 3.0;
    EXPECT_LT(rel_f(yf, to_f(yd)), 1e-6);
  }
}

TEST(TrainOps, DropoutMask) {
  const int64_t n = 100000;
  std::vector<uint8_t> a(n), b(n);
  train::dropout_mask(n, 0.0f, 7, a.data());
  EXPECT_EQ(std::count(a.begin(), a.end(), 1), n);
  train::dropout_mask(n, 0.25f, 7, a.data());
  train::dropout_mask(n, 0.25f, 7, b.data());
  EXPECT_EQ(a, b);
  const double kept = static_cast<double>(std::count(a.begin(), a.end(), 1)) / n;
  EXPECT_NEAR(kept, 0.75, 0.01);
  train::dropout_mask(n, 0.25f, 8, b.data());
  EXPECT_NE(a, b);
  EXPECT_NE(test::error_of([&] { train::dropout_mask(n, 1.0f, 7, a.data()); }), "");
  VecF x(4, 1.0f), A(4, 1.0f), B(4, 1.0f), u(1), y(4);
  EXPECT_NE(test::error_of([&] {
              train::lora_fwd<float>(x.data(), A.data(), B.data(), 1, 4, 1, 4, 1.0f, nullptr, 0.1f, u.data(), y.data());
            }),
            "");
}

// ---------------------------------------------------------------------------------------
// Gated activations

TEST(TrainOps, GatedActivationGradients) {
  const int64_t n = 23;
  for (Activation act : {Activation::Relu2, Activation::Silu, Activation::Gelu}) {
    std::mt19937 rng(6);
    const VecD g = randn(rng, n, 1.5), u = randn(rng, n), dh = randn(rng, n);
    Fn f = [&](const VecD& p) {
      VecD h(n);
      train::gated_act_fwd<double>(p.data(), p.data() + n, n, act, h.data());
      return h;
    };
    VecD dg(n), du(n);
    train::gated_act_bwd<double>(g.data(), u.data(), dh.data(), n, act, dg.data(), du.data());
    check_grad(f, concat({&g, &u}), dh, concat({&dg, &du}), "gated " + activation_name(act));
  }
  // relu2_gate is the Relu2 case.
  std::mt19937 rng(7);
  const VecD g = randn(rng, n), u = randn(rng, n), dh = randn(rng, n);
  VecD dg(n), du(n), dg2(n), du2(n), h(n), h2(n);
  train::relu2_gate_fwd<double>(g.data(), u.data(), n, h.data());
  train::gated_act_fwd<double>(g.data(), u.data(), n, Activation::Relu2, h2.data());
  train::relu2_gate_bwd<double>(g.data(), u.data(), dh.data(), n, dg.data(), du.data());
  train::gated_act_bwd<double>(g.data(), u.data(), dh.data(), n, Activation::Relu2, dg2.data(), du2.data());
  EXPECT_EQ(h, h2);
  EXPECT_EQ(dg, dg2);
  EXPECT_EQ(du, du2);
  for (int64_t i = 0; i < n; ++i) {
    if (g[i] <= 0) {
      EXPECT_EQ(dg[i], 0.0);
      EXPECT_EQ(du[i], 0.0);
    }
  }
}

TEST(TrainOps, GatedActivationForwardIsTheEngineKernel) {
  std::mt19937 rng(8);
  const int64_t n = 301;
  const VecF g = to_f(randn(rng, n, 2.0)), u = to_f(randn(rng, n));
  for (Activation act : {Activation::Relu2, Activation::Silu, Activation::Gelu}) {
    VecF got(n), want(n);
    train::gated_act_fwd<float>(g.data(), u.data(), n, act, got.data());
    cpu::gated_activation(g.data(), u.data(), n, act, want.data());
    EXPECT_EQ(rel_f(got, want), 0.0) << activation_name(act);
    VecD gd(n);
    train::gated_act_fwd<double>(to_d(g).data(), to_d(u).data(), n, act, gd.data());
    EXPECT_LT(rel_f(to_f(gd), want), 1e-6) << activation_name(act);
  }
}

// ---------------------------------------------------------------------------------------
// RoPE

TEST(TrainOps, RopeGradient) {
  std::mt19937 rng(9);
  const int64_t M = 5, nh = 4, hd = 8, n = nh * hd;
  VecF inv_freq(hd / 2);
  cpu::rope_inv_freq(10000.0f, hd, inv_freq.data());
  for (int64_t pos0 : {0, 3}) {
    const VecD x = randn(rng, M * n), dy = randn(rng, M * n);
    Fn f = [&](const VecD& p) {
      VecD y = p;
      train::rope_neox_fwd<double>(y.data(), M, nh, hd, pos0, inv_freq.data());
      return y;
    };
    VecD dx = dy;
    train::rope_neox_bwd<double>(dx.data(), M, nh, hd, pos0, inv_freq.data());
    check_grad(f, x, dy, dx, "rope dx, pos0 " + std::to_string(pos0));
    // A rotation: the backward undoes the forward.
    VecD back = f(x);
    train::rope_neox_bwd<double>(back.data(), M, nh, hd, pos0, inv_freq.data());
    EXPECT_LT(rel_l2d(back, x), 1e-14);
  }
}

TEST(TrainOps, RopeForwardIsTheEngineKernel) {
  std::mt19937 rng(10);
  const int64_t M = 6, nh = 4, hd = 16, n = nh * hd, pos0 = 1000;
  VecF inv_freq(hd / 2);
  cpu::rope_inv_freq(500000.0f, hd, inv_freq.data());
  const VecF x = to_f(randn(rng, M * n));
  VecF got = x, want = x;
  train::rope_neox_fwd<float>(got.data(), M, nh, hd, pos0, inv_freq.data());
  for (int64_t m = 0; m < M; ++m) cpu::rope_neox(want.data() + m * n, nh, hd, pos0 + m, inv_freq.data());
  EXPECT_EQ(rel_f(got, want), 0.0);
  VecD gd = to_d(x);
  train::rope_neox_fwd<double>(gd.data(), M, nh, hd, pos0, inv_freq.data());
  EXPECT_LT(rel_f(to_f(gd), want), 1e-6);
}

// ---------------------------------------------------------------------------------------
// Attention

void check_attention(int64_t Tn, int64_t nh, int64_t nkv, int64_t hd, uint32_t seed) {
  SCOPED_TRACE("T " + std::to_string(Tn) + ", heads " + std::to_string(nh) + "/" + std::to_string(nkv) + ", hd " +
               std::to_string(hd));
  std::mt19937 rng(seed);
  const int64_t QD = nh * hd, KD = nkv * hd;
  const VecD q = randn(rng, Tn * QD, 1.5), k = randn(rng, Tn * KD, 1.5), v = randn(rng, Tn * KD);
  const VecD dout = randn(rng, Tn * QD);
  auto fwd = [&](const double* qq, const double* kk, const double* vv, VecD* lse) {
    VecD out(Tn * QD), l(Tn * nh);
    train::attention_fwd<double>(qq, kk, vv, Tn, nh, nkv, hd, out.data(), l.data());
    if (lse) *lse = l;
    return out;
  };
  VecD lse;
  fwd(q.data(), k.data(), v.data(), &lse);
  VecD dq(Tn * QD), dk(Tn * KD), dv(Tn * KD);
  train::attention_bwd<double>(q.data(), k.data(), v.data(), lse.data(), dout.data(), Tn, nh, nkv, hd, dq.data(),
                               dk.data(), dv.data());
  Fn f = [&](const VecD& p) {
    return fwd(p.data(), p.data() + Tn * QD, p.data() + Tn * QD + Tn * KD, nullptr);
  };
  check_grad(f, concat({&q, &k, &v}), dout, concat({&dq, &dk, &dv}), "attention dq|dk|dv");
  if (Tn > 1) {
    // Each part on its own (with T = 1 the softmax is constant: dq = dk = 0).
    check_grad([&](const VecD& p) { return fwd(p.data(), k.data(), v.data(), nullptr); }, q, dout, dq, "attention dq");
    check_grad([&](const VecD& p) { return fwd(q.data(), p.data(), v.data(), nullptr); }, k, dout, dk, "attention dk");
  } else {
    // p = exp(s - lse) is 1 up to rounding, so these are 0 up to rounding.
    for (double x : dq) EXPECT_NEAR(x, 0.0, 1e-12);
    for (double x : dk) EXPECT_NEAR(x, 0.0, 1e-12);
  }
  check_grad([&](const VecD& p) { return fwd(q.data(), k.data(), p.data(), nullptr); }, v, dout, dv, "attention dv");
}

TEST(TrainOps, AttentionGradient) { check_attention(5, 4, 2, 8, 11); }

TEST(TrainOps, AttentionGradientEdgeCases) {
  check_attention(1, 4, 2, 8, 12);  // one token
  check_attention(1, 4, 1, 8, 13);  // one token, group of 4
  check_attention(5, 3, 3, 8, 14);  // GQA group of 1 (plain multi-head)
  check_attention(5, 4, 1, 8, 15);  // group of 4 (one KV head for all)
  check_attention(7, 8, 2, 6, 16);  // group of 4, odd T, another head_dim
}

TEST(TrainOps, AttentionForwardIsTheEngineKernel) {
  std::mt19937 rng(17);
  const int64_t Tn = 9, nh = 4, nkv = 2, hd = 16, QD = nh * hd, KD = nkv * hd, group = nh / nkv;
  const VecF q = to_f(randn(rng, Tn * QD, 2.0)), k = to_f(randn(rng, Tn * KD, 2.0)), v = to_f(randn(rng, Tn * KD));
  VecF got(Tn * QD), lse(Tn * nh), want(Tn * QD), scores(Tn);
  train::attention_fwd<float>(q.data(), k.data(), v.data(), Tn, nh, nkv, hd, got.data(), lse.data());
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t h = 0; h < nh; ++h)
      cpu::attention_head(q.data() + t * QD + h * hd, k.data() + (h / group) * hd, v.data() + (h / group) * hd, KD,
                          t + 1, hd, scores.data(), want.data() + t * QD + h * hd);
  EXPECT_EQ(rel_f(got, want), 0.0);
  VecD gd(Tn * QD), ld(Tn * nh);
  train::attention_fwd<double>(to_d(q).data(), to_d(k).data(), to_d(v).data(), Tn, nh, nkv, hd, gd.data(), ld.data());
  EXPECT_LT(rel_f(to_f(gd), want), 1e-6);
  // lse is the log-sum-exp of the scaled scores.
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t h = 0; h < nh; ++h) {
      double sum = 0;
      for (int64_t j = 0; j <= t; ++j) {
        double d = 0;
        for (int64_t i = 0; i < hd; ++i) d += double(q[t * QD + h * hd + i]) * k[j * KD + (h / group) * hd + i];
        sum += std::exp(d / std::sqrt(double(hd)));
      }
      EXPECT_NEAR(ld[t * nh + h], std::log(sum), 1e-12);
      EXPECT_NEAR(lse[t * nh + h], std::log(sum), 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// Cross entropy over the tied head

// loss = mean over kept positions of lse - logit[label], straight from the definition in
// long double.
double reference_ce(const VecD& xn, const VecF& E, const std::vector<int32_t>& labels, int64_t H, int64_t V) {
  long double total = 0;
  int n = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] == train::kIgnore) continue;
    std::vector<long double> l(V);
    for (int64_t v = 0; v < V; ++v) {
      l[v] = 0;
      for (int64_t h = 0; h < H; ++h) l[v] += static_cast<long double>(E[v * H + h]) * xn[i * H + h];
    }
    const long double mx = *std::max_element(l.begin(), l.end());
    long double s = 0;
    for (auto x : l) s += std::exp(x - mx);
    total += mx + std::log(s) - l[labels[i]];
    ++n;
  }
  return n ? static_cast<double>(total / n) : 0.0;
}

TEST(TrainOps, CrossEntropyGradient) {
  std::mt19937 rng(18);
  const int64_t M = 5, H = 12, V = 17;
  const VecF Ef = to_f(randn(rng, V * H));
  const FloatMatrix E = f32_matrix(Ef, V, H);
  const std::vector<int32_t> labels = {3, train::kIgnore, 16, 0, 3};
  const VecD xn = randn(rng, M * H);
  const VecD dl = {1.7};  // dloss
  Fn f = [&](const VecD& p) {
    VecD lse(M);
    return VecD{train::cross_entropy_fwd<double>(p.data(), E, labels.data(), M, 0, lse.data())};
  };
  VecD lse(M);
  const double loss = train::cross_entropy_fwd<double>(xn.data(), E, labels.data(), M, 0, lse.data());
  EXPECT_NEAR(loss, reference_ce(xn, Ef, labels, H, V), 1e-12);
  EXPECT_EQ(lse[1], 0.0);  // ignored row
  VecD dxn(M * H, 9.0);
  train::cross_entropy_bwd<double>(xn.data(), E, labels.data(), lse.data(), M, 0, dl[0], dxn.data());
  check_grad(f, xn, dl, dxn, "cross entropy dxn");
  for (int64_t h = 0; h < H; ++h) EXPECT_EQ(dxn[1 * H + h], 0.0);  // ignored row: no gradient

  // The fused pass gives the same loss and gradient.
  VecD dxn2(M * H);
  const double loss2 = train::cross_entropy_fwd_bwd<double>(xn.data(), E, labels.data(), M, 0, dl[0], dxn2.data());
  EXPECT_NEAR(loss2, loss, 1e-14);
  EXPECT_LT(rel_l2d(dxn2, dxn), 1e-14);

  // n_norm: normalised by a given count instead (several calls, one global mean).
  VecD lse3(M), dxn3(M * H);
  const double loss3 = train::cross_entropy_fwd<double>(xn.data(), E, labels.data(), M, 8, lse3.data());
  EXPECT_NEAR(loss3, loss * 4 / 8, 1e-14);
  train::cross_entropy_bwd<double>(xn.data(), E, labels.data(), lse3.data(), M, 8, dl[0], dxn3.data());
  for (size_t i = 0; i < dxn.size(); ++i) EXPECT_NEAR(dxn3[i], dxn[i] * 4 / 8, 1e-14);
}

TEST(TrainOps, CrossEntropyChunksIgnoresAndErrors) {
  std::mt19937 rng(19);
  const int64_t M = 37, H = 12, V = 17;  // more positions than one chunk of the head
  const VecF Ef = to_f(randn(rng, V * H));
  const FloatMatrix E = f32_matrix(Ef, V, H);
  std::vector<int32_t> labels(M);
  for (int64_t i = 0; i < M; ++i) labels[i] = i % 5 == 2 ? train::kIgnore : static_cast<int32_t>(rng() % V);
  const VecD xn = randn(rng, M * H);
  VecD lse(M);
  const double loss = train::cross_entropy_fwd<double>(xn.data(), E, labels.data(), M, 0, lse.data());
  EXPECT_NEAR(loss, reference_ce(xn, Ef, labels, H, V), 1e-12);
  VecD dxn(M * H);
  train::cross_entropy_bwd<double>(xn.data(), E, labels.data(), lse.data(), M, 0, 1.0, dxn.data());
  check_grad(
      [&](const VecD& p) {
        VecD l(M);
        return VecD{train::cross_entropy_fwd<double>(p.data(), E, labels.data(), M, 0, l.data())};
      },
      xn, {1.0}, dxn, "cross entropy dxn, 37 positions");

  // Nothing kept: loss 0, zero gradient.
  std::vector<int32_t> none(M, train::kIgnore);
  VecD g(M * H, 5.0);
  EXPECT_EQ(train::cross_entropy_fwd_bwd<double>(xn.data(), E, none.data(), M, 0, 1.0, g.data()), 0.0);
  for (double x : g) EXPECT_EQ(x, 0.0);

  // A label outside the vocabulary (other than -100) is an error.
  std::vector<int32_t> bad = labels;
  bad[4] = static_cast<int32_t>(V);
  EXPECT_NE(test::error_of([&] { train::cross_entropy_fwd<double>(xn.data(), E, bad.data(), M, 0, lse.data()); }), "");
  bad[4] = -1;
  EXPECT_NE(test::error_of([&] { train::cross_entropy_fwd<double>(xn.data(), E, bad.data(), M, 0, lse.data()); }), "");
}

TEST(TrainOps, CrossEntropyIsStableForHugeLogits) {
  std::mt19937 rng(20);
  const int64_t M = 4, H = 12, V = 17;
  const VecF Ef = to_f(randn(rng, V * H));
  const FloatMatrix E = f32_matrix(Ef, V, H);
  const std::vector<int32_t> labels = {1, 2, 3, 4};
  VecF xn = to_f(randn(rng, M * H, 1000.0));  // logits ~ 1e3..1e4: exp overflows unless shifted
  VecF dxn(M * H);
  const double loss = train::cross_entropy_fwd_bwd<float>(xn.data(), E, labels.data(), M, 0, 1.0, dxn.data());
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_LT(std::fabs(loss - reference_ce(to_d(xn), Ef, labels, H, V)), 1e-3 * std::max(1.0, std::fabs(loss)));
  for (float x : dxn) EXPECT_TRUE(std::isfinite(x));
}

TEST(TrainOps, CrossEntropyFloatMatchesDoubleAndHeadIsTheEngine) {
  std::mt19937 rng(21);
  const int64_t M = 6, H = 40, V = 300;
  const VecF Ef = to_f(randn(rng, V * H, 0.3));
  const FloatMatrix E = f32_matrix(Ef, V, H);
  const VecF xn = to_f(randn(rng, M * H));
  // Logits: cpu::dot_f32(E_v, xn_i), the engine's exact head, bit for bit.
  VecF logits(M * V);
  train::lm_head_logits<float>(xn.data(), E, M, logits.data());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t v = 0; v < V; ++v) EXPECT_EQ(logits[i * V + v], cpu::dot_f32(Ef.data() + v * H, xn.data() + i * H, H));
  std::vector<int32_t> labels(M);
  for (auto& l : labels) l = static_cast<int32_t>(rng() % V);
  VecF dxf(M * H);
  VecD dxd(M * H);
  const double lf = train::cross_entropy_fwd_bwd<float>(xn.data(), E, labels.data(), M, 0, 1.0, dxf.data());
  const double ld = train::cross_entropy_fwd_bwd<double>(to_d(xn).data(), E, labels.data(), M, 0, 1.0, dxd.data());
  EXPECT_NEAR(lf, ld, 1e-6 * ld);
  EXPECT_LT(rel_f(dxf, to_f(dxd)), 1e-5);
}

// ---------------------------------------------------------------------------------------
// The ops composed into the whole model (float32, ActQuant::Int8) give the CPU engine's
// logits: the training forward is the inference forward.

TEST(TrainOps, ComposedForwardIsTheCpuEngine) {
  const Model m = synth_model(parse_shape("64,96,2,4,2,300"), 21);
  const ModelConfig& c = m.config;
  const std::vector<int32_t> toks = {1, 17, 250, 3, 99, 42, 7};
  const int64_t M = static_cast<int64_t>(toks.size()), H = c.hidden, QD = c.q_dim(), KD = c.kv_dim(), F = c.ffn;
  VecF inv_freq(c.head_dim / 2);
  cpu::rope_inv_freq(c.rope_theta, c.head_dim, inv_freq.data());
  VecF x(M * H), n(M * std::max({H, QD, F})), q(M * QD), k(M * KD), v(M * KD), att(M * QD), lse(M * c.n_heads),
      g(M * F), u(M * F), h(M * F);
  for (int64_t i = 0; i < M; ++i) m.embedding.row_to_f32(toks[i], x.data() + i * H);
  for (const Layer& L : m.layers) {
    train::rmsnorm_fwd<float>(x.data(), L.attn_norm.data(), M, H, c.rms_eps, n.data());
    train::ternary_linear_fwd<float>(n.data(), L.q, M, q.data());
    train::ternary_linear_fwd<float>(n.data(), L.k, M, k.data());
    train::ternary_linear_fwd<float>(n.data(), L.v, M, v.data());
    train::rope_neox_fwd<float>(q.data(), M, c.n_heads, c.head_dim, 0, inv_freq.data());
    train::rope_neox_fwd<float>(k.data(), M, c.n_kv_heads, c.head_dim, 0, inv_freq.data());
    train::attention_fwd<float>(q.data(), k.data(), v.data(), M, c.n_heads, c.n_kv_heads, c.head_dim, att.data(),
                                lse.data());
    train::rmsnorm_fwd<float>(att.data(), L.attn_sub_norm.data(), M, QD, c.rms_eps, n.data());
    train::ternary_linear_fwd<float>(n.data(), L.o, M, x.data(), ActQuant::Int8, true);
    train::rmsnorm_fwd<float>(x.data(), L.ffn_norm.data(), M, H, c.rms_eps, n.data());
    train::ternary_linear_fwd<float>(n.data(), L.gate, M, g.data());
    train::ternary_linear_fwd<float>(n.data(), L.up, M, u.data());
    train::gated_act_fwd<float>(g.data(), u.data(), M * F, c.act, h.data());
    train::rmsnorm_fwd<float>(h.data(), L.ffn_sub_norm.data(), M, F, c.rms_eps, n.data());
    train::ternary_linear_fwd<float>(n.data(), L.down, M, x.data(), ActQuant::Int8, true);
  }
  train::rmsnorm_fwd<float>(x.data(), m.output_norm.data(), M, H, c.rms_eps, n.data());
  VecF logits(M * c.vocab);
  train::lm_head_logits<float>(n.data(), m.embedding, M, logits.data());
  const VecF want = test::cpu_logits(m, toks, M);
  // The same float operations in the same order (both built without FMA contraction):
  // bit for bit the engine's logits.
  test::expect_logits_match(logits, want, c.vocab, 1e-6, "ops composed vs cpu engine");
  EXPECT_EQ(test::rel_l2(logits.data(), want.data(), want.size()), 0.0);
}

}  // namespace
}  // namespace tern
