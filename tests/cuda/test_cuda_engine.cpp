// The CUDA engine against the CPU engine: fixture models and a synthetic 2b-4t-shaped
// model (logits rel L2 < 2e-3, same argmax), prefill vs decode, greedy generation,
// reset / truncate and error handling. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "model/model.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "cuda_test_util.h"
#include "test_util.h"

namespace tern {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

const std::string kTiny = std::string(TERN_FIXTURES) + "/tiny";

std::vector<int32_t> fixture_tokens() {
  std::ifstream in(kTiny + "/tokens.txt");
  std::string s;
  std::getline(in, s);
  std::vector<int32_t> t;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) t.push_back(std::stoi(part));
  return t;
}

std::vector<int32_t> some_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

std::unique_ptr<Engine> engine(const Model& m, const std::string& backend, int64_t ctx) {
  return test::make_test_engine(m, backend, ctx);
}

// Logits of every position, `step` tokens per forward call.
std::vector<float> run(Engine& e, const std::vector<int32_t>& toks, size_t step) { return test::run_all_logits(e, toks, step); }

std::vector<float> run(const Model& m, const std::string& backend, const std::vector<int32_t>& toks, size_t step) {
  auto e = engine(m, backend, static_cast<int64_t>(toks.size()));
  return run(*e, toks, step);
}

TEST(CudaEngine, BackendSelection) {
  Model m = synth_model(parse_shape("256,512,2,4,2,300"), 1);
  if (!cuda_available()) {
    EXPECT_THROW(engine(m, "cuda", 8), Error);
    EXPECT_EQ(engine(m, "auto", 8)->name().rfind("cpu", 0), 0u);
    return;
  }
  EXPECT_EQ(engine(m, "cuda", 8)->name().rfind("cuda", 0), 0u);
  EXPECT_EQ(engine(m, "auto", 8)->name().rfind("cuda", 0), 0u);
}

TEST(CudaEngine, FixtureModelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto toks = fixture_tokens();
  ASSERT_GE(toks.size(), 20u);
  for (const char* f : {"model-i2_s.gguf", "model-tq2_0.gguf", "model-tq1_0.gguf", "hf_packed", "hf_bf16"}) {
    Model m = load_model(kTiny + "/" + f);
    const size_t V = m.config.vocab;
    auto cpu = run(m, "cpu", toks, toks.size());
    auto prefill = run(m, "cuda", toks, toks.size());
    auto decode = run(m, "cuda", toks, 1);
    auto chunks = run(m, "cuda", toks, 7);
    test::expect_logits_match(prefill, cpu, V, 2e-3, std::string(f) + " cuda prefill vs cpu");
    test::expect_logits_match(decode, cpu, V, 2e-3, std::string(f) + " cuda decode vs cpu");
    test::expect_logits_match(chunks, cpu, V, 2e-3, std::string(f) + " cuda chunks of 7 vs cpu");
  }
}

using test::tamed;  // cuda_test_util.h: why the multi-position comparisons use tamed models

TEST(CudaEngine, PrefillDecodeAgreeOnSynthetic) {
  SKIP_WITHOUT_GPU();
  for (const char* shape : {"256,512,2,4,2,300", "384,1152,2,6,6,500", "512,1024,1,8,2,777", "512,1000,1,16,2,777"}) {
    Model m = tamed(shape, 7);
    auto toks = some_tokens(70, m.config.vocab, 3);
    auto cpu = run(m, "cpu", toks, toks.size());
    auto prefill = run(m, "cuda", toks, toks.size());
    auto decode = run(m, "cuda", toks, 1);
    auto chunks = run(m, "cuda", toks, 5);
    const size_t V = m.config.vocab;
    test::expect_logits_match(prefill, cpu, V, 2e-3, std::string(shape) + " prefill vs cpu");
    test::expect_logits_match(decode, cpu, V, 2e-3, std::string(shape) + " decode vs cpu");
    test::expect_logits_match(chunks, cpu, V, 2e-3, std::string(shape) + " chunks vs cpu");
  }
}

// Long context: decode attention splits the context over many blocks.
TEST(CudaEngine, LongDecodeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  Model m = tamed("256,512,1,4,2,300", 9);
  auto toks = some_tokens(700, m.config.vocab, 4);
  auto cpu = run(m, "cpu", toks, toks.size());
  auto e = engine(m, "cuda", 2048);  // 32 decode splits
  std::vector<float> got(toks.size() * m.config.vocab, NAN);
  const size_t V = m.config.vocab;
  e->forward(std::span<const int32_t>(toks.data(), 600), got.data(), Logits::All);  // 2 prefill chunks (512 + 88)
  for (size_t i = 600; i < toks.size(); ++i) e->forward(std::span<const int32_t>(&toks[i], 1), got.data() + i * V, Logits::All);
  test::expect_logits_match(got, cpu, V, 2e-3, "700 tokens, prefill 600 + decode 100");
}

// The real 2b-4t shape. Its random weights are chaotic (see above), so the untamed
// 30-layer model is compared where no attention rounding can differ: position 0, for
// several first tokens, through the decode path and through the prefill GEMMs (row 0).
// There the CUDA engine reproduces the CPU engine's hidden state bit for bit (only the
// LM head's summation order differs), provided the CPU build does not contract a*b+c
// into FMA: scripts/gpu-check builds with TERN_NATIVE=OFF. (One of these tokens hits an
// exact int8 rounding tie, 28.5, in layer 2: an fma in the residual add was enough to
// flip it and move the logits by 9 %.)
// Its 2-layer tamed cousin at the same widths checks every position.
TEST(CudaEngine, Synthetic2b4tMatchesCpu) {
  SKIP_WITHOUT_GPU();
  {
    Model m = synth_model(parse_shape("2b-4t"), 5);
    const size_t V = m.config.vocab;
    auto toks = some_tokens(4, m.config.vocab, 5);
    auto c = engine(m, "cpu", 8);
    auto g = engine(m, "cuda", 8);
    std::vector<float> want(V), got(V, NAN);
    for (int32_t t : toks) {
      c->reset();
      g->reset();
      c->forward(std::span<const int32_t>(&t, 1), want.data(), Logits::Last);
      g->forward(std::span<const int32_t>(&t, 1), got.data(), Logits::Last);
      test::expect_logits_match(got, want, V, 1e-4, "2b-4t position 0 (decode), token " + std::to_string(t));
    }
    std::vector<float> all_c(toks.size() * V), all_g(toks.size() * V, NAN);
    c->reset();
    g->reset();
    c->forward(toks, all_c.data(), Logits::All);
    g->forward(toks, all_g.data(), Logits::All);
    test::expect_logits_match(std::vector<float>(all_g.begin(), all_g.begin() + V), std::vector<float>(all_c.begin(), all_c.begin() + V),
                              V, 1e-4, "2b-4t position 0 (prefill of 4)");
    std::printf("[info] 2b-4t (untamed, chaotic) all 4 positions: rel L2 %.3g\n",
                test::rel_l2(all_g.data(), all_c.data(), all_c.size()));
  }
  {
    Model m = tamed("2560,6912,2,20,5,128256", 5);
    auto toks = some_tokens(8, m.config.vocab, 6);
    const size_t V = m.config.vocab;
    auto cpu = run(m, "cpu", toks, toks.size());
    auto e = engine(m, "cuda", 16);
    std::vector<float> got(toks.size() * V, NAN);
    e->forward(std::span<const int32_t>(toks.data(), 5), got.data(), Logits::All);
    for (size_t i = 5; i < toks.size(); ++i) e->forward(std::span<const int32_t>(&toks[i], 1), got.data() + i * V, Logits::All);
    test::expect_logits_match(got, cpu, V, 2e-3, "2b-4t widths, 2 layers, prefill 5 + decode 3");
  }
}

std::vector<int32_t> greedy(Engine& e, std::vector<int32_t> prompt, int n) {
  const size_t V = e.config().vocab;
  std::vector<float> lg(V);
  e.forward(prompt, lg.data(), Logits::Last);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    int32_t t = static_cast<int32_t>(test::argmax(lg.data(), V));
    out.push_back(t);
    e.forward(std::span<const int32_t>(&t, 1), lg.data(), Logits::Last);
  }
  return out;
}

TEST(CudaEngine, GreedyGenerationIdenticalToCpu) {
  SKIP_WITHOUT_GPU();
  Model m = load_model(kTiny + "/model-i2_s.gguf");
  auto toks = fixture_tokens();
  std::vector<int32_t> prompt(toks.begin(), toks.begin() + 8);
  auto c = engine(m, "cpu", 128);
  auto g = engine(m, "cuda", 128);
  EXPECT_EQ(greedy(*g, prompt, 64), greedy(*c, prompt, 64));
}

TEST(CudaEngine, ResetTruncateAndLastLogits) {
  SKIP_WITHOUT_GPU();
  Model m = synth_model(parse_shape("256,512,2,4,2,300"), 2);
  auto toks = some_tokens(12, m.config.vocab, 6);
  const size_t V = m.config.vocab;
  auto e = engine(m, "cuda", 32);
  auto first = run(*e, toks, 1);
  EXPECT_EQ(e->position(), 12);
  e->truncate(5);
  EXPECT_EQ(e->position(), 5);
  std::vector<float> again((toks.size() - 5) * V, NAN);
  for (size_t i = 5; i < toks.size(); ++i) e->forward(std::span<const int32_t>(&toks[i], 1), again.data() + (i - 5) * V, Logits::All);
  std::vector<float> want(first.begin() + 5 * V, first.end());
  EXPECT_EQ(again, want) << "decode after truncate must reproduce the same logits";
  e->truncate(100);
  EXPECT_EQ(e->position(), 12);
  e->reset();
  EXPECT_EQ(e->position(), 0);
  EXPECT_EQ(run(*e, toks, 1), first);
  // Last equals the last row of All.
  e->reset();
  std::vector<float> last(V, NAN);
  e->forward(toks, last.data(), Logits::Last);
  auto all = run(m, "cuda", toks, toks.size());
  test::expect_logits_match(last, std::vector<float>(all.end() - V, all.end()), V, 1e-6, "last vs all");
  // None writes nothing and still advances.
  e->reset();
  e->forward(toks, nullptr, Logits::None);
  EXPECT_EQ(e->position(), 12);
}

TEST(CudaEngine, ErrorsLeaveCacheIntact) {
  SKIP_WITHOUT_GPU();
  Model m = synth_model(parse_shape("256,512,2,4,2,300"), 5);
  auto e = engine(m, "cuda", 4);
  test::expect_errors_leave_cache_intact(*e);
}

TEST(CudaEngine, UnsupportedHeadDimIsACleanError) {
  SKIP_WITHOUT_GPU();
  Model m = synth_model(parse_shape("240,512,1,4,2,300"), 1);  // head_dim 60
  EXPECT_THROW(engine(m, "cuda", 8), Error);
}

// --cache-type f16 is a CPU option: the CUDA engine refuses it, naming the flag, and
// --backend auto takes the CPU for it.
TEST(CudaEngine, F16CacheIsACleanError) {
  SKIP_WITHOUT_GPU();
  Model m = synth_model(parse_shape("256,512,2,4,2,300"), 1);
  EngineOptions eo;
  eo.backend = "cuda";
  eo.ctx = 8;
  eo.kv_type = KvType::F16;
  try {
    make_engine(m, eo);
    ADD_FAILURE() << "the CUDA engine accepted an F16 cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--cache-type f16"), std::string::npos) << e.what();
  }
  eo.backend = "auto";
  EXPECT_EQ(make_engine(m, eo)->name().rfind("cpu", 0), 0u);
}

}  // namespace
}  // namespace tern

namespace tern {
namespace {

// Diagnostics (TERN_CUDA_DIAG=1): where along the layers the CUDA engine and the CPU
// engine part ways at position 0 on the untamed 2b-4t model, and whether the engine's
// first call matters. Prints, asserts nothing.
TEST(CudaDiag, Position0ByLayers) {
  if (std::getenv("TERN_CUDA_DIAG") == nullptr) GTEST_SKIP() << "set TERN_CUDA_DIAG=1";
  SKIP_WITHOUT_GPU();
  Model full = synth_model(parse_shape("2b-4t"), 5);
  const size_t V = full.config.vocab;
  auto toks = some_tokens(4, V, 5);
  std::vector<float> want(V), got(V);
  for (int L : {1, 2, 3, 4, 6, 8, 12, 16, 24, 30}) {
    Model m = full;
    m.layers.resize(L);
    m.config.n_layers = L;
    auto c = engine(m, "cpu", 8);
    auto g = engine(m, "cuda", 8);
    std::printf("[diag] layers %2d:", L);
    for (int32_t t : toks) {
      c->reset();
      g->reset();
      c->forward(std::span<const int32_t>(&t, 1), want.data(), Logits::Last);
      g->forward(std::span<const int32_t>(&t, 1), got.data(), Logits::Last);
      std::printf("  tok %d rel %.3g am %zu/%zu", t, test::rel_l2(got.data(), want.data(), V), test::argmax(got.data(), V),
                  test::argmax(want.data(), V));
    }
    std::printf("\n");
  }
  // First call vs later call on one engine.
  auto c = engine(full, "cpu", 8);
  auto g = engine(full, "cuda", 8);
  c->forward(std::span<const int32_t>(&toks[0], 1), want.data(), Logits::Last);
  for (int rep = 0; rep < 2; ++rep) {
    g->reset();
    g->forward(std::span<const int32_t>(&toks[0], 1), got.data(), Logits::Last);
    std::printf("[diag] 30 layers tok %d call %d rel %.3g\n", toks[0], rep, test::rel_l2(got.data(), want.data(), V));
  }
}

}  // namespace
}  // namespace tern
