// Optimizers, clipping and schedules (train/optimizer.h) against hand-computed PyTorch
// formulas, and optimizer state round trips for --resume.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "tern/error.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace tern {
namespace {

struct Params {
  std::vector<float> a, ga, b, gb;
  std::vector<ParamRef> refs() { return {{"a", a, ga}, {"b", b, gb}}; }
};

Params random_params(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  Params p;
  p.a.resize(7), p.ga.resize(7), p.b.resize(5), p.gb.resize(5);
  for (auto* v : {&p.a, &p.ga, &p.b, &p.gb})
    for (float& x : *v) x = n(rng);
  return p;
}

TEST(Optimizer, SgdStepIsExactlyLrTimesGrad) {
  Params p = random_params(1);
  const Params before = p;
  Optimizer opt({OptimizerKind::Sgd}, p.refs());
  opt.step(0.125);
  for (size_t i = 0; i < p.a.size(); ++i) EXPECT_EQ(p.a[i], before.a[i] - 0.125f * before.ga[i]);
  for (size_t i = 0; i < p.b.size(); ++i) EXPECT_EQ(p.b[i], before.b[i] - 0.125f * before.gb[i]);
  EXPECT_EQ(opt.steps(), 1);
}

TEST(Optimizer, AdamWMatchesTheTorchFormulaInDouble) {
  Params p = random_params(2);
  OptimizerOptions o;
  o.weight_decay = 0.01;
  Optimizer opt(o, p.refs());
  std::vector<double> x(p.a.begin(), p.a.end()), m(x.size(), 0), v(x.size(), 0);
  const double lr = 1e-2;
  for (int t = 1; t <= 5; ++t) {
    for (size_t i = 0; i < x.size(); ++i) {  // new gradients each step
      p.ga[i] = std::sin(1.7 * t + i);
      const double g = p.ga[i];
      x[i] *= 1 - lr * o.weight_decay;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      x[i] -= lr * mh / (std::sqrt(vh) + 1e-8);
    }
    opt.step(lr);
  }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(p.a[i], x[i], 1e-5 * (1 + std::fabs(x[i])));
}

TEST(Optimizer, ClipGradNormLikeTorch) {
  Params p = random_params(3);
  double ss = 0;
  for (float g : p.ga) ss += double(g) * g;
  for (float g : p.gb) ss += double(g) * g;
  const double norm = std::sqrt(ss);
  const Params before = p;
  EXPECT_NEAR(clip_grad_norm(p.refs(), 0), norm, 1e-9);  // 0 = off
  EXPECT_EQ(p.ga, before.ga);
  EXPECT_NEAR(clip_grad_norm(p.refs(), norm * 10), norm, 1e-9);  // under the limit: untouched
  EXPECT_EQ(p.ga, before.ga);
  clip_grad_norm(p.refs(), 0.5);
  double after = 0;
  for (float g : p.ga) after += double(g) * g;
  for (float g : p.gb) after += double(g) * g;
  EXPECT_NEAR(std::sqrt(after), 0.5, 1e-5);
}

TEST(Optimizer, Schedules) {
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::Constant, 1.0, 0, 4, 100), 0.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::Constant, 1.0, 2, 4, 100), 0.5);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::Constant, 1.0, 50, 4, 100), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::Cosine, 2.0, 4, 4, 104), 2.0);
  EXPECT_NEAR(scheduled_lr(LrSchedule::Cosine, 2.0, 54, 4, 104), 1.0, 1e-12);
  EXPECT_NEAR(scheduled_lr(LrSchedule::Cosine, 2.0, 104, 4, 104), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(scheduled_lr(LrSchedule::Cosine, 1.0, 10, 0, 100), 0.5 * (1 + std::cos(M_PI * 0.1)));
  EXPECT_THROW(parse_lr_schedule("linear"), Error);
  EXPECT_THROW(parse_optimizer("adam"), Error);
}

TEST(Optimizer, StateRoundTripResumesExactly) {
  const std::string dir = testing::TempDir() + "/tern_opt_state";
  std::filesystem::create_directories(dir);
  Params p = random_params(4), q = p;
  Optimizer a({}, p.refs());
  a.step(1e-3);
  a.step(1e-3);
  a.save_state(dir + "/opt.safetensors");
  q = p;  // same parameters as after two steps
  Optimizer c({}, q.refs());
  c.load_state(dir + "/opt.safetensors");
  EXPECT_EQ(c.steps(), 2);
  a.step(1e-3);
  c.step(1e-3);
  EXPECT_EQ(p.a, q.a);
  EXPECT_EQ(p.b, q.b);
  // Mismatches are clean errors naming the file.
  Params small = random_params(5);
  small.a.resize(3), small.ga.resize(3);
  Optimizer d({}, small.refs());
  EXPECT_NE(test::error_of([&] { d.load_state(dir + "/opt.safetensors"); }).find("opt.safetensors"), std::string::npos);
  Optimizer e({OptimizerKind::Sgd}, q.refs());
  EXPECT_THROW(e.load_state(dir + "/opt.safetensors"), Error);
  EXPECT_THROW(c.load_state(dir + "/missing.safetensors"), Error);
}

}  // namespace
}  // namespace tern
