// Engine flags shared by the commands that run a model (generate, chat, logits,
// perplexity, bench): the LM head's precision, the KV cache's type and LoRA adapters.
#pragma once
#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "tern/error.h"
#include "train/lora_adapter.h"

namespace tern::cli {

// An option taking one of `choices`, the first the default.
inline void add_choice_option(CLI::App& app, const std::string& name, std::string& value, const std::vector<std::string>& choices,
                              const std::string& help) {
  if (value.empty()) value = choices.front();
  app.add_option(name, value, help)->check(CLI::IsMember(choices))->capture_default_str();
}

// --lm-head f16|int8. "f16" names the exact head whatever the checkpoint stores
// (F16, BF16 or F32): it is the default, and what every reference comparison uses.
inline void add_lm_head_option(CLI::App& app, std::string& value) {
  add_choice_option(app, "--lm-head", value, {"f16", "int8"},
                    "LM head precision: f16 (exact, in the model's stored F16/BF16/F32) or int8 (per-row int8: faster, not exact)");
}

inline LmHead parse_lm_head(const std::string& s) {
  if (s == "f16" || s.empty()) return LmHead::Exact;
  if (s == "int8") return LmHead::Int8;
  fail("--lm-head: unknown value '{}' (expected f16 or int8)", s);
}

// --cache-type f32|f16 (CPU backend): the KV cache's element type.
inline void add_cache_type_option(CLI::App& app, std::string& value) {
  add_choice_option(app, "--cache-type", value, {"f32", "f16"},
                    "KV cache type: f32 (exact) or f16 (CPU: half the cache memory, K and V rounded to F16 as stored)");
}

inline KvType parse_cache_type(const std::string& s) {
  if (s == "f32" || s.empty()) return KvType::F32;
  if (s == "f16") return KvType::F16;
  fail("--cache-type: unknown value '{}' (expected f32 or f16)", s);
}

// --lora DIR[:scale], repeatable: peft LoRA adapters added on top of the model in the
// order given (scale multiplies the adapter's own alpha / r; default 1).
inline void add_lora_option(CLI::App& app, std::vector<std::string>& specs) {
  app.add_option("--lora", specs, "LoRA adapter directory (HF peft format), DIR or DIR:SCALE (default scale 1); repeatable")
      ->allow_extra_args(false);
}

// "DIR" or "DIR:SCALE" -> (dir, scale). A directory whose own name holds ':' is taken whole.
inline std::pair<std::string, float> parse_lora_spec(const std::string& spec) {
  std::error_code ec;
  const size_t colon = spec.rfind(':');
  if (colon == std::string::npos || std::filesystem::is_directory(spec, ec)) return {spec, 1.0f};
  const std::string dir = spec.substr(0, colon), num = spec.substr(colon + 1);
  if (dir.empty()) fail("--lora: '{}' names no directory (expected DIR or DIR:SCALE)", spec);
  float scale = 0;
  try {
    size_t used = 0;
    scale = std::stof(num, &used);
    if (used != num.size()) throw std::invalid_argument(num);
  } catch (const std::exception&) {
    fail("--lora: scale '{}' in '{}' is not a number (expected DIR or DIR:SCALE)", num, spec);
  }
  if (!std::isfinite(scale)) fail("--lora: scale '{}' in '{}' is not finite", num, spec);
  return {dir, scale};
}

// Loads every --lora adapter and checks it against the model it will run on.
inline std::vector<LoraRef> load_loras(const std::vector<std::string>& specs, const ModelConfig& c) {
  std::vector<LoraRef> refs;
  for (const std::string& spec : specs) {
    auto [dir, scale] = parse_lora_spec(spec);
    refs.push_back({std::make_shared<const LoraAdapter>(load_peft_adapter(dir, c)), scale});
  }
  return refs;
}

}  // namespace tern::cli
