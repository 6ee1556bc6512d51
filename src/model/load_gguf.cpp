// GGUF -> Model. Architectures: "bitnet-b1.58" and "bitnet-25" (bitnet.cpp, I2_S) and
// "bitnet" (mainline llama.cpp, TQ1_0/TQ2_0). Linear types: I2_S, TQ2_0, TQ1_0, and
// F32/F16/BF16 ternarized at load with the absmean rule.
#include <cmath>
#include <cstring>

#include "model/gguf.h"
#include "model/load_util.h"
#include "model/model.h"
#include "tern/error.h"

namespace tern {

namespace {

const char* const kGgufLinear[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

struct GgufLoader {
  const gguf::Reader& r;
  const std::string& path;

  std::string key(const std::string& arch, const char* k) const { return arch + "." + k; }

  const gguf::TensorInfo& tensor(const std::string& name) const {
    const gguf::TensorInfo* t = r.find_tensor(name);
    if (t == nullptr) fail("{}: tensor {}: missing", path, name);
    return *t;
  }

  // ne is ggml order: ne[0] = columns.
  void expect_shape(const gguf::TensorInfo& t, int64_t rows, int64_t cols) const {
    bool ok = (t.ne.size() == 2 && static_cast<int64_t>(t.ne[0]) == cols && static_cast<int64_t>(t.ne[1]) == rows) ||
              (rows == 1 && t.ne.size() == 1 && static_cast<int64_t>(t.ne[0]) == cols);
    if (!ok) {
      std::string got;
      for (uint64_t d : t.ne) got += (got.empty() ? "" : ", ") + std::to_string(d);
      fail("{}: tensor {}: shape (ggml ne) [{}], expected [{}, {}]", path, t.name, got, cols, rows);
    }
  }

  FloatType float_type(const gguf::TensorInfo& t) const {
    switch (static_cast<gguf::Type>(t.type)) {
      case gguf::Type::F32: return FloatType::F32;
      case gguf::Type::F16: return FloatType::F16;
      case gguf::Type::BF16: return FloatType::BF16;
      default: fail("{}: tensor {}: type {} where a float type (f32, f16, bf16) is expected", path, t.name, gguf::type_name(t.type));
    }
  }

  std::vector<float> vector(const std::string& name, int64_t n) const {
    const gguf::TensorInfo& t = tensor(name);
    expect_shape(t, 1, n);
    return to_f32(float_type(t), t.data, n);
  }

  // A linear repacked into memory no longer needs its bytes in the map (mapped_file.h release).
  TernaryMatrix repacked(const gguf::TensorInfo& t, TernaryMatrix m) const {
    if (r.mapping()) r.mapping()->release(t.data, t.nbytes);
    return m;
  }

  TernaryMatrix linear(const std::string& name, int64_t rows, int64_t cols) const {
    const gguf::TensorInfo& t = tensor(name);
    expect_shape(t, rows, cols);
    const int64_t n = rows * cols;
    std::span<const uint8_t> bytes(t.data, t.nbytes);
    switch (static_cast<gguf::Type>(t.type)) {
      case gguf::Type::I2_S: {
        float scale = 0;
        if (cols % kTernBlock == 0) {
          // Same block layout as the engines': use the mapping in place.
          std::memcpy(&scale, t.data + n / 4, 4);
          TernaryMatrix m;
          m.rows = rows;
          m.cols = cols;
          m.row_bytes = cols / 4;
          m.scale = scale;
          m.data = t.data;
          m.owner = r.mapping();
          check_scale(name, scale);
          return m;
        }
        std::vector<int8_t> w = unpack_i2s(bytes, n, &scale);
        check_scale(name, scale);
        return repacked(t, make_ternary(w, rows, cols, scale));
      }
      case gguf::Type::TQ2_0:
      case gguf::Type::TQ1_0: {
        std::vector<float> block_scales;
        std::vector<int8_t> w = static_cast<gguf::Type>(t.type) == gguf::Type::TQ2_0
                                    ? unpack_tq2_0(bytes, rows, cols, &block_scales)
                                    : unpack_tq1_0(bytes, rows, cols, &block_scales);
        float scale = common_block_scale(block_scales, w, 256, path + ": tensor " + name);
        check_scale(name, scale);
        return repacked(t, make_ternary(w, rows, cols, scale));
      }
      case gguf::Type::F32:
      case gguf::Type::F16:
      case gguf::Type::BF16: {
        std::vector<float> f = to_f32(float_type(t), t.data, n);
        float scale = 0;
        std::vector<int8_t> w = ternarize_absmean(f, &scale);
        return repacked(t, make_ternary(w, rows, cols, scale));
      }
      default:
        fail("{}: tensor {}: unsupported type {} for a ternary linear (expected i2_s, tq2_0, tq1_0, f32, f16 or bf16)",
             path, name, gguf::type_name(t.type));
    }
  }

  void check_scale(const std::string& name, float s) const {
    if (!(s > 0) || !std::isfinite(s)) fail("{}: tensor {}: weight scale {} is not a positive finite number", path, name, s);
  }
};

}  // namespace

TokenizerData read_gguf_tokenizer(const gguf::Reader& r) {
  TokenizerData t;
  if (r.find("tokenizer.ggml.tokens") == nullptr) return t;
  auto strs = [&](const char* k) -> std::vector<std::string> {
    const gguf::Value* v = r.find(k);
    if (v == nullptr) return {};
    if (v->type != gguf::ValueType::ARRAY || v->elem_type != gguf::ValueType::STRING) {
      fail("{}: metadata key {}: expected an array of strings", r.path(), k);
    }
    return v->strs;
  };
  t.model = r.find("tokenizer.ggml.model") ? r.get_string("tokenizer.ggml.model") : "gpt2";
  t.pre = r.find("tokenizer.ggml.pre") ? r.get_string("tokenizer.ggml.pre") : "";
  t.tokens = strs("tokenizer.ggml.tokens");
  t.merges = strs("tokenizer.ggml.merges");
  if (const gguf::Value* v = r.find("tokenizer.ggml.token_type")) {
    if (v->type != gguf::ValueType::ARRAY || v->ints.size() != t.tokens.size()) {
      fail("{}: metadata key tokenizer.ggml.token_type: expected an integer array of {} entries", r.path(), t.tokens.size());
    }
    t.token_types.assign(v->ints.begin(), v->ints.end());
  }
  auto id = [&](const char* k) -> int32_t {
    if (r.find(k) == nullptr) return -1;
    uint64_t v = r.get_uint(k);
    if (v >= t.tokens.size()) fail("{}: metadata key {}: token id {} is outside the vocabulary ({})", r.path(), k, v, t.tokens.size());
    return static_cast<int32_t>(v);
  };
  t.bos = id("tokenizer.ggml.bos_token_id");
  t.eos = id("tokenizer.ggml.eos_token_id");
  t.eot = id("tokenizer.ggml.eot_token_id");
  if (t.eot < 0) {
    for (size_t i = 0; i < t.tokens.size(); ++i) {
      if (t.tokens[i] == "<|eot_id|>") t.eot = static_cast<int32_t>(i);
    }
  }
  t.add_bos = r.find("tokenizer.ggml.add_bos_token") ? r.get_bool("tokenizer.ggml.add_bos_token") : true;
  t.chat_template = r.find("tokenizer.chat_template") ? r.get_string("tokenizer.chat_template") : "";
  return t;
}


Model load_gguf(const std::string& path, const LoadOptions& opts) {
  gguf::Reader r = gguf::Reader::open(path, opts.mmap ? FileAccess::Map : FileAccess::Read);
  GgufLoader L{r, path};
  Model m;
  m.path = path;
  m.file_bytes = r.mapping() ? r.mapping()->size() : 0;
  if (r.mapping()) m.files.push_back(r.mapping());

  const std::string arch = r.get_string("general.architecture");
  if (arch != "bitnet-b1.58" && arch != "bitnet-25" && arch != "bitnet") {
    fail("{}: metadata key general.architecture: unknown architecture '{}' (tern reads bitnet-b1.58, bitnet-25, bitnet)",
         path, arch);
  }
  ModelConfig& c = m.config;
  c.arch = arch;
  c.hidden = static_cast<int64_t>(r.get_uint(arch + ".embedding_length"));
  c.ffn = static_cast<int64_t>(r.get_uint(arch + ".feed_forward_length"));
  c.n_layers = static_cast<int64_t>(r.get_uint(arch + ".block_count"));
  c.n_heads = static_cast<int64_t>(r.get_uint(arch + ".attention.head_count"));
  c.n_kv_heads = r.find(arch + ".attention.head_count_kv") ? static_cast<int64_t>(r.get_uint(arch + ".attention.head_count_kv"))
                                                            : c.n_heads;
  c.ctx = r.find(arch + ".context_length") ? static_cast<int64_t>(r.get_uint(arch + ".context_length")) : 4096;
  c.rms_eps = r.find(arch + ".attention.layer_norm_rms_epsilon")
                  ? static_cast<float>(r.get_float(arch + ".attention.layer_norm_rms_epsilon"))
                  : 1e-5f;
  c.rope_theta = r.find(arch + ".rope.freq_base") ? static_cast<float>(r.get_float(arch + ".rope.freq_base")) : 10000.0f;
  if (c.n_heads <= 0 || c.hidden % c.n_heads != 0) {
    fail("{}: metadata key {}.attention.head_count: {} does not divide embedding_length {}", path, arch, c.n_heads, c.hidden);
  }
  c.head_dim = c.hidden / c.n_heads;
  if (r.find(arch + ".rope.dimension_count")) {
    int64_t rd = static_cast<int64_t>(r.get_uint(arch + ".rope.dimension_count"));
    if (rd != c.head_dim) fail("{}: metadata key {}.rope.dimension_count: partial RoPE ({} of {}) is not supported", path, arch, rd, c.head_dim);
  }
  const gguf::TensorInfo& embd = L.tensor("token_embd.weight");
  if (embd.ne.size() != 2) fail("{}: tensor token_embd.weight: expected 2 dimensions", path);
  c.vocab = r.find(arch + ".vocab_size") ? static_cast<int64_t>(r.get_uint(arch + ".vocab_size")) : static_cast<int64_t>(embd.ne[1]);
  // The FFN activation: explicit key (mainline llama.cpp's BitNet arch), else relu^2,
  // which every BitNet b1.58 model uses.
  c.act = Activation::Relu2;
  if (r.find(arch + ".hidden_activation")) c.act = parse_activation(r.get_string(arch + ".hidden_activation"));
  if (opts.activation) c.act = *opts.activation;
  c.validate(path);

  L.expect_shape(embd, c.vocab, c.hidden);
  m.embedding.type = L.float_type(embd);
  m.embedding.rows = c.vocab;
  m.embedding.cols = c.hidden;
  m.embedding.data = embd.data;
  m.embedding.owner = r.mapping();
  if (r.find_tensor("output.weight") != nullptr) {
    fail("{}: tensor output.weight: a separate (untied) output head is not supported; BitNet b1.58 ties it to token_embd", path);
  }
  m.output_norm = L.vector("output_norm.weight", c.hidden);

  std::string linear_type;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    Layer l;
    l.attn_norm = L.vector(p + "attn_norm.weight", c.hidden);
    l.attn_sub_norm = L.vector(p + "attn_sub_norm.weight", c.q_dim());
    l.ffn_norm = L.vector(p + "ffn_norm.weight", c.hidden);
    l.ffn_sub_norm = L.vector(p + "ffn_sub_norm.weight", c.ffn);
    const int64_t shapes[7][2] = {{c.q_dim(), c.hidden}, {c.kv_dim(), c.hidden}, {c.kv_dim(), c.hidden}, {c.hidden, c.q_dim()},
                                  {c.ffn, c.hidden},     {c.ffn, c.hidden},     {c.hidden, c.ffn}};
    for (int j = 0; j < 7; ++j) {
      layer_linear(l, j) = L.linear(p + kGgufLinear[j] + ".weight", shapes[j][0], shapes[j][1]);
    }
    // Q/K rows are in HF order: llama.cpp and bitnet.cpp convert BitNet without the
    // LLaMA Q/K permutation and apply NeoX (rotate_half) RoPE to it (llama.cpp
    // llama_model_rope_type(): LLM_ARCH_BITNET -> LLAMA_ROPE_TYPE_NEOX).
    linear_type = gguf::type_name(L.tensor(p + "attn_q.weight").type);
    m.layers.push_back(std::move(l));
  }
  for (const gguf::TensorInfo& t : r.tensors()) {
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
    m.tensors.push_back({t.name, gguf::type_name(t.type), shape, t.nbytes});
  }
  m.tokenizer = read_gguf_tokenizer(r);
  if (!m.tokenizer.empty() && static_cast<int64_t>(m.tokenizer.tokens.size()) > c.vocab) {
    fail("{}: metadata key tokenizer.ggml.tokens: {} tokens but the vocabulary has {} rows", path, m.tokenizer.tokens.size(), c.vocab);
  }
  m.source_format = "gguf v" + std::to_string(r.version()) + " (" + linear_type + ")";
  m.weight_type = linear_type;
  check_model_shapes(m, path);
  return m;
}

}  // namespace tern
