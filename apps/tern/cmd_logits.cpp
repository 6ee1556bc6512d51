// tern logits -m MODEL (--tokens 1,2,3 | -p TEXT) -o OUT.npy [--backend cpu] [--batch N] [--lm-head int8] [--lora DIR[:S]]
#include <fmt/core.h>

#include "commands.h"
#include "engine_flags.h"
#include "model_flags.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "util/npy.h"
#include "util/parse.h"

namespace tern::cli {

Action add_logits(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    std::string tokens, prompt, out, backend = "cpu", lm_head = "f16", cache_type = "f32";
    std::vector<std::string> lora;
    int threads = 0;
    int64_t batch = 0;
    bool no_bos = false;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  auto* t = app.add_option("--tokens", o->tokens, "Comma-separated token ids");
  auto* p = app.add_option("-p,--prompt", o->prompt, "Text, tokenized with the model's tokenizer");
  t->excludes(p);
  app.add_option("-o,--output", o->out, "Output .npy (float32, shape [n_tokens, vocab])")->required();
  app.add_option("--backend", o->backend, "cpu, cuda or auto")->capture_default_str();
  app.add_option("-t,--threads", o->threads, "CPU threads (default: all cores)");
  add_lm_head_option(app, o->lm_head);
  add_cache_type_option(app, o->cache_type);
  add_lora_option(app, o->lora);
  app.add_option("--batch", o->batch, "Tokens per forward call (default: all at once; 1 = token-by-token decode)");
  app.add_flag("--no-bos", o->no_bos, "With -p: do not prepend BOS");
  return [o] {
    if (o->tokens.empty() && o->prompt.empty()) fail("logits: give --tokens or -p");
    Model m = o->model.load();
    std::vector<int32_t> ids;
    if (!o->tokens.empty()) {
      for (int64_t id : parse_int_list(o->tokens, "--tokens", 0, INT32_MAX)) ids.push_back(static_cast<int32_t>(id));
    } else {
      if (m.tokenizer.empty()) fail("{}: the model has no tokenizer; pass --tokens instead of -p", m.path);
      Tokenizer tok(m.tokenizer);
      ids = tok.encode(o->prompt, m.tokenizer.add_bos && !o->no_bos);
    }
    if (ids.empty()) fail("logits: no tokens to run");
    EngineOptions eo;
    eo.backend = o->backend;
    eo.threads = o->threads;
    eo.lm_head = parse_lm_head(o->lm_head);
    eo.kv_type = parse_cache_type(o->cache_type);
    eo.loras = load_loras(o->lora, m.config);
    eo.ctx = static_cast<int64_t>(ids.size());
    if (eo.ctx > m.config.ctx) fail("{} tokens exceed the model's context length {}", ids.size(), m.config.ctx);
    auto engine = make_engine(m, eo);
    const int64_t V = m.config.vocab, n = static_cast<int64_t>(ids.size());
    std::vector<float> logits(n * V);
    const int64_t step = o->batch > 0 ? o->batch : n;
    for (int64_t i = 0; i < n; i += step) {
      const int64_t len = std::min(step, n - i);
      engine->forward(std::span<const int32_t>(ids.data() + i, len), logits.data() + i * V, Logits::All);
    }
    write_npy_f32(o->out, logits.data(), {n, V});
    fmt::print(stderr, "wrote {} ({} tokens x {} vocab)\n", o->out, n, V);
    return 0;
  };
}

}  // namespace tern::cli
