// tern lora-init -m MODEL -o DIR [--rank 16] [--alpha 32] [--targets q_proj,...|all] [--seed S] [--b-std 0] [--force]
// Writes a fresh LoRA adapter for MODEL in HF peft's format: the starting point of
// fine-tuning (B = 0, so it begins as the base model, as peft initialises it), and with
// --b-std > 0 a random adapter that visibly changes the model, for tests.
#include <fmt/core.h>

#include <filesystem>

#include "commands.h"
#include "model_flags.h"
#include "tern/error.h"
#include "train/lora_adapter.h"

namespace tern::cli {


Action add_lora_init(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    std::string out, targets = "all";
    int rank = 16;
    float alpha = 32, b_std = 0;
    uint64_t seed = 1;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  app.add_option("-o,--output", o->out, "Adapter directory to write (adapter_config.json + adapter_model.safetensors)")->required();
  app.add_option("--rank", o->rank, "LoRA rank r")->capture_default_str()->check(CLI::Range(1, 65536));
  app.add_option("--alpha", o->alpha, "LoRA alpha (the branch is scaled by alpha / r)")->capture_default_str();
  app.add_option("--targets", o->targets, "Adapted projections, comma-separated (q_proj, ..., down_proj) or all")->capture_default_str();
  app.add_option("--seed", o->seed, "Random seed")->capture_default_str();
  app.add_option("--b-std", o->b_std, "Standard deviation of B (0: B = 0, the adapter starts as a no-op)")->capture_default_str();
  app.add_flag("--force", o->force, "Overwrite an adapter already in the directory");
  return [o] {
    std::vector<Proj> targets = parse_lora_targets(o->targets);
    namespace fs = std::filesystem;
    std::error_code ec;
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"}) {
      if (!o->force && fs::exists(fs::path(o->out) / f, ec)) {
        fail("{}: already holds an adapter ({}); pass --force to overwrite it", o->out, f);
      }
    }
    Model m = o->model.load();
    LoraAdapter a = random_lora_adapter(m.config, o->rank, o->alpha, targets, o->seed, o->b_std);
    save_peft_adapter(a, o->out, o->model.path);
    std::string names;
    int64_t params = 0;
    for (int p = 0; p < kProjCount; ++p) {
      if (!a.targets(static_cast<Proj>(p))) continue;
      names += (names.empty() ? "" : ",") + std::string(proj_name(static_cast<Proj>(p)));
      for (const auto& layer : a.layers) params += static_cast<int64_t>(layer[p]->A.size() + layer[p]->B.size());
    }
    fmt::print("wrote {}: LoRA rank {}, alpha {} (scaling {}), {} in {} layers, {} parameters\n", o->out, a.rank, a.alpha, a.scaling(),
               names, a.layers.size(), params);
    return 0;
  };
}

}  // namespace tern::cli
