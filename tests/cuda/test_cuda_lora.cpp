// LoRA adapters at inference on the CUDA engine (lora.cu) against the CPU engine's LoRA
// path: prefill, decode (fused into the GEMV epilogues), chunks and batched decode, with
// two stacked adapters. Skipped without a GPU.
#include <gtest/gtest.h>

#include <memory>

#include "cuda_test_util.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "test_util.h"
#include "train/lora_adapter.h"

namespace tern {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

const std::string kTiny = std::string(TERN_FIXTURES) + "/tiny";

std::vector<float> run(Engine& e, const std::vector<int32_t>& toks, size_t step) { return test::run_all_logits(e, toks, step); }

std::unique_ptr<Engine> engine(const Model& m, const std::string& backend, const std::vector<LoraRef>& loras, int n_seq = 1) {
  EngineOptions eo;
  eo.backend = backend;
  eo.ctx = 64;
  eo.n_seq = n_seq;
  eo.loras = loras;
  return make_engine(m, eo);
}

void check_model(const Model& m, const std::string& what) {
  const std::vector<Proj> all = {Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down};
  auto a1 = std::make_shared<LoraAdapter>(random_lora_adapter(m.config, 4, 8.0f, all, 11, 0.02f));
  auto a2 = std::make_shared<LoraAdapter>(random_lora_adapter(m.config, 2, 2.0f, {Proj::V, Proj::Down}, 12, 0.02f));
  const std::vector<LoraRef> loras = {{a1, 1.0f}, {a2, 0.5f}};
  std::vector<int32_t> toks;
  for (int i = 0; i < 24; ++i) toks.push_back(static_cast<int32_t>((i * 97 + 5) % m.config.vocab));
  const size_t V = m.config.vocab;
  auto cpu = engine(m, "cpu", loras);
  const auto want = run(*cpu, toks, toks.size());
  auto base = engine(m, "cpu", {});
  const auto plain = run(*base, toks, toks.size());
  const double effect = test::rel_l2(want.data(), plain.data(), want.size());
  std::printf("[info] %s: the adapters move the logits by rel L2 %.3g\n", what.c_str(), effect);
  ASSERT_GT(effect, 1e-3) << "adapters too weak for this test to see them";
  auto g = engine(m, "cuda", loras);
  test::expect_logits_match(run(*g, toks, toks.size()), want, V, 2e-3, what + " cuda prefill vs cpu");
  g->reset();
  test::expect_logits_match(run(*g, toks, 1), want, V, 2e-3, what + " cuda decode vs cpu");
  g->reset();
  test::expect_logits_match(run(*g, toks, 5), want, V, 2e-3, what + " cuda chunks of 5 vs cpu");
  // Batched decode: 3 sequences with the same tokens after different prompts.
  auto gb = engine(m, "cuda", loras, 3);
  const size_t P = 6;
  for (int s = 0; s < 3; ++s) gb->forward(s, std::span<const int32_t>(toks.data(), P), nullptr, Logits::None);
  std::vector<float> got((toks.size() - P) * V * 3);
  for (size_t i = P; i < toks.size(); ++i) {
    const std::vector<int> seqs = {2, 0, 1};
    const std::vector<int32_t> t3 = {toks[i], toks[i], toks[i]};
    std::vector<float> lg(3 * V);
    gb->decode(seqs, t3, lg.data(), nullptr);
    for (int r = 0; r < 3; ++r) {
      test::expect_logits_match(std::vector<float>(lg.begin() + r * V, lg.begin() + (r + 1) * V),
                                std::vector<float>(want.begin() + i * V, want.begin() + (i + 1) * V), V, 2e-3,
                                what + " batched row " + std::to_string(r) + " pos " + std::to_string(i));
    }
  }
}

TEST(CudaLora, MatchesCpuWithStackedAdapters) {
  SKIP_WITHOUT_GPU();
  check_model(load_model(kTiny + "/model-i2_s.gguf"), "tiny i2_s");
  check_model(test::tamed("256,512,2,4,2,300", 3), "tamed 256");
}

}  // namespace
}  // namespace tern
