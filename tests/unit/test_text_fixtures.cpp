// Tokenizer, chat template, perplexity and greedy generation against HF outputs made
// by tools/make_text_fixtures.py on the GPU machine (tests/fixtures/text).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/perplexity.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

namespace tern {
namespace {

using nlohmann::json;
const std::string kText = std::string(TERN_FIXTURES) + "/text";
const std::string kTiny = std::string(TERN_FIXTURES) + "/tiny";

json load_json(const std::string& path) { return json::parse(read_text_file(path)); }

// The real LLaMA-3 tokenizer.json is fetched (sha256-checked) by scripts/fetch-tokenizer.sh,
// which scripts/test.sh runs; it is not committed (9 MB).
std::string llama3_tokenizer_path() {
  if (const char* p = std::getenv("TERN_LLAMA3_TOKENIZER")) return p;
  return std::string(TERN_FIXTURES) + "/../../.cache/llama3/tokenizer.json";
}

void check_corpus(const Tokenizer& tok, const json& corpus, bool with_variants) {
  int checked = 0;
  for (const auto& s : corpus) {
    const std::string text = s["text"];
    const std::vector<int32_t> ids = s["ids"];
    EXPECT_EQ(tok.encode(text, false), ids) << "text: " << json(text).dump();
    if (with_variants) {
      if (!s["ids_no_special"].is_null()) {
        const std::vector<int32_t> plain = s["ids_no_special"];
        EXPECT_EQ(tok.encode(text, false, false), plain) << "no-special text: " << json(text).dump();
      }
      EXPECT_EQ(tok.decode(ids), text) << "decode: " << json(text).dump();
    }
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST(TextFixtures, Llama3TokenizerMatchesHfOnCorpus) {
  const std::string path = llama3_tokenizer_path();
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing: run scripts/fetch-tokenizer.sh";
  Tokenizer tok(load_tokenizer_json(path));
  EXPECT_EQ(tok.vocab_size(), 128256);
  check_corpus(tok, load_json(kText + "/tokenizer_corpus.json"), true);
}

TEST(TextFixtures, TruncatedVocabularyTokenizerMatchesHf) {
  Tokenizer tok(load_tokenizer_json(kText + "/tokenizer_trunc.json"));
  EXPECT_EQ(tok.vocab_size(), 3256);
  check_corpus(tok, load_json(kText + "/tokenizer_trunc_corpus.json"), false);
}

TEST(TextFixtures, ChatTemplatesMatchTransformers) {
  const std::string path = llama3_tokenizer_path();
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing: run scripts/fetch-tokenizer.sh";
  Tokenizer tok(load_tokenizer_json(path));
  for (const auto& c : load_json(kText + "/chat_templates.json")) {
    ChatTemplate tmpl(c["template"].get<std::string>());
    ChatTemplateInputs in;
    for (const auto& m : c["messages"]) in.messages.push_back({m["role"], m["content"]});
    in.add_generation_prompt = c["add_generation_prompt"];
    in.bos_token = c["bos_token"];
    in.eos_token = c["eos_token"];
    const std::string rendered = tmpl.render(in);
    EXPECT_EQ(rendered, c["rendered"].get<std::string>()) << c["template_name"] << " / " << c["conversation"];
    EXPECT_EQ(tok.encode(rendered, false), c["ids"].get<std::vector<int32_t>>()) << c["template_name"];
  }
}

TEST(TextFixtures, PerplexityMatchesTransformers) {
  json f = load_json(kText + "/tiny_model.json");
  Model m = load_model(kTiny + "/hf_packed");
  Tokenizer tok(m.tokenizer);
  std::vector<int32_t> ids = tok.encode(read_text_file(kText + "/" + f["ppl_file"].get<std::string>()), true);
  ASSERT_EQ(ids, f["tokens"].get<std::vector<int32_t>>());
  EngineOptions eo;
  eo.ctx = 64;
  eo.threads = 2;
  auto e = make_cpu_engine(m, eo);
  PerplexityResult chunks = perplexity(*e, ids, 64, 0, m.tokenizer.bos, nullptr);
  const double want_chunks = f["perplexity_llama"]["ppl"];
  EXPECT_NEAR(chunks.ppl, want_chunks, want_chunks * 1e-3);
  EXPECT_EQ(chunks.n_scored, f["perplexity_llama"]["n_scored"].get<int64_t>());
  PerplexityResult sliding = perplexity(*e, ids, 64, 32, m.tokenizer.bos, nullptr);
  const double want_sliding = f["perplexity_sliding"]["ppl"];
  EXPECT_NEAR(sliding.ppl, want_sliding, want_sliding * 1e-3);
}

TEST(TextFixtures, GreedyContinuationMatchesTransformers) {
  json f = load_json(kText + "/tiny_model.json");
  for (const char* path : {"hf_packed", "model-i2_s.gguf"}) {
    Model m = load_model(kTiny + "/" + path);
    Tokenizer tok(m.tokenizer);
    for (const auto& g : f["greedy"]) {
      std::vector<int32_t> prompt = tok.encode(g["prompt"].get<std::string>(), true);
      ASSERT_EQ(prompt, g["prompt_ids"].get<std::vector<int32_t>>());
      EngineOptions eo;
      eo.ctx = 128;
      auto e = make_cpu_engine(m, eo);
      GenerateOptions go;
      go.n_predict = 40;
      go.sampling.temp = 0;
      go.stop_tokens = f["eos_ids"].get<std::vector<int32_t>>();
      GenerateResult r = generate(*e, tok, prompt, go, [](std::string_view) {});
      EXPECT_EQ(r.tokens, g["new_ids"].get<std::vector<int32_t>>()) << path << ": " << g["prompt"];
    }
  }
}

}  // namespace
}  // namespace tern
