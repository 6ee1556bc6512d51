// The in-memory BitNet model every engine runs: config read from the checkpoint,
// ternary linears in the engines' layout, float norms, the (tied) embedding in its
// stored precision, and the tokenizer data the checkpoint carries.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/ternary.h"
#include "util/mapped_file.h"

namespace tern {

enum class Activation { Relu2, Silu, Gelu };
std::string activation_name(Activation a);
Activation parse_activation(const std::string& s);  // "relu2", "silu", "gelu"; throws

struct ModelConfig {
  std::string arch = "bitnet-b1.58";
  int64_t hidden = 0;
  int64_t ffn = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab = 0;
  int64_t ctx = 4096;
  float rope_theta = 500000.0f;
  float rms_eps = 1e-5f;
  Activation act = Activation::Relu2;

  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t q_dim() const { return n_heads * head_dim; }
  // Throws tern::Error (prefixed with `where`) if shapes are inconsistent or absurd.
  void validate(const std::string& where) const;
};

enum class FloatType { F32, F16, BF16 };
std::string float_type_name(FloatType t);

// A float matrix kept in its stored precision (the 2B model's embedding is 657 MB as
// F16; widening it to F32 would double the LM head's memory traffic).
struct FloatMatrix {
  FloatType type = FloatType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  std::shared_ptr<const void> owner;

  void row_to_f32(int64_t r, float* out) const;
  float at(int64_t r, int64_t c) const;
  size_t nbytes() const;
};

struct TokenizerData {
  std::string model;           // "gpt2" (byte-level BPE)
  std::string pre;             // GGUF tokenizer.ggml.pre, "" if absent (= llama-bpe)
  std::vector<std::string> tokens;   // by id, byte-level unicode form
  std::vector<int32_t> token_types;  // GGUF token types (1 normal, 3 control, ...); may be empty
  std::vector<std::string> merges;   // "a b" in rank order
  int32_t bos = -1;
  int32_t eos = -1;
  int32_t eot = -1;
  bool add_bos = true;
  std::string chat_template;
  bool empty() const { return tokens.empty(); }
};

// microsoft/bitnet-b1.58-2B-4T's chat template (tokenizer_config.json): "Role: content<|eot_id|>"
// per message and "Assistant: " as the generation prompt. It renders no BOS: HF adds it
// when tokenizing the rendered text, and so do we. Used for synthetic models and as the
// fallback when a checkpoint carries none.
extern const char* const kBitNetChatTemplate;

struct TensorSummary {
  std::string name;
  std::string type;            // "i2_s", "bf16", "u8 (hf packed)", ...
  std::vector<int64_t> shape;  // [rows, cols] style, outermost first
  uint64_t bytes = 0;
};

struct Layer {
  std::vector<float> attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
  TernaryMatrix q, k, v, o, gate, up, down;
};

struct Model {
  ModelConfig config;
  FloatMatrix embedding;  // [vocab, hidden]; also the LM head (tied)
  std::vector<float> output_norm;
  std::vector<Layer> layers;
  TokenizerData tokenizer;
  std::string path;
  std::string source_format;  // "gguf v3 (i2_s)", "hf safetensors (packed, autobitlinear)", ...
  std::string weight_type;    // how the linears were stored: "i2_s", "tq2_0", "hf packed", "bf16", ...
  std::vector<TensorSummary> tensors;
  uint64_t file_bytes = 0;
  // The files the weights were mapped or read from (the CPU engine settles mapped ones in
  // 2 MB pages: MappedFile::settle_in_huge_pages).
  std::vector<std::shared_ptr<MappedFile>> files;
};

struct LoadOptions {
  std::optional<Activation> activation;  // overrides the file (--activation)
  // false (--no-mmap): weights read into anonymous memory instead of mapped from the file
  // (util/mapped_file.h FileAccess says when that is faster).
  bool mmap = true;
};

// A GGUF file or an HF model directory (config.json + safetensors). Throws tern::Error.
Model load_model(const std::string& path, const LoadOptions& opts = {});
Model load_gguf(const std::string& path, const LoadOptions& opts);
Model load_hf(const std::string& dir, const LoadOptions& opts);

// Just the tokenizer of a GGUF file, an HF directory, or a tokenizer.json (no weights).
TokenizerData load_tokenizer_data(const std::string& path);
// "BitNet b1.58 2B (30 layers, 2560 dim, i2_s ternary weights)"
std::string describe_model(const Model& m);

enum class SaveType { I2_S, TQ2_0, TQ1_0 };
SaveType parse_save_type(const std::string& s);  // "i2_s", "tq2_0", "tq1_0"; throws
// Writes a GGUF (arch "bitnet-b1.58") with tokenizer metadata and chat template.
void save_gguf(const Model& m, const std::string& path, SaveType type);
// Writes an HF directory: config.json, model.safetensors (packed uint8 + weight_scale,
// autobitlinear), tokenizer.json and tokenizer_config.json.
void save_hf_packed(const Model& m, const std::string& dir);

// Random-weight model of a given shape (tern synth): real ternary weights, F16
// embedding, byte-level tokenizer.
//   Sharp: uniform ternary codes with per-tensor scales in [0.5, 2], norm weights
//     1 + N(0, 0.2^2), embedding N(0, 1): large activations and sharp attention, the
//     hard case for kernels and the inference tests.
//   Hf: what a freshly initialised HF BitNet model quantizes to (weights N(0, 0.02^2)
//     through the absmean quantizer: codes 0 with p = 0.31, scale 0.02 sqrt(2/pi)),
//     norm weights 1, embedding N(0, 0.02^2): logits of order 1 and sane gradients, a
//     base for fine-tuning runs and the same shape peft's reference model has.
enum class SynthInit { Sharp, Hf };
SynthInit parse_synth_init(const std::string& s);  // "sharp" | "hf"; throws
Model synth_model(const ModelConfig& cfg, uint64_t seed, SynthInit init = SynthInit::Sharp);
// "2b-4t", "tiny" or "H,FF,L,NH,NKV,V".
ModelConfig parse_shape(const std::string& s);

}  // namespace tern
