// tern generate -m MODEL -p PROMPT [-n 128] [sampling flags] [--chat] [--system S] [--stats] [--lm-head int8] [--lora DIR[:S]]
// tern chat -m MODEL [--system S] [sampling flags]
#include <fmt/core.h>

#include <chrono>

#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "commands.h"
#include "gen_flags.h"
#include "model_flags.h"
#include "runtime/chat_prompt.h"
#include "runtime/generate.h"
#include "tern/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

namespace tern::cli {

namespace {

void print_text(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

struct LoadTimes {
  double model = 0, engine = 0;  // seconds: reading the model; building the engine (uploads)
};

void print_stats(const Model& m, const GenerateResult& r, const LoadTimes& lt) {
  const double n = static_cast<double>(r.tokens.size());
  const double tps = r.decode_seconds > 0 ? n / r.decode_seconds : 0;
  fmt::print("\nLoad: model {:.2f} s, engine {:.2f} s; first token {:.2f} s after start\n", lt.model, lt.engine,
             lt.model + lt.engine + r.prefill_seconds);
  fmt::print("Performance: {:.1f} TPS ({:.1f} ms/token), prefill {:.0f} tok/s ({} tokens)\n", tps, tps > 0 ? 1000.0 / tps : 0.0,
             r.prefill_seconds > 0 ? r.n_prompt / r.prefill_seconds : 0.0, r.n_prompt);
  fmt::print("Model: {}\n", describe_model(m));
}

}  // namespace

Action add_generate(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    GenFlags gen;
    std::string prompt, prompt_file, system;
    bool chat = false, stats = false, no_bos = false;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  o->gen.add(app, 128);
  app.add_option("-p,--prompt", o->prompt, "Prompt text");
  app.add_option("-f,--file", o->prompt_file, "Read the prompt from a file");
  app.add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template as one user turn");
  app.add_option("--system", o->system, "System message (with --chat)");
  app.add_flag("--stats", o->stats, "Print speed and model lines at the end");
  app.add_flag("--no-bos", o->no_bos, "Do not prepend BOS (without --chat)");
  return [o] {
    if (!o->prompt_file.empty()) o->prompt = read_text_file(o->prompt_file);
    if (o->prompt.empty()) fail("generate: give a prompt with -p or -f");
    if (!o->system.empty() && !o->chat) fail("--system needs --chat");
    SamplingParams sp = o->gen.sampling_params();
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    Model m = o->model.load();
    LoadTimes lt;
    lt.model = std::chrono::duration<double>(clock::now() - t0).count();
    if (m.tokenizer.empty()) fail("{}: the model has no tokenizer", m.path);
    Tokenizer tok(m.tokenizer);
    std::vector<int32_t> ids;
    if (o->chat) {
      std::vector<ChatMessage> msgs;
      if (!o->system.empty()) msgs.push_back({"system", o->system});
      msgs.push_back({"user", o->prompt});
      ids = ChatPrompter(m.tokenizer).encode(tok, msgs);
    } else {
      ids = tok.encode(o->prompt, m.tokenizer.add_bos && !o->no_bos);
    }
    const auto t1 = clock::now();
    auto engine = make_engine(m, o->gen.engine_options(m.config));
    lt.engine = std::chrono::duration<double>(clock::now() - t1).count();
    GenerateOptions go;
    go.n_predict = o->gen.n_predict;
    go.sampling = sp;
    go.stop_strings = o->gen.stop;
    go.stop_tokens = default_stop_tokens(m.tokenizer);
    GenerateResult r = generate(*engine, tok, ids, go, print_text);
    if (o->stats) {
      print_stats(m, r, lt);
    } else {
      print_text("\n");
    }
    return 0;
  };
}

Action add_chat(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    GenFlags gen;
    std::string system;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  o->gen.add(app, -1);
  app.add_option("--system", o->system, "System message");
  return [o] {
    SamplingParams sp = o->gen.sampling_params();
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    Model m = o->model.load();
    LoadTimes lt;
    lt.model = std::chrono::duration<double>(clock::now() - t0).count();
    if (m.tokenizer.empty()) fail("{}: the model has no tokenizer", m.path);
    Tokenizer tok(m.tokenizer);
    ChatPrompter prompter(m.tokenizer);
    auto engine = make_engine(m, o->gen.engine_options(m.config));
    const int64_t ctx = engine->context_length();
    // Room kept for the reply: the whole request when -n is set, else a quarter of the context.
    const int64_t reserve = o->gen.n_predict > 0 ? std::min(o->gen.n_predict, ctx / 2) : ctx / 4;
    std::vector<ChatMessage> history;
    std::vector<int32_t> cached;  // the tokens the engine's KV cache holds
    const bool tty = isatty(fileno(stdin));
    fmt::print(stderr, "tern chat: {} ({} tokens of context). /reset clears the conversation, /exit quits.\n", describe_model(m), ctx);
    std::string line;
    for (;;) {
      if (tty) fmt::print(stderr, "> ");
      if (!std::getline(std::cin, line)) break;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        history.clear();
        engine->reset();
        cached.clear();
        fmt::print(stderr, "[conversation cleared]\n");
        continue;
      }
      if (line.empty()) continue;
      history.push_back({"user", line});
      // Render; drop the oldest exchanges until the prompt leaves room for a reply.
      std::vector<int32_t> ids;
      for (;;) {
        std::vector<ChatMessage> msgs;
        if (!o->system.empty()) msgs.push_back({"system", o->system});
        msgs.insert(msgs.end(), history.begin(), history.end());
        ids = prompter.encode(tok, msgs);
        if (static_cast<int64_t>(ids.size()) + reserve <= ctx || history.size() <= 1) break;
        history.erase(history.begin(), history.begin() + std::min<size_t>(2, history.size() - 1));
        fmt::print(stderr, "[context full: dropped the oldest exchange]\n");
      }
      if (static_cast<int64_t>(ids.size()) >= ctx) {
        fmt::print(stderr, "[message too long: {} tokens, the context holds {}; not sent]\n", ids.size(), ctx);
        history.pop_back();
        continue;
      }
      // Reuse the cached prefix; at least one new token is needed to get logits.
      size_t common = 0;
      while (common < cached.size() && common < ids.size() && cached[common] == ids[common]) ++common;
      common = std::min(common, ids.size() - 1);
      engine->truncate(static_cast<int64_t>(common));
      GenerateOptions go;
      go.n_predict = o->gen.n_predict > 0 ? o->gen.n_predict : -1;
      go.sampling = sp;
      go.stop_strings = o->gen.stop;
      go.stop_tokens = default_stop_tokens(m.tokenizer);
      GenerateResult r = generate(*engine, tok, std::span<const int32_t>(ids.data() + common, ids.size() - common), go, print_text);
      print_text("\n");
      if (r.reason == StopReason::ContextFull) fmt::print(stderr, "[context full: reply cut short]\n");
      cached = ids;
      cached.insert(cached.end(), r.tokens.begin(), r.tokens.end());
      cached.resize(static_cast<size_t>(engine->position()));
      history.push_back({"assistant", r.text});
    }
    return 0;
  };
}

}  // namespace tern::cli
