// LoRA adapters in HF peft's on-disk format, shared by training (tern finetune) and
// inference (--lora). peft's LoraLayer computes, for a frozen linear with float input x,
//   y = base(x) + scaling * B(A(dropout(x))),  scaling = alpha / r (alpha / sqrt(r) with
//   use_rslora),
// and for BitNet the base is the ternary BitLinear while the LoRA branch sees the float
// input before the activation quantizer (BITNET_FACTS "Quantization math").
// Files: ADAPTER_DIR/adapter_config.json (peft_type "LORA", r, lora_alpha, lora_dropout,
// target_modules, use_rslora, ...) and ADAPTER_DIR/adapter_model.safetensors with tensors
//   base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight  [r, in]
//   base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_B.weight  [out, r]
//   base_model.model.model.layers.{i}.mlp.{gate,up,down}_proj.lora_{A,B}.weight
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/model.h"

namespace tern {

enum class Proj { Q = 0, K, V, O, Gate, Up, Down };
constexpr int kProjCount = 7;
const char* proj_name(Proj p);  // "q_proj", ..., "down_proj" (peft's target_modules names)
std::optional<Proj> parse_proj(const std::string& name);  // the inverse; nullopt if unknown
// "q_proj,v_proj" or "all" (peft's "all-linear" too) -> projections; throws naming --targets.
std::vector<Proj> parse_lora_targets(const std::string& s);
// {out, in} of projection p in a model of config c (q: {q_dim, hidden}, ...).
std::pair<int64_t, int64_t> proj_shape(const ModelConfig& c, Proj p);
// peft's tensor name: "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight".
std::string peft_tensor_name(int64_t layer, Proj p, bool b);

// One adapted linear: A [rank][in], B [out][rank], row-major float32.
struct LoraWeights {
  int64_t in = 0, out = 0;
  std::vector<float> A, B;
};

struct LoraAdapter {
  int rank = 0;
  float alpha = 0.0f;
  float dropout = 0.0f;
  bool rslora = false;
  // layers[l][p] is set when projection p of layer l is adapted.
  std::vector<std::array<std::optional<LoraWeights>, kProjCount>> layers;
  std::string source;  // the directory it was loaded from, for messages ("" if made in memory)
  float scaling() const;  // alpha / rank, or alpha / sqrt(rank) with rslora
  bool targets(Proj p) const;  // adapted in at least one layer
};

// Reads ADAPTER_DIR (adapter_config.json + adapter_model.safetensors, F32/F16/BF16) and
// checks it against the model it will be applied to. Throws tern::Error naming the file
// and the field or tensor. Refuses what tern cannot apply exactly (DoRA, regex
// target_modules, rank/alpha patterns, layers_to_transform, biases, modules_to_save).
LoraAdapter load_peft_adapter(const std::string& dir, const ModelConfig& c);
// Writes ADAPTER_DIR (created if needed) as peft does for a LORA CAUSAL_LM adapter, the
// tensors in F32. Each file goes through a temp file + rename. Every adapted projection
// must be adapted in every layer (peft's target_modules cannot say otherwise).
void save_peft_adapter(const LoraAdapter& a, const std::string& dir, const std::string& base_model_name);
// A fresh adapter on `targets` in every layer: A ~ uniform(-1/sqrt(in), 1/sqrt(in)) (peft's
// kaiming_uniform(a=sqrt(5)) bound), B = 0 when b_std == 0 (so it starts as the base
// model, as peft does), else normal(0, b_std). Deterministic in seed.
LoraAdapter random_lora_adapter(const ModelConfig& c, int rank, float alpha, const std::vector<Proj>& targets, uint64_t seed,
                                float b_std);
// Throws tern::Error (prefixed with `where`) unless every adapted projection has the
// model's shapes and the adapter's rank, and the layer count matches.
void check_lora_adapter(const LoraAdapter& a, const ModelConfig& c, const std::string& where);

}  // namespace tern
