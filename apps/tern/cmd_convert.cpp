// tern convert IN OUT --type T   and   tern synth --shape S -o OUT --type T [--seed N]
#include <fmt/core.h>

#include <filesystem>

#include "commands.h"
#include "model_flags.h"
#include "tern/error.h"

namespace tern::cli {

Action add_convert(CLI::App& app) {
  struct Opts {
    std::string in, out, type = "i2_s", activation;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("IN", o->in, "Input model: GGUF file or HF directory")->required();
  app.add_option("OUT", o->out, "Output GGUF file")->required();
  app.add_option("--type", o->type, "Output weight type: i2_s, tq2_0 or tq1_0")->capture_default_str();
  app.add_option("--activation", o->activation, "Override the FFN activation: relu2, silu or gelu");
  return [o] {
    SaveType type = parse_save_type(o->type);
    std::error_code ec;
    if (std::filesystem::equivalent(o->in, o->out, ec)) fail("{}: output would overwrite the input", o->out);
    LoadOptions lo;
    if (!o->activation.empty()) lo.activation = parse_activation(o->activation);
    Model m = load_model(o->in, lo);
    save_gguf(m, o->out, type);
    fmt::print("wrote {} ({}, {} layers) from {}\n", o->out, o->type, m.config.n_layers, m.source_format);
    return 0;
  };
}

Action add_synth(CLI::App& app) {
  struct Opts {
    std::string shape = "tiny", out, type = "i2_s";
    uint64_t seed = 1;
    std::string init = "sharp";
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--shape", o->shape, "2b-4t, tiny, or H,FF,L,NH,NKV,V")->capture_default_str();
  app.add_option("-o,--output", o->out, "Output GGUF file (or directory for hf-packed)")->required();
  app.add_option("--type", o->type, "i2_s, tq2_0, tq1_0 or hf-packed")->capture_default_str();
  app.add_option("--seed", o->seed, "Random seed")->capture_default_str();
  app.add_option("--init", o->init,
                 "sharp (large random weights: the hard case for kernels) or hf (a fresh HF model's init: a base to fine-tune)")
      ->capture_default_str();
  return [o] {
    ModelConfig c = parse_shape(o->shape);
    bool hf = o->type == "hf-packed";
    SaveType type = hf ? SaveType::I2_S : parse_save_type(o->type);
    Model m = synth_model(c, o->seed, parse_synth_init(o->init));
    if (hf) {
      save_hf_packed(m, o->out);
    } else {
      save_gguf(m, o->out, type);
    }
    fmt::print("wrote {} ({} layers, hidden {}, ffn {}, vocab {}, {}, seed {})\n", o->out, c.n_layers, c.hidden, c.ffn,
               c.vocab, o->type, o->seed);
    return 0;
  };
}

}  // namespace tern::cli
