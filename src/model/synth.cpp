// Random-weight models of any shape (tern synth): lets anyone test and benchmark
// without downloading a checkpoint.
#include <algorithm>
#include <cmath>

#include "model/load_util.h"
#include "model/model.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "util/half.h"
#include "util/parse.h"
#include "util/rng.h"

namespace tern {

namespace {

using Rng = SplitMix64;

// A scale that bf16 and fp16 both hold exactly, so every output format (HF bf16
// weight_scale, I2_S f32, TQ fp16) stores the very same model.
float exact_scale(Rng& rng) { return bf16_to_f32(f32_to_bf16(0.5f + 1.5f * rng.uniform_f())); }

TernaryMatrix random_ternary(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<int8_t> w(rows * cols);
  for (auto& x : w) x = static_cast<int8_t>(static_cast<int>(rng.next() % 3) - 1);
  return make_ternary(w, rows, cols, exact_scale(rng));
}

// An N(0, 0.02^2) weight through the absmean quantizer (HF AutoBitLinear):
// round(w / mean|w|) = round(z * sqrt(pi/2)), clamped to [-1, 1].
TernaryMatrix hf_ternary(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<int8_t> w(rows * cols);
  for (auto& x : w) x = static_cast<int8_t>(std::clamp(std::nearbyint(rng.normal_f() * 1.2533141f), -1.0f, 1.0f));
  return make_ternary(w, rows, cols, bf16_to_f32(f32_to_bf16(0.02f * 0.7978846f)));
}

std::vector<float> random_norm(Rng& rng, int64_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = bf16_to_f32(f32_to_bf16(1.0f + 0.2f * rng.normal_f()));
  return v;
}

}  // namespace

ModelConfig parse_shape(const std::string& s) {
  ModelConfig c;
  if (s == "2b-4t") {  // microsoft/bitnet-b1.58-2B-4T config.json
    c.hidden = 2560, c.ffn = 6912, c.n_layers = 30, c.n_heads = 20, c.n_kv_heads = 5, c.vocab = 128256;
  } else if (s == "tiny") {
    c.hidden = 256, c.ffn = 512, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab = 512;
  } else {
    std::vector<int64_t> v = parse_int_list(s, "--shape (2b-4t, tiny or H,FF,L,NH,NKV,V)", 1, int64_t{1} << 24);
    if (v.size() != 6) fail("--shape: expected 2b-4t, tiny or six numbers H,FF,L,NH,NKV,V; got '{}'", s);
    c.hidden = v[0], c.ffn = v[1], c.n_layers = v[2], c.n_heads = v[3], c.n_kv_heads = v[4], c.vocab = v[5];
    if (c.n_heads <= 0 || c.hidden % c.n_heads != 0) fail("--shape: heads {} must divide hidden {}", c.n_heads, c.hidden);
  }
  c.head_dim = c.hidden / c.n_heads;
  c.ctx = 4096;
  c.validate("--shape " + s);
  if (c.vocab < 260) fail("--shape: vocab {} is too small (at least 260: 256 bytes and the special tokens)", c.vocab);
  return c;
}

SynthInit parse_synth_init(const std::string& s) {
  if (s == "sharp") return SynthInit::Sharp;
  if (s == "hf") return SynthInit::Hf;
  fail("--init: unknown initialisation '{}' (expected sharp or hf)", s);
}

Model synth_model(const ModelConfig& cfg, uint64_t seed, SynthInit init) {
  cfg.validate("synth");
  Rng rng{seed * 0x2545f4914f6cdd1dull + 1};
  Model m;
  m.config = cfg;
  m.path = "(synthetic)";
  m.source_format = "synthetic (seed " + std::to_string(seed) + (init == SynthInit::Hf ? ", hf init" : "") + ")";
  m.weight_type = "synthetic";
  auto emb = std::make_shared<std::vector<uint16_t>>(cfg.vocab * cfg.hidden);
  const bool hf = init == SynthInit::Hf;
  for (auto& h : *emb) h = f32_to_f16((hf ? 0.02f : 1.0f) * rng.normal_f());
  m.embedding = {FloatType::F16, cfg.vocab, cfg.hidden, emb->data(), emb};
  auto norm = [&](int64_t n) { return hf ? std::vector<float>(n, 1.0f) : random_norm(rng, n); };
  auto ternary = [&](int64_t rows, int64_t cols) { return hf ? hf_ternary(rng, rows, cols) : random_ternary(rng, rows, cols); };
  m.output_norm = norm(cfg.hidden);
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    Layer l;
    l.attn_norm = norm(cfg.hidden);
    l.attn_sub_norm = norm(cfg.q_dim());
    l.ffn_norm = norm(cfg.hidden);
    l.ffn_sub_norm = norm(cfg.ffn);
    l.q = ternary(cfg.q_dim(), cfg.hidden);
    l.k = ternary(cfg.kv_dim(), cfg.hidden);
    l.v = ternary(cfg.kv_dim(), cfg.hidden);
    l.o = ternary(cfg.hidden, cfg.q_dim());
    l.gate = ternary(cfg.ffn, cfg.hidden);
    l.up = ternary(cfg.ffn, cfg.hidden);
    l.down = ternary(cfg.hidden, cfg.ffn);
    m.layers.push_back(std::move(l));
  }
  m.tokenizer = synth_tokenizer(cfg.vocab);
  m.tokenizer.chat_template = kBitNetChatTemplate;
  check_model_shapes(m, "synth");
  return m;
}

}  // namespace tern
