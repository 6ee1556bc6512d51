// HF model directory -> Model: config.json + model.safetensors (or sharded index).
// Linears are either packed uint8 + weight_scale (quantization_config.quant_method
// "bitnet": autobitlinear multiplies by the scale, bitlinear divides) or float
// master weights ternarized at load.
#include <cmath>
#include <filesystem>
#include <optional>
#include <nlohmann/json.hpp>

#include "model/load_util.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/half.h"

namespace tern {

namespace {

using nlohmann::json;

const char* const kHfLinear[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

struct HfConfig {
  ModelConfig model;
  bool packed = false;
  bool scale_divides = false;  // linear_class "bitlinear"
  std::string linear_class;
};

int64_t get_int(const json& j, const std::string& key, const std::string& file, std::optional<int64_t> def = {}) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    fail("{}: field {}: missing", file, key);
  }
  if (!j[key].is_number_integer()) fail("{}: field {}: expected an integer", file, key);
  return j[key].get<int64_t>();
}

double get_num(const json& j, const std::string& key, const std::string& file, double def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) fail("{}: field {}: expected a number", file, key);
  return j[key].get<double>();
}

HfConfig read_config(const std::string& dir) {
  const std::string file = (std::filesystem::path(dir) / "config.json").string();
  json j = read_json_object(file);
  std::string model_type = j.value("model_type", "");
  bool arch_ok = model_type == "bitnet";
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"]) {
      if (a.is_string() && (a == "BitNetForCausalLM" || a == "BitnetForCausalLM")) arch_ok = true;
    }
  }
  if (!arch_ok) {
    fail("{}: field model_type: unknown architecture '{}' (tern reads BitNet models: model_type \"bitnet\" / BitNetForCausalLM)",
         file, model_type);
  }
  HfConfig c;
  ModelConfig& m = c.model;
  m.arch = "bitnet-b1.58";
  m.hidden = get_int(j, "hidden_size", file);
  m.ffn = get_int(j, "intermediate_size", file);
  m.n_layers = get_int(j, "num_hidden_layers", file);
  m.n_heads = get_int(j, "num_attention_heads", file);
  m.n_kv_heads = get_int(j, "num_key_value_heads", file, m.n_heads);
  m.vocab = get_int(j, "vocab_size", file);
  m.ctx = get_int(j, "max_position_embeddings", file, 4096);
  m.rope_theta = static_cast<float>(get_num(j, "rope_theta", file, 500000.0));
  m.rms_eps = static_cast<float>(get_num(j, "rms_norm_eps", file, 1e-5));
  if (m.n_heads <= 0) fail("{}: field num_attention_heads: must be positive", file);
  m.head_dim = get_int(j, "head_dim", file, m.hidden / m.n_heads);
  m.act = Activation::Relu2;
  if (j.contains("hidden_act")) {
    if (!j["hidden_act"].is_string()) fail("{}: field hidden_act: expected a string", file);
    m.act = parse_activation(j["hidden_act"].get<std::string>());
  }
  // transformers 5 writes rope_parameters {rope_theta, rope_type}; older configs a
  // top-level rope_theta and optional rope_scaling.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& rs = j[key];
    if (!rs.is_object()) fail("{}: field {}: expected an object", file, key);
    std::string type = rs.value("rope_type", rs.value("type", "default"));
    if (type != "default") fail("{}: field {}.rope_type: RoPE scaling '{}' is not supported", file, key, type);
    if (rs.contains("rope_theta")) m.rope_theta = static_cast<float>(get_num(rs, "rope_theta", file, m.rope_theta));
  }
  if (j.contains("tie_word_embeddings") && j["tie_word_embeddings"].is_boolean() && !j["tie_word_embeddings"].get<bool>()) {
    fail("{}: field tie_word_embeddings: untied output heads are not supported (BitNet b1.58 ties them)", file);
  }
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    if (!q.is_object()) fail("{}: field quantization_config: expected an object", file);
    std::string method = q.value("quant_method", "");
    if (method != "bitnet") fail("{}: field quantization_config.quant_method: '{}' is not supported (expected bitnet)", file, method);
    c.linear_class = q.value("linear_class", "bitlinear");
    std::string mode = q.value("quantization_mode", "offline");
    if (c.linear_class != "autobitlinear" && c.linear_class != "bitlinear") {
      fail("{}: field quantization_config.linear_class: unknown class '{}' (expected autobitlinear or bitlinear)", file, c.linear_class);
    }
    if (mode != "offline" && mode != "online") {
      fail("{}: field quantization_config.quantization_mode: unknown mode '{}'", file, mode);
    }
    // bitlinear is always packed; autobitlinear is packed offline, float online.
    c.packed = c.linear_class == "bitlinear" || mode == "offline";
    c.scale_divides = c.linear_class == "bitlinear";
  }
  return c;
}

FloatType float_type_of(const st::TensorInfo& t) {
  switch (t.dtype) {
    case st::DType::F32: return FloatType::F32;
    case st::DType::F16: return FloatType::F16;
    case st::DType::BF16: return FloatType::BF16;
    default: fail("{}: tensor {}: dtype {} where a float type (F32, F16, BF16) is expected", t.file, t.name, st::dtype_name(t.dtype));
  }
}

void expect_shape(const st::TensorInfo& t, std::vector<int64_t> want) {
  std::vector<int64_t> got(t.shape.begin(), t.shape.end());
  if (got != want) {
    auto str = [](const std::vector<int64_t>& v) {
      std::string s;
      for (int64_t d : v) s += (s.empty() ? "" : ", ") + std::to_string(d);
      return "[" + s + "]";
    };
    fail("{}: tensor {}: shape {}, expected {}", t.file, t.name, str(got), str(want));
  }
}

std::vector<float> read_vector(const st::Reader& r, const std::string& name, int64_t n, const std::string& dir) {
  const st::TensorInfo& t = r.get(name, dir);
  expect_shape(t, {n});
  return to_f32(float_type_of(t), t.data, n);
}

// Linear `name` (its tensor t) as a TernaryMatrix in memory.
TernaryMatrix repack_linear(const st::Reader& r, const HfConfig& c, const st::TensorInfo& t, const std::string& name, int64_t rows,
                            int64_t cols, const std::string& dir) {
  if (t.dtype == st::DType::U8) {
    expect_shape(t, {(rows + 3) / 4, cols});
    const st::TensorInfo& s = r.get(name + ".weight_scale", dir);
    if (s.n_elements() != 1) fail("{}: tensor {}: expected one element, found {}", s.file, s.name, s.n_elements());
    float scale = to_f32(float_type_of(s), s.data, 1)[0];
    if (!(scale > 0) || !std::isfinite(scale)) fail("{}: tensor {}: scale {} is not a positive finite number", s.file, s.name, scale);
    if (c.scale_divides) scale = 1.0f / scale;
    std::vector<int8_t> w = unpack_hf(std::span<const uint8_t>(t.data, t.nbytes), rows, cols);
    return make_ternary(w, rows, cols, scale);
  }
  if (c.packed) {
    fail("{}: tensor {}: dtype {} but quantization_config says the weights are packed (expected U8)", t.file, t.name,
         st::dtype_name(t.dtype));
  }
  expect_shape(t, {rows, cols});
  std::vector<float> f = to_f32(float_type_of(t), t.data, rows * cols);
  float scale = 0;
  std::vector<int8_t> w = ternarize_absmean(f, &scale);
  return make_ternary(w, rows, cols, scale);
}

TernaryMatrix read_linear(const st::Reader& r, const HfConfig& c, const std::string& name, int64_t rows, int64_t cols,
                          const std::string& dir) {
  const st::TensorInfo& t = r.get(name + ".weight", dir);
  TernaryMatrix m = repack_linear(r, c, t, name, rows, cols, dir);
  // Repacked into memory, so its mapped pages are not read again (mapped_file.h release).
  for (const auto& f : r.files()) f->release(t.data, t.nbytes);
  return m;
}

}  // namespace

Model load_hf(const std::string& dir, const LoadOptions& opts) {
  HfConfig hc = read_config(dir);
  ModelConfig& c = hc.model;
  if (opts.activation) c.act = *opts.activation;
  c.validate(dir + "/config.json");
  auto reader = std::make_shared<st::Reader>(st::Reader::open_dir(dir, opts.mmap ? FileAccess::Map : FileAccess::Read));
  const st::Reader& r = *reader;

  Model m;
  m.path = dir;
  m.config = c;
  const st::TensorInfo& e = r.get("model.embed_tokens.weight", dir);
  expect_shape(e, {c.vocab, c.hidden});
  m.embedding.type = float_type_of(e);
  m.embedding.rows = c.vocab;
  m.embedding.cols = c.hidden;
  m.embedding.data = e.data;
  m.embedding.owner = reader;
  m.files = r.files();
  m.output_norm = read_vector(r, "model.norm.weight", c.hidden, dir);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer l;
    l.attn_norm = read_vector(r, p + "input_layernorm.weight", c.hidden, dir);
    l.attn_sub_norm = read_vector(r, p + "self_attn.attn_sub_norm.weight", c.q_dim(), dir);
    l.ffn_norm = read_vector(r, p + "post_attention_layernorm.weight", c.hidden, dir);
    l.ffn_sub_norm = read_vector(r, p + "mlp.ffn_sub_norm.weight", c.ffn, dir);
    const int64_t shapes[7][2] = {{c.q_dim(), c.hidden}, {c.kv_dim(), c.hidden}, {c.kv_dim(), c.hidden}, {c.hidden, c.q_dim()},
                                  {c.ffn, c.hidden},     {c.ffn, c.hidden},     {c.hidden, c.ffn}};
    for (int j = 0; j < 7; ++j) layer_linear(l, j) = read_linear(r, hc, p + kHfLinear[j], shapes[j][0], shapes[j][1], dir);
    m.layers.push_back(std::move(l));
  }
  uint64_t total = 0;
  for (const st::TensorInfo& t : r.tensors()) {
    std::string type = st::dtype_name(t.dtype);
    if (t.dtype == st::DType::U8) type += " (hf packed ternary)";
    m.tensors.push_back({t.name, type, std::vector<int64_t>(t.shape.begin(), t.shape.end()), t.nbytes});
    total += t.nbytes;
  }
  m.file_bytes = total;
  const std::string tok = (std::filesystem::path(dir) / "tokenizer.json").string();
  if (std::filesystem::exists(tok)) {
    m.tokenizer = load_tokenizer_json(tok);
    if (static_cast<int64_t>(m.tokenizer.tokens.size()) > c.vocab) {
      fail("{}: {} tokens but config.json vocab_size is {}", tok, m.tokenizer.tokens.size(), c.vocab);
    }
  }
  m.weight_type = hc.packed ? "hf packed" : float_type_name(float_type_of(r.get("model.layers.0.self_attn.q_proj.weight", dir)));
  m.source_format = hc.packed ? "hf safetensors (packed uint8, " + hc.linear_class + ")"
                              : "hf safetensors (float master weights, ternarized at load)";
  check_model_shapes(m, dir);
  return m;
}

}  // namespace tern
