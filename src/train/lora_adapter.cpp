// LoRA adapters: peft's adapter directory format (read and written), random init, and
// the shape checks every consumer (engines, training) relies on. peft is the reference:
// an adapter saved here loads in peft (PeftModel.from_pretrained) and vice versa.
#include "train/lora_adapter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/load_util.h"
#include "model/safetensors.h"
#include "tern/error.h"
#include "util/atomic_file.h"
#include "util/rng.h"

namespace tern {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
constexpr const char* kPrefix = "base_model.model.model.layers.";
// The module path of each projection inside a decoder layer (HF BitNet / LLaMA names).
const char* const kModule[kProjCount] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                         "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
const char* const kProjName[kProjCount] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

std::string shape_str(int64_t a, int64_t b) { return fmt::format("[{}, {}]", a, b); }

using Rng = SplitMix64;  // util/rng.h

// --- adapter_config.json ---------------------------------------------------------

struct PeftConfig {
  int rank = 8;  // peft's LoraConfig defaults for absent fields
  float alpha = 8;
  float dropout = 0;
  bool rslora = false;
  std::array<bool, kProjCount> targets{};
};

bool is_set(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  if (it->is_boolean()) return it->get<bool>();
  if (it->is_array() || it->is_object() || it->is_string()) return !it->empty() && *it != "";
  return true;  // a number (layers_to_transform: 3)
}

bool get_bool(const json& j, const char* key, const std::string& file, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) fail("{}: field {}: expected true or false", file, key);
  return it->get<bool>();
}

double get_number(const json& j, const char* key, const std::string& file, double def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number() || !std::isfinite(it->get<double>())) fail("{}: field {}: expected a number", file, key);
  return it->get<double>();
}

void add_target(PeftConfig& pc, const std::string& name, const std::string& file) {
  if (name == "all-linear") {  // peft's shorthand: every linear but the output head
    pc.targets.fill(true);
    return;
  }
  std::optional<Proj> p = parse_proj(name);
  if (!p) {
    fail("{}: field target_modules: module '{}' is not supported (tern adapts q_proj, k_proj, v_proj, o_proj, gate_proj, "
         "up_proj and down_proj)",
         file, name);
  }
  pc.targets[static_cast<int>(*p)] = true;
}

PeftConfig read_peft_config(const std::string& file) {
  json j = read_json_object(file);
  const json* pt = j.contains("peft_type") ? &j["peft_type"] : nullptr;
  if (pt == nullptr || !pt->is_string()) fail("{}: field peft_type: missing or not a string (expected \"LORA\")", file);
  if (*pt != "LORA") fail("{}: field peft_type: '{}' is not supported (tern reads LORA adapters)", file, pt->get<std::string>());

  PeftConfig pc;
  if (j.contains("r") && !j["r"].is_null()) {
    if (!j["r"].is_number_integer() || j["r"].get<int64_t>() < 1 || j["r"].get<int64_t>() > 65536) {
      fail("{}: field r: expected a positive integer (the LoRA rank)", file);
    }
    pc.rank = static_cast<int>(j["r"].get<int64_t>());
  }
  pc.alpha = static_cast<float>(get_number(j, "lora_alpha", file, 8));
  pc.dropout = static_cast<float>(get_number(j, "lora_dropout", file, 0));
  if (pc.dropout < 0 || pc.dropout >= 1) fail("{}: field lora_dropout: {} is not in [0, 1)", file, pc.dropout);
  pc.rslora = get_bool(j, "use_rslora", file, false);

  // Variants that change the math: refused rather than silently applied as plain LoRA.
  if (get_bool(j, "fan_in_fan_out", file, false)) {
    fail("{}: field fan_in_fan_out: true is not supported (it is for GPT-2 style Conv1D layers; BitNet has none)", file);
  }
  if (j.contains("bias") && !j["bias"].is_null() && j["bias"] != "none") {
    fail("{}: field bias: '{}' is not supported (tern applies bias-free LoRA: \"none\")", file, j["bias"].dump());
  }
  for (const char* key : {"use_dora", "lora_bias", "use_qalora"}) {
    if (get_bool(j, key, file, false)) fail("{}: field {}: true is not supported (plain LoRA only)", file, key);
  }
  const std::pair<const char*, const char*> unsupported[] = {
      {"layers_to_transform", "tern adapts every layer"},
      {"rank_pattern", "tern applies one rank to every module"},
      {"alpha_pattern", "tern applies one alpha to every module"},
      {"modules_to_save", "tern reads only LoRA matrices, no fully trained modules"},
      {"layer_replication", "tern does not replicate layers"},
      {"exclude_modules", "list the adapted modules in target_modules instead"},
      {"target_parameters", "tern adapts linear modules only"},
      {"trainable_token_indices", "tern does not train embedding rows"},
      {"alora_invocation_tokens", "activated LoRA applies from invocation tokens on; tern applies LoRA everywhere"},
      {"arrow_config", "tern applies one adapter per --lora, without routing"},
  };
  for (const auto& [key, why] : unsupported) {
    if (is_set(j, key)) fail("{}: field {}: {} is not supported ({})", file, key, j[key].dump(), why);
  }

  if (!j.contains("target_modules") || j["target_modules"].is_null()) fail("{}: field target_modules: missing", file);
  const json& tm = j["target_modules"];
  if (tm.is_string()) {
    const std::string s = tm.get<std::string>();
    // peft treats a string as a regular expression over full module paths; only the
    // plain-name cases are understood here.
    if (s != "all-linear" && !parse_proj(s)) {
      fail("{}: field target_modules: regular expression '{}' is not supported; list the module names instead "
           "([\"q_proj\", \"v_proj\", ...])",
           file, s);
    }
    add_target(pc, s, file);
  } else if (tm.is_array()) {
    for (const json& t : tm) {
      if (!t.is_string()) fail("{}: field target_modules: expected module names (strings), got {}", file, t.dump());
      add_target(pc, t.get<std::string>(), file);
    }
  } else {
    fail("{}: field target_modules: expected a list of module names", file);
  }
  bool any = false;
  for (bool t : pc.targets) any |= t;
  if (!any) fail("{}: field target_modules: empty", file);
  return pc;
}

// "base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight" -> (i, proj, is_B).
struct TensorKey {
  int64_t layer;
  Proj proj;
  bool b;
};

std::optional<TensorKey> parse_tensor_name(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  size_t i = std::strlen(kPrefix), digits = 0;
  int64_t layer = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && digits < 9) {
    layer = layer * 10 + (name[i++] - '0');
    ++digits;
  }
  if (digits == 0 || i >= name.size() || name[i] != '.') return std::nullopt;
  const std::string rest = name.substr(i + 1);
  for (int p = 0; p < kProjCount; ++p) {
    for (bool b : {false, true}) {
      if (rest == std::string(kModule[p]) + (b ? ".lora_B.weight" : ".lora_A.weight")) return TensorKey{layer, static_cast<Proj>(p), b};
    }
  }
  return std::nullopt;
}

std::vector<float> read_tensor(const st::TensorInfo& t, int64_t rows, int64_t cols, const std::string& why) {
  if (t.shape.size() != 2 || static_cast<int64_t>(t.shape[0]) != rows || static_cast<int64_t>(t.shape[1]) != cols) {
    std::string got;
    for (uint64_t d : t.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    fail("{}: tensor {}: shape [{}], expected {} ({})", t.file, t.name, got, shape_str(rows, cols), why);
  }
  FloatType ft;
  switch (t.dtype) {
    case st::DType::F32: ft = FloatType::F32; break;
    case st::DType::F16: ft = FloatType::F16; break;
    case st::DType::BF16: ft = FloatType::BF16; break;
    default: fail("{}: tensor {}: dtype {} is not supported (expected F32, F16 or BF16)", t.file, t.name, st::dtype_name(t.dtype));
  }
  std::vector<float> v = to_f32(ft, t.data, rows * cols);
  for (float x : v) {
    if (!std::isfinite(x)) fail("{}: tensor {}: holds a non-finite value ({})", t.file, t.name, x);
  }
  return v;
}

// Shapes and sizes that make an adapter usable at all (no model needed): what save
// checks before it writes anything.
void check_consistent(const LoraAdapter& a, const std::string& where) {
  if (a.rank < 1) fail("{}: rank {} must be positive", where, a.rank);
  if (!std::isfinite(a.alpha)) fail("{}: lora_alpha {} is not finite", where, a.alpha);
  if (a.layers.empty()) fail("{}: the adapter has no layers", where);
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      const auto& w = a.layers[l][p];
      if (!w) continue;
      if (w->in < 1 || w->out < 1 || w->A.size() != static_cast<size_t>(a.rank * w->in) ||
          w->B.size() != static_cast<size_t>(w->out * a.rank)) {
        fail("{}: layer {} {}: A has {} values and B {}, expected {} x {} and {} x {} (rank {})", where, l, kProjName[p], w->A.size(),
             w->B.size(), a.rank, w->in, w->out, a.rank, a.rank);
      }
    }
  }
}

// A float as JSON the way Python prints it: 0.05, not 0.05000000074505806.
json short_float(float f) { return std::stod(fmt::format("{}", f)); }
// lora_alpha is usually an integer in peft configs (lora_alpha=32).
json short_number(float f) {
  if (f == std::floor(f) && std::fabs(f) < 1e9f) return static_cast<int64_t>(f);
  return short_float(f);
}

}  // namespace

const char* proj_name(Proj p) {
  const int i = static_cast<int>(p);
  return i >= 0 && i < kProjCount ? kProjName[i] : "?";
}

std::vector<Proj> parse_lora_targets(const std::string& s) {
  std::vector<Proj> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    const std::string name = s.substr(b, e - b);
    b = e + 1;
    if (name.empty()) continue;
    if (name == "all" || name == "all-linear") {
      for (int p = 0; p < kProjCount; ++p) out.push_back(static_cast<Proj>(p));
      continue;
    }
    std::optional<Proj> p = parse_proj(name);
    if (!p) fail("--targets: unknown projection '{}' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all)", name);
    if (std::find(out.begin(), out.end(), *p) == out.end()) out.push_back(*p);
  }
  if (out.empty()) fail("--targets: expected a comma-separated list of projections");
  return out;
}

std::optional<Proj> parse_proj(const std::string& name) {
  for (int p = 0; p < kProjCount; ++p) {
    if (name == kProjName[p]) return static_cast<Proj>(p);
  }
  return std::nullopt;
}

std::pair<int64_t, int64_t> proj_shape(const ModelConfig& c, Proj p) {
  switch (p) {
    case Proj::Q: return {c.q_dim(), c.hidden};
    case Proj::K:
    case Proj::V: return {c.kv_dim(), c.hidden};
    case Proj::O: return {c.hidden, c.q_dim()};
    case Proj::Gate:
    case Proj::Up: return {c.ffn, c.hidden};
    case Proj::Down: return {c.hidden, c.ffn};
  }
  return {0, 0};
}

std::string peft_tensor_name(int64_t layer, Proj p, bool b) {
  return fmt::format("{}{}.{}.{}", kPrefix, layer, kModule[static_cast<int>(p)], b ? "lora_B.weight" : "lora_A.weight");
}

float LoraAdapter::scaling() const {
  if (rank <= 0) return 0.0f;
  return rslora ? alpha / std::sqrt(static_cast<float>(rank)) : alpha / static_cast<float>(rank);
}

bool LoraAdapter::targets(Proj p) const {
  for (const auto& l : layers) {
    if (l[static_cast<int>(p)]) return true;
  }
  return false;
}

void check_lora_adapter(const LoraAdapter& a, const ModelConfig& c, const std::string& where) {
  check_consistent(a, where);
  if (static_cast<int64_t>(a.layers.size()) != c.n_layers) {
    fail("{}: the adapter has {} layers, the model {}", where, a.layers.size(), c.n_layers);
  }
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      const auto& w = a.layers[l][p];
      if (!w) continue;
      auto [out, in] = proj_shape(c, static_cast<Proj>(p));
      if (w->out != out || w->in != in) {
        fail("{}: layer {} {}: the adapter maps {} -> {} features, the model's linear {} -> {}", where, l, kProjName[p], w->in, w->out,
             in, out);
      }
    }
  }
}

LoraAdapter random_lora_adapter(const ModelConfig& c, int rank, float alpha, const std::vector<Proj>& targets, uint64_t seed,
                                float b_std) {
  if (rank < 1 || rank > 65536) fail("LoRA rank {} must be in [1, 65536]", rank);
  if (!std::isfinite(alpha)) fail("LoRA alpha {} is not finite", alpha);
  if (!(b_std >= 0) || !std::isfinite(b_std)) fail("LoRA B standard deviation {} must be finite and >= 0", b_std);
  if (targets.empty()) fail("LoRA: no target projections");
  LoraAdapter a;
  a.rank = rank;
  a.alpha = alpha;
  a.layers.resize(c.n_layers);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (Proj p : targets) {
      auto& slot = a.layers[l][static_cast<int>(p)];
      if (slot) continue;
      auto [out, in] = proj_shape(c, p);
      // Each matrix has its own stream, so choosing other targets leaves this one alone.
      Rng rng{seed ^ (0x51ed270b27a1b3c5ull * static_cast<uint64_t>(l * kProjCount + static_cast<int>(p) + 1))};
      LoraWeights w;
      w.in = in;
      w.out = out;
      w.A.resize(rank * in);
      w.B.assign(out * rank, 0.0f);
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      for (float& x : w.A) x = static_cast<float>((2 * rng.uniform_d() - 1) * bound);
      if (b_std > 0) {
        for (float& x : w.B) x = static_cast<float>(rng.normal_d() * b_std);
      }
      slot = std::move(w);
    }
  }
  return a;
}

LoraAdapter load_peft_adapter(const std::string& dir, const ModelConfig& c) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("{}: not a directory (a LoRA adapter is a directory with {} and {})", dir, kConfigFile, kWeightsFile);
  const std::string cfg_file = (fs::path(dir) / kConfigFile).string();
  const std::string st_file = (fs::path(dir) / kWeightsFile).string();
  if (!fs::exists(cfg_file, ec)) fail("{}: missing (not a peft adapter directory?)", cfg_file);
  const PeftConfig pc = read_peft_config(cfg_file);
  if (!fs::exists(st_file, ec)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin", ec)) {
      fail("{}: missing; the directory has adapter_model.bin (a pickle), which tern does not read: save the adapter with "
           "safe_serialization=True",
           st_file);
    }
    fail("{}: missing", st_file);
  }
  st::Reader r = st::Reader::open_file(st_file);

  LoraAdapter a;
  a.rank = pc.rank;
  a.alpha = pc.alpha;
  a.dropout = pc.dropout;
  a.rslora = pc.rslora;
  a.source = dir;
  a.layers.resize(c.n_layers);
  // Every tensor must be one tern applies: anything else would be silently dropped.
  for (const st::TensorInfo& t : r.tensors()) {
    std::optional<TensorKey> k = parse_tensor_name(t.name);
    if (!k) {
      fail("{}: tensor {}: unknown (a LoRA adapter for BitNet holds {}<i>.{{self_attn.q_proj, ..., mlp.down_proj}}.lora_A/B.weight)",
           st_file, t.name, kPrefix);
    }
    if (k->layer >= c.n_layers) fail("{}: tensor {}: layer {} but the model has {} layers", st_file, t.name, k->layer, c.n_layers);
    if (!pc.targets[static_cast<int>(k->proj)]) {
      fail("{}: tensor {}: {} is not in target_modules of {}", st_file, t.name, proj_name(k->proj), cfg_file);
    }
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      if (!pc.targets[p]) continue;
      const Proj proj = static_cast<Proj>(p);
      auto [out, in] = proj_shape(c, proj);
      const std::string why = fmt::format("r = {} from {}; the model's {} is {} -> {}", pc.rank, kConfigFile, kProjName[p], in, out);
      LoraWeights w;
      w.in = in;
      w.out = out;
      w.A = read_tensor(r.get(peft_tensor_name(l, proj, false), st_file), pc.rank, in, why);
      w.B = read_tensor(r.get(peft_tensor_name(l, proj, true), st_file), out, pc.rank, why);
      a.layers[l][p] = std::move(w);
    }
  }
  return a;
}

void save_peft_adapter(const LoraAdapter& a, const std::string& dir, const std::string& base_model_name) {
  check_consistent(a, dir);
  // Everything is built in memory first, so a bad adapter writes nothing.
  st::Writer w;
  w.set_metadata("format", "pt");  // what peft's save_pretrained writes
  json targets = json::array();
  for (int p = 0; p < kProjCount; ++p) {
    int n = 0;
    for (const auto& layer : a.layers) n += layer[p].has_value();
    if (n == 0) continue;
    if (n != static_cast<int>(a.layers.size())) {
      fail("{}: {} is adapted in {} of {} layers; peft's target_modules applies to every layer", dir, kProjName[p], n, a.layers.size());
    }
    for (size_t l = 0; l < a.layers.size(); ++l) {
      const LoraWeights& lw = *a.layers[l][p];
      auto bytes = [](const std::vector<float>& v) {
        std::vector<uint8_t> b(v.size() * sizeof(float));
        std::memcpy(b.data(), v.data(), b.size());
        return b;
      };
      w.add(peft_tensor_name(static_cast<int64_t>(l), static_cast<Proj>(p), false), st::DType::F32,
            {static_cast<uint64_t>(a.rank), static_cast<uint64_t>(lw.in)}, bytes(lw.A));
      w.add(peft_tensor_name(static_cast<int64_t>(l), static_cast<Proj>(p), true), st::DType::F32,
            {static_cast<uint64_t>(lw.out), static_cast<uint64_t>(a.rank)}, bytes(lw.B));
    }
    targets.push_back(kProjName[p]);
  }
  if (targets.empty()) fail("{}: the adapter adapts no projection", dir);
  std::sort(targets.begin(), targets.end());
  // The fields peft 0.x's LoraConfig.save_pretrained writes for a CAUSAL_LM adapter.
  const json cfg = {
      {"alpha_pattern", json::object()},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", base_model_name},
      {"bias", "none"},
      {"exclude_modules", nullptr},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"loftq_config", json::object()},
      {"lora_alpha", short_number(a.alpha)},
      {"lora_bias", false},
      {"lora_dropout", short_float(a.dropout)},
      {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"r", a.rank},
      {"rank_pattern", json::object()},
      {"revision", nullptr},
      {"target_modules", targets},
      {"task_type", "CAUSAL_LM"},
      {"use_dora", false},
      {"use_rslora", a.rslora},
  };
  std::string text;
  try {
    text = cfg.dump(2) + "\n";
  } catch (const json::exception& e) {
    fail("{}: cannot encode {}: {}", dir, kConfigFile, e.what());  // e.g. a base model name that is not UTF-8
  }

  std::error_code ec;
  const bool created = !fs::exists(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create directory: {}", dir, ec.message());
  try {
    // The config's temp file is written first and renamed last: a failure anywhere
    // before that leaves the old config (or none), never a config with wrong weights.
    AtomicFile cf((fs::path(dir) / kConfigFile).string());
    cf.write(text);
    w.write((fs::path(dir) / kWeightsFile).string());
    cf.commit();
  } catch (...) {
    if (created) fs::remove_all(dir, ec);
    throw;
  }
}

}  // namespace tern
