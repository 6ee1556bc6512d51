// tern perplexity -m MODEL -f TEXT [--ctx 512] [--stride N] [--lm-head int8] [--cache-type f16] [--lora DIR[:S]]
#include <fmt/core.h>

#include "commands.h"
#include "engine_flags.h"
#include "model_flags.h"
#include "runtime/perplexity.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

namespace tern::cli {

Action add_perplexity(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    std::string file, backend = "auto", lm_head = "f16", cache_type = "f32";
    std::vector<std::string> lora;
    int64_t ctx = 512, stride = 0;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  app.add_option("-f,--file", o->file, "Text file")->required();
  app.add_option("-c,--ctx", o->ctx, "Tokens per chunk / window")->capture_default_str();
  app.add_option("--stride", o->stride, "Sliding-window stride (HF style); 0 = llama-perplexity chunks")->capture_default_str();
  app.add_option("--backend", o->backend, "cpu, cuda or auto")->capture_default_str();
  app.add_option("-t,--threads", o->threads, "CPU threads (default: all cores)");
  add_lm_head_option(app, o->lm_head);
  add_cache_type_option(app, o->cache_type);
  add_lora_option(app, o->lora);
  return [o] {
    std::string text = read_text_file(o->file);
    Model m = o->model.load();
    if (m.tokenizer.empty()) fail("{}: the model has no tokenizer", m.path);
    Tokenizer tok(m.tokenizer);
    std::vector<int32_t> ids = tok.encode(text, m.tokenizer.add_bos);
    EngineOptions eo;
    eo.backend = o->backend;
    eo.threads = o->threads;
    eo.lm_head = parse_lm_head(o->lm_head);
    eo.kv_type = parse_cache_type(o->cache_type);
    eo.loras = load_loras(o->lora, m.config);
    eo.ctx = o->ctx;
    auto engine = make_engine(m, eo);
    const int32_t bos = m.tokenizer.add_bos ? m.tokenizer.bos : -1;
    fmt::print(stderr, "perplexity: {} tokens, ctx {}, {}\n", ids.size(), o->ctx,
               o->stride > 0 ? fmt::format("sliding window, stride {}", o->stride) : std::string("llama-perplexity chunks"));
    PerplexityResult r = perplexity(*engine, ids, o->ctx, o->stride, bos, [](int64_t i, double ppl) {
      fmt::print("[{}]{:.4f},", i + 1, ppl);
      std::fflush(stdout);
    });
    fmt::print("\nFinal estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_stderr);
    return 0;
  };
}

}  // namespace tern::cli
