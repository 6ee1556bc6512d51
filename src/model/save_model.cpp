// Model -> GGUF (i2_s / tq2_0 / tq1_0) and Model -> HF packed directory.
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/gguf.h"
#include "model/load_util.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/half.h"

namespace tern {

namespace {

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> embedding_bytes(const FloatMatrix& e, FloatType want) {
  const int64_t n = e.rows * e.cols;
  std::vector<uint8_t> out(n * (want == FloatType::F32 ? 4 : 2));
  if (want == e.type) {
    std::memcpy(out.data(), e.data, out.size());
    return out;
  }
  std::vector<float> row(e.cols);
  for (int64_t r = 0; r < e.rows; ++r) {
    e.row_to_f32(r, row.data());
    for (int64_t c = 0; c < e.cols; ++c) {
      int64_t i = r * e.cols + c;
      if (want == FloatType::F32) {
        std::memcpy(out.data() + 4 * i, &row[c], 4);
      } else {
        uint16_t h = want == FloatType::F16 ? f32_to_f16(row[c]) : f32_to_bf16(row[c]);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
    }
  }
  return out;
}

void add_tokenizer(gguf::Writer& w, const TokenizerData& t) {
  if (t.empty()) return;
  w.set("tokenizer.ggml.model", gguf::Value::of_str(t.model.empty() ? "gpt2" : t.model));
  w.set("tokenizer.ggml.pre", gguf::Value::of_str(t.pre.empty() ? "llama-bpe" : t.pre));
  w.set("tokenizer.ggml.tokens", gguf::Value::of_strs(t.tokens));
  std::vector<int64_t> types(t.token_types.begin(), t.token_types.end());
  if (types.empty()) types.assign(t.tokens.size(), 1);
  w.set("tokenizer.ggml.token_type", gguf::Value::of_i32s(types));
  w.set("tokenizer.ggml.merges", gguf::Value::of_strs(t.merges));
  if (t.bos >= 0) w.set("tokenizer.ggml.bos_token_id", gguf::Value::of_u32(t.bos));
  if (t.eos >= 0) w.set("tokenizer.ggml.eos_token_id", gguf::Value::of_u32(t.eos));
  if (t.eot >= 0) w.set("tokenizer.ggml.eot_token_id", gguf::Value::of_u32(t.eot));
  w.set("tokenizer.ggml.add_bos_token", gguf::Value::of_bool(t.add_bos));
  if (!t.chat_template.empty()) w.set("tokenizer.chat_template", gguf::Value::of_str(t.chat_template));
}

std::vector<uint8_t> pack_linear(const TernaryMatrix& m, SaveType type) {
  std::vector<int8_t> w = unpack_ternary(m);
  switch (type) {
    case SaveType::I2_S: return pack_i2s(w, m.scale);
    case SaveType::TQ2_0: return pack_tq2_0(w, m.rows, m.cols, m.scale);
    case SaveType::TQ1_0: return pack_tq1_0(w, m.rows, m.cols, m.scale);
  }
  return {};
}

}  // namespace

void save_gguf(const Model& m, const std::string& path, SaveType type) {
  const ModelConfig& c = m.config;
  const char* gguf_linear[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  // bitnet.cpp reads I2_S under "bitnet-b1.58"; mainline llama.cpp reads TQ types under "bitnet".
  const std::string arch = type == SaveType::I2_S ? "bitnet-b1.58" : "bitnet";
  const gguf::Type ttype = type == SaveType::I2_S ? gguf::Type::I2_S : type == SaveType::TQ2_0 ? gguf::Type::TQ2_0 : gguf::Type::TQ1_0;
  if (type != SaveType::I2_S && (c.hidden % 256 != 0 || c.ffn % 256 != 0 || c.q_dim() % 256 != 0)) {
    fail("{}: {} needs every row length to be a multiple of 256 (hidden {}, ffn {})", path,
         type == SaveType::TQ2_0 ? "tq2_0" : "tq1_0", c.hidden, c.ffn);
  }
  gguf::Writer w;
  w.set("general.architecture", gguf::Value::of_str(arch));
  w.set("general.name", gguf::Value::of_str("BitNet b1.58"));
  w.set(arch + ".vocab_size", gguf::Value::of_u32(static_cast<uint32_t>(c.vocab)));
  w.set(arch + ".context_length", gguf::Value::of_u32(static_cast<uint32_t>(c.ctx)));
  w.set(arch + ".embedding_length", gguf::Value::of_u32(static_cast<uint32_t>(c.hidden)));
  w.set(arch + ".block_count", gguf::Value::of_u32(static_cast<uint32_t>(c.n_layers)));
  w.set(arch + ".feed_forward_length", gguf::Value::of_u32(static_cast<uint32_t>(c.ffn)));
  w.set(arch + ".attention.head_count", gguf::Value::of_u32(static_cast<uint32_t>(c.n_heads)));
  w.set(arch + ".attention.head_count_kv", gguf::Value::of_u32(static_cast<uint32_t>(c.n_kv_heads)));
  w.set(arch + ".attention.layer_norm_rms_epsilon", gguf::Value::of_f32(c.rms_eps));
  w.set(arch + ".rope.freq_base", gguf::Value::of_f32(c.rope_theta));
  w.set(arch + ".rope.dimension_count", gguf::Value::of_u32(static_cast<uint32_t>(c.head_dim)));
  // Mainline llama.cpp assumes SiLU for "bitnet" unless told: say relu2 explicitly.
  if (arch == "bitnet") w.set(arch + ".hidden_activation", gguf::Value::of_str(activation_name(c.act)));
  add_tokenizer(w, m.tokenizer);

  w.add_tensor("token_embd.weight", {static_cast<uint64_t>(c.hidden), static_cast<uint64_t>(c.vocab)}, gguf::Type::F16,
               embedding_bytes(m.embedding, FloatType::F16));
  w.add_tensor("output_norm.weight", {static_cast<uint64_t>(c.hidden)}, gguf::Type::F32, f32_bytes(m.output_norm));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const Layer& l = m.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    auto vec = [&](const char* name, const std::vector<float>& v) {
      w.add_tensor(p + name, {static_cast<uint64_t>(v.size())}, gguf::Type::F32, f32_bytes(v));
    };
    vec("attn_norm.weight", l.attn_norm);
    vec("attn_sub_norm.weight", l.attn_sub_norm);
    vec("ffn_norm.weight", l.ffn_norm);
    vec("ffn_sub_norm.weight", l.ffn_sub_norm);
    for (int j = 0; j < 7; ++j) {
      const TernaryMatrix& t = layer_linear(l, j);
      w.add_tensor(p + gguf_linear[j] + ".weight", {static_cast<uint64_t>(t.cols), static_cast<uint64_t>(t.rows)}, ttype,
                   pack_linear(t, type));
    }
  }
  w.write(path);
}

void save_hf_packed(const Model& m, const std::string& dir) {
  namespace fs = std::filesystem;
  const ModelConfig& c = m.config;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create directory: {}", dir, ec.message());
  const char* hf_linear[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  st::Writer w;
  auto u64 = [](int64_t v) { return static_cast<uint64_t>(v); };
  auto bf16_vec = [](const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) {
      uint16_t h = f32_to_bf16(v[i]);
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
    return b;
  };
  // Norms stay F32 so converting GGUF -> HF is lossless; transformers casts on load.
  auto f32_vec = [&](const std::string& name, const std::vector<float>& v) { w.add(name, st::DType::F32, {u64(v.size())}, f32_bytes(v)); };
  st::DType edt = m.embedding.type == FloatType::F32 ? st::DType::F32 : m.embedding.type == FloatType::F16 ? st::DType::F16 : st::DType::BF16;
  w.add("model.embed_tokens.weight", edt, {u64(c.vocab), u64(c.hidden)}, embedding_bytes(m.embedding, m.embedding.type));
  f32_vec("model.norm.weight", m.output_norm);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const Layer& l = m.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    f32_vec(p + "input_layernorm.weight", l.attn_norm);
    f32_vec(p + "self_attn.attn_sub_norm.weight", l.attn_sub_norm);
    f32_vec(p + "post_attention_layernorm.weight", l.ffn_norm);
    f32_vec(p + "mlp.ffn_sub_norm.weight", l.ffn_sub_norm);
    for (int j = 0; j < 7; ++j) {
      const TernaryMatrix& t = layer_linear(l, j);
      std::vector<int8_t> dense = unpack_ternary(t);
      w.add(p + hf_linear[j] + ".weight", st::DType::U8, {u64((t.rows + 3) / 4), u64(t.cols)}, pack_hf(dense, t.rows, t.cols));
      // bf16 when exact (like Microsoft's checkpoint), else f32 so nothing is lost.
      bool bf16_exact = bf16_to_f32(f32_to_bf16(t.scale)) == t.scale;
      if (bf16_exact) {
        w.add(p + hf_linear[j] + ".weight_scale", st::DType::BF16, {1}, bf16_vec({t.scale}));
      } else {
        w.add(p + hf_linear[j] + ".weight_scale", st::DType::F32, {1}, f32_bytes({t.scale}));
      }
    }
  }
  w.set_metadata("format", "pt");
  nlohmann::ordered_json j;
  j["architectures"] = {"BitNetForCausalLM"};
  j["model_type"] = "bitnet";
  j["hidden_size"] = c.hidden;
  j["intermediate_size"] = c.ffn;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab;
  j["max_position_embeddings"] = c.ctx;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_eps;
  j["hidden_act"] = activation_name(c.act);
  j["tie_word_embeddings"] = true;
  j["torch_dtype"] = "bfloat16";
  if (m.tokenizer.bos >= 0) j["bos_token_id"] = m.tokenizer.bos;
  if (m.tokenizer.eos >= 0) j["eos_token_id"] = m.tokenizer.eos;
  j["quantization_config"] = {{"quant_method", "bitnet"}, {"linear_class", "autobitlinear"}, {"quantization_mode", "offline"}};
  // Tensors first, config last: a directory with a config.json is complete.
  w.write((fs::path(dir) / "model.safetensors").string());
  if (!m.tokenizer.empty()) {
    write_file_atomic((fs::path(dir) / "tokenizer.json").string(), to_tokenizer_json(m.tokenizer));
    write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), to_tokenizer_config_json(m.tokenizer));
  }
  write_file_atomic((fs::path(dir) / "config.json").string(), j.dump(2) + "\n");
}

}  // namespace tern
