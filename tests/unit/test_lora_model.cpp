// The whole-model LoRA loss and gradient (train/lora_model.h): the backward through every
// layer (attention, RoPE, norms, gating, the ternary linears by the STE, the tied head)
// against central finite differences of the smooth surrogate in float64, with and without
// dropout; and the float training forward against the CPU inference engine.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>

#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"
#include "model/safetensors.h"
#include "train/lora_adapter.h"
#include "train/lora_model.h"
#include "lora_fixture.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern {
namespace {

using train::LoraSet;

// A random LoRA set on every projection (B non-zero so every gradient path is live).
LoraSet<double> random_set(const ModelConfig& c, int rank, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, 0.3);
  const int64_t H = c.hidden, QD = c.q_dim(), KV = c.kv_dim(), F = c.ffn;
  const int64_t in[kProjCount] = {H, H, H, QD, H, H, F}, out[kProjCount] = {QD, KV, KV, H, F, F, H};
  LoraSet<double> s;
  s.rank = rank;
  s.scaling = 2.0f;
  s.A.resize(c.n_layers);
  s.B.resize(c.n_layers);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      s.A[l][p].resize(rank * in[p]);
      s.B[l][p].resize(out[p] * rank);
      for (double& x : s.A[l][p]) x = n(rng);
      for (double& x : s.B[l][p]) x = n(rng);
    }
  }
  return s;
}

void fd_check(const Model& m, float dropout) {
  const ModelConfig& c = m.config;
  LoraSet<double> p = random_set(c, 2, 5);
  std::vector<int32_t> toks = {3, 17, 9, 30, 1, 22, 8};
  std::vector<int32_t> labels = {17, 9, train::kIgnore, 1, 22, 8, train::kIgnore};
  train::StepOptions o;
  o.quant = train::ActQuant::None;
  o.dropout = dropout;
  o.dropout_seed = 99;
  auto grads = train::zeros_like(p);
  const int64_t n = static_cast<int64_t>(toks.size());
  train::lora_loss_and_grad<double>(m, p, toks.data(), labels.data(), n, 0, o, &grads);
  std::mt19937 rng(7);
  double num2 = 0, err2 = 0;
  int checked = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (int pr = 0; pr < kProjCount; ++pr) {
      for (int which = 0; which < 2; ++which) {
        auto& v = which == 0 ? p.A[l][pr] : p.B[l][pr];
        auto& g = which == 0 ? grads.A[l][pr] : grads.B[l][pr];
        for (int s = 0; s < 3; ++s) {
          const size_t i = rng() % v.size();
          const double keep = v[i], eps = 1e-6;
          v[i] = keep + eps;
          const double lp = train::lora_loss_and_grad<double>(m, p, toks.data(), labels.data(), n, 0, o, nullptr);
          v[i] = keep - eps;
          const double lm = train::lora_loss_and_grad<double>(m, p, toks.data(), labels.data(), n, 0, o, nullptr);
          v[i] = keep;
          const double fd = (lp - lm) / (2 * eps);
          num2 += fd * fd;
          err2 += (fd - g[i]) * (fd - g[i]);
          ++checked;
          EXPECT_NEAR(g[i], fd, 1e-6 + 1e-4 * std::fabs(fd)) << "layer " << l << " " << proj_name(static_cast<Proj>(pr))
                                                             << (which == 0 ? " A" : " B") << "[" << i << "]";
        }
      }
    }
  }
  const double rel = std::sqrt(err2 / num2);
  std::printf("[info] whole-model LoRA gradient vs finite differences (dropout %.1f): %d entries, rel L2 %.3g\n", dropout,
              checked, rel);
  EXPECT_LT(rel, 1e-6);
  EXPECT_FALSE(std::isnan(rel));
}

TEST(LoraModel, GradientMatchesFiniteDifferences) {
  Model m = synth_model(parse_shape("32,64,2,4,2,300"), 3);
  fd_check(m, 0.0f);
  fd_check(m, 0.25f);
}

TEST(LoraModel, ZeroAdapterLossEqualsEngineCrossEntropy) {
  // With B = 0 the LoRA branch is zero, so the training forward must reproduce the CPU
  // engine's logits and the loss is their cross entropy.
  Model m = synth_model(parse_shape("64,128,2,4,2,300"), 4);
  LoraSet<double> pd = random_set(m.config, 4, 9);
  LoraSet<float> p;
  p.rank = pd.rank, p.scaling = pd.scaling;
  p.A.resize(pd.A.size()), p.B.resize(pd.B.size());
  for (size_t l = 0; l < pd.A.size(); ++l) {
    for (int pr = 0; pr < kProjCount; ++pr) {
      p.A[l][pr].assign(pd.A[l][pr].begin(), pd.A[l][pr].end());
      p.B[l][pr].assign(pd.B[l][pr].size(), 0.0f);
    }
  }
  std::vector<int32_t> toks = {1, 5, 9, 44, 2, 7, 30, 12};
  std::vector<int32_t> labels(toks.size(), train::kIgnore);
  for (size_t i = 0; i + 1 < toks.size(); ++i) labels[i] = toks[i + 1];
  const double loss = train::lora_loss_and_grad<float>(m, p, toks.data(), labels.data(), toks.size(), 0, {}, nullptr);
  EngineOptions eo;
  eo.ctx = 16;
  auto e = make_cpu_engine(m, eo);
  const int64_t V = m.config.vocab;
  std::vector<float> lg(toks.size() * V);
  e->forward(toks, lg.data(), Logits::All);
  double want = 0;
  int n = 0;
  for (size_t i = 0; i + 1 < toks.size(); ++i) {
    double mx = -1e300, se = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(lg[i * V + v]));
    for (int64_t v = 0; v < V; ++v) se += std::exp(double(lg[i * V + v]) - mx);
    want += mx + std::log(se) - lg[i * V + labels[i]];
    ++n;
  }
  want /= n;
  EXPECT_NEAR(loss, want, 1e-5 * std::fabs(want));
  // Gradients w.r.t. B are non-zero even at B = 0 (that is how LoRA training starts).
  auto grads = train::zeros_like(p);
  train::lora_loss_and_grad<float>(m, p, toks.data(), labels.data(), toks.size(), 0, {}, &grads);
  double gb = 0;
  for (float x : grads.B[1][static_cast<int>(Proj::Down)]) gb += double(x) * x;
  EXPECT_GT(gb, 0.0);
}

TEST(LoraModel, BadTokensAreErrors) {
  Model m = synth_model(parse_shape("32,64,1,4,2,300"), 3);
  LoraSet<double> p = random_set(m.config, 2, 1);
  std::vector<int32_t> toks = {1, 300}, labels = {299, train::kIgnore};
  EXPECT_THROW(train::lora_loss_and_grad<double>(m, p, toks.data(), labels.data(), 2, 0, {}, nullptr), Error);
}

// Against HF peft (tests/fixtures/lora from tools/make_lora_fixtures.py on the GPU
// machine): the gradient of the causal-LM loss (labels = input ids) w.r.t. every LoRA A
// and B of the tiny packed model, relative L2 < 1e-3 over all of them (issue 5).
TEST(LoraModel, GradientsMatchPeft) {
  const std::string dir = test::lora_fixture_dir();
  if (!std::filesystem::exists(dir + "/grads.safetensors")) GTEST_SKIP() << "no " << dir << " (tools/make_lora_fixtures.py)";
  Model m = load_model(std::string(TERN_FIXTURES) + "/tiny/hf_packed");
  const LoraAdapter a = load_peft_adapter(dir + "/adapter", m.config);
  const std::vector<int32_t> toks = test::tiny_fixture_tokens();
  std::vector<int32_t> labels(toks.size(), train::kIgnore);
  for (size_t i = 0; i + 1 < toks.size(); ++i) labels[i] = toks[i + 1];
  const LoraSet<float> p = train::lora_set_from<float>(a);
  auto grads = train::zeros_like(p);
  const double loss = train::lora_loss_and_grad<float>(m, p, toks.data(), labels.data(), toks.size(), 0, {}, &grads);
  const double rel = test::rel_l2_vs_peft_grads(grads);
  std::printf("[info] LoRA gradients vs peft: rel L2 %.3g (loss %.6f)\n", rel, loss);
  EXPECT_LT(rel, 1e-3);
}

}  // namespace
}  // namespace tern
