// Engine flags shared by the commands that run a model (generate, chat, logits,
// perplexity): the LM head's precision.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "runtime/engine.h"
#include "tern/error.h"

namespace tern::cli {

// --lm-head f16|int8. "f16" names the exact head whatever the checkpoint stores
// (F16, BF16 or F32): it is the default, and what every reference comparison uses.
inline void add_lm_head_option(CLI::App& app, std::string& value) {
  if (value.empty()) value = "f16";
  app.add_option("--lm-head", value,
                 "LM head precision: f16 (exact, in the model's stored F16/BF16/F32) or int8 (per-row int8: faster, not exact)")
      ->check(CLI::IsMember({"f16", "int8"}))
      ->capture_default_str();
}

inline LmHead parse_lm_head(const std::string& s) {
  if (s == "f16" || s.empty()) return LmHead::Exact;
  if (s == "int8") return LmHead::Int8;
  fail("--lm-head: unknown value '{}' (expected f16 or int8)", s);
}

}  // namespace tern::cli
