// Every checkpoint format of the same random BitNet model against HF transformers'
// float32 logits (tests/fixtures/tiny, made by tools/make_fixtures.py on the GPU
// machine): relative L2 < 1e-3 and the same argmax at every position.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/model.h"
#include "runtime/engine.h"
#include "engine_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/npy.h"

namespace tern {
namespace {

const std::string kDir = std::string(TERN_FIXTURES) + "/tiny";

std::vector<int32_t> fixture_tokens() {
  std::string s = read_text_file(kDir + "/tokens.txt");
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ',')) ids.push_back(std::stoi(t));
  return ids;
}

std::vector<float> tern_logits(const Model& m, int64_t step) { return test::cpu_logits(m, fixture_tokens(), step); }

void check(const std::string& model, const std::string& reference) {
  SCOPED_TRACE(model);
  Model m = load_model(kDir + "/" + model);
  NpyArray ref = read_npy_f32(kDir + "/" + reference);
  ASSERT_EQ(ref.shape.size(), 2u);
  ASSERT_EQ(ref.shape[1], m.config.vocab);
  ASSERT_EQ(ref.shape[0], static_cast<int64_t>(fixture_tokens().size()));
  test::expect_logits_match(tern_logits(m, ref.shape[0]), ref.data, m.config.vocab, 1e-3, model + " prefill");
  test::expect_logits_match(tern_logits(m, 1), ref.data, m.config.vocab, 1e-3, model + " decode");
}

TEST(Fixtures, HfPackedAutobitlinear) { check("hf_packed", "logits_packed.npy"); }
TEST(Fixtures, HfPackedBitlinearDividesScale) { check("hf_packed_bitlinear", "logits_bitlinear.npy"); }
TEST(Fixtures, HfBf16MasterTernarizedAtLoad) { check("hf_bf16", "logits_bf16.npy"); }
TEST(Fixtures, GgufI2S) { check("model-i2_s.gguf", "logits_gguf.npy"); }
TEST(Fixtures, GgufTQ2_0) { check("model-tq2_0.gguf", "logits_gguf.npy"); }
TEST(Fixtures, GgufTQ1_0) { check("model-tq1_0.gguf", "logits_gguf.npy"); }

// Our own converter's output must still match transformers.
TEST(Fixtures, ConvertedFromHfToEveryGgufType) {
  test::TempDir dir;
  Model hf = load_model(kDir + "/hf_packed");
  NpyArray ref = read_npy_f32(kDir + "/logits_gguf.npy");
  for (auto [name, type] : {std::pair{"i2_s", SaveType::I2_S}, {"tq2_0", SaveType::TQ2_0}, {"tq1_0", SaveType::TQ1_0}}) {
    std::string path = dir.file(std::string(name) + ".gguf");
    save_gguf(hf, path, type);
    Model g = load_model(path);
    EXPECT_EQ(g.tokenizer.tokens, hf.tokenizer.tokens);
    EXPECT_EQ(g.tokenizer.chat_template, hf.tokenizer.chat_template);
    test::expect_logits_match(tern_logits(g, 64), ref.data, g.config.vocab, 1e-3, std::string("converted ") + name);
  }
}

TEST(Fixtures, ConfigReadFromFiles) {
  for (const char* model : {"hf_packed", "model-i2_s.gguf", "model-tq1_0.gguf"}) {
    Model m = load_model(kDir + "/" + model);
    EXPECT_EQ(m.config.hidden, 256) << model;
    EXPECT_EQ(m.config.ffn, 512) << model;
    EXPECT_EQ(m.config.n_layers, 2) << model;
    EXPECT_EQ(m.config.n_heads, 4) << model;
    EXPECT_EQ(m.config.n_kv_heads, 2) << model;
    EXPECT_EQ(m.config.vocab, 512) << model;
    EXPECT_FLOAT_EQ(m.config.rope_theta, 500000.0f) << model;
    EXPECT_EQ(m.config.act, Activation::Relu2) << model;
    EXPECT_EQ(m.tokenizer.bos, 509) << model;
  }
}

// Both tokenizer sources (tokenizer.json, GGUF metadata) give HF tokenizers' ids.
TEST(Fixtures, TokenizerMatchesHf) {
  auto samples = nlohmann::json::parse(read_text_file(kDir + "/tokenizer_samples.json"));
  for (const char* model : {"hf_packed", "model-i2_s.gguf"}) {
    Model m = load_model(kDir + "/" + model);
    Tokenizer tok(m.tokenizer);
    for (const auto& s : samples) {
      std::string text = s["text"];
      std::vector<int32_t> want = s["ids"];
      EXPECT_EQ(tok.encode(text, true), want) << model << ": " << text;
    }
  }
}

}  // namespace
}  // namespace tern
