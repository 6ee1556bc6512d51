// Flags shared by generate and chat: sampling (llama.cpp's names), length, stops,
// backend, context size, LM head and LoRA adapters.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "engine_flags.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"

namespace tern::cli {

struct GenFlags {
  SamplingParams sampling;
  int64_t seed = -1;
  int64_t n_predict = 128;
  std::vector<std::string> stop;
  std::string backend = "auto";
  int threads = 0;
  int64_t ctx = 0;
  std::string lm_head = "f16";
  std::string cache_type = "f32";
  std::vector<std::string> lora;

  void add(CLI::App& app, int64_t default_n) {
    n_predict = default_n;
    app.add_option("-n,--n-predict", n_predict, "Maximum new tokens (-1 = until end of text or a full context)")->capture_default_str();
    app.add_option("--temp", sampling.temp, "Temperature (0 = greedy)")->capture_default_str();
    app.add_option("--top-k", sampling.top_k, "Top-k (0 = off)")->capture_default_str();
    app.add_option("--top-p", sampling.top_p, "Top-p / nucleus (1 = off)")->capture_default_str();
    app.add_option("--min-p", sampling.min_p, "Min-p (0 = off)")->capture_default_str();
    app.add_option("--repeat-penalty", sampling.repeat_penalty, "Repetition penalty (1 = off)")->capture_default_str();
    app.add_option("--repeat-last-n", sampling.repeat_last_n, "Tokens the repetition penalty looks back over")->capture_default_str();
    app.add_option("-s,--seed", seed, "Random seed (-1 = random)")->capture_default_str();
    app.add_option("--stop", stop, "Stop when this text is generated (repeatable)");
    app.add_option("--backend", backend, "cpu, cuda or auto")->capture_default_str();
    app.add_option("-t,--threads", threads, "CPU threads (default: all cores)");
    app.add_option("-c,--ctx", ctx, "Context size in tokens (default: the model's)");
    add_lm_head_option(app, lm_head);
    add_cache_type_option(app, cache_type);
    add_lora_option(app, lora);
  }

  SamplingParams sampling_params() const {
    SamplingParams p = sampling;
    if (seed >= 0) {
      p.seed = static_cast<uint64_t>(seed);
      p.seed_set = true;
    }
    validate(p);
    return p;
  }

  EngineOptions engine_options(const ModelConfig& c) const {
    EngineOptions eo;
    eo.backend = backend;
    eo.threads = threads;
    eo.ctx = ctx > 0 ? ctx : c.ctx;
    eo.lm_head = parse_lm_head(lm_head);
    eo.kv_type = parse_cache_type(cache_type);
    eo.loras = load_loras(lora, c);
    return eo;
  }
};

}  // namespace tern::cli
