// tern bench -m MODEL [-p 512] [-n 128] [-r 3] [--backend cpu] [--threads N] [--json]
// Like llama-bench: pp = one forward over N prompt tokens; tg = N single-token decode
// steps from an empty cache. Reports tokens/s as mean +- sample standard deviation.
#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "model_flags.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "util/parse.h"

namespace tern::cli {

namespace {

struct Result {
  std::string test;
  int64_t n_prompt = 0, n_gen = 0;
  std::vector<double> tps;
  double mean() const {
    double s = 0;
    for (double x : tps) s += x;
    return s / tps.size();
  }
  double sd() const {
    if (tps.size() < 2) return 0;
    double m = mean(), s = 0;
    for (double x : tps) s += (x - m) * (x - m);
    return std::sqrt(s / (tps.size() - 1));
  }
};

}  // namespace

Action add_bench(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    std::string p = "512", n = "128", backend = "cpu";
    int reps = 3, threads = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  app.add_option("-p,--n-prompt", o->p, "Prompt lengths, comma-separated (0 = skip)")->capture_default_str();
  app.add_option("-n,--n-gen", o->n, "Generation lengths, comma-separated (0 = skip)")->capture_default_str();
  app.add_option("-r,--repetitions", o->reps, "Repetitions of each test")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--backend", o->backend, "cpu or auto")->capture_default_str();
  app.add_option("-t,--threads", o->threads, "CPU threads (default: all cores)");
  app.add_flag("--json", o->json, "Print results as JSON");
  return [o] {
    std::vector<int64_t> pps = parse_int_list(o->p, "-p", 0, 1 << 20), tgs = parse_int_list(o->n, "-n", 0, 1 << 20);
    Model m = o->model.load();
    int64_t longest = 1;
    for (int64_t x : pps) longest = std::max(longest, x);
    for (int64_t x : tgs) longest = std::max(longest, x);
    EngineOptions eo;
    eo.backend = o->backend;
    eo.threads = o->threads;
    eo.ctx = longest;
    auto engine = make_engine(m, eo);
    const int64_t V = m.config.vocab;
    std::vector<float> logits(V);
    // Fixed pseudo-random prompt tokens: speed must not depend on which ids they are.
    std::vector<int32_t> toks(longest);
    for (int64_t i = 0; i < longest; ++i) toks[i] = static_cast<int32_t>((i * 2654435761u) % V);
    using clock = std::chrono::steady_clock;
    auto run_pp = [&](int64_t n) {
      engine->reset();
      auto t0 = clock::now();
      engine->forward(std::span<const int32_t>(toks.data(), n), logits.data(), Logits::Last);
      return std::chrono::duration<double>(clock::now() - t0).count();
    };
    auto run_tg = [&](int64_t n) {
      engine->reset();
      auto t0 = clock::now();
      int32_t t = toks[0];
      for (int64_t i = 0; i < n; ++i) {
        engine->forward(std::span<const int32_t>(&t, 1), logits.data(), Logits::Last);
        t = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      }
      return std::chrono::duration<double>(clock::now() - t0).count();
    };
    std::vector<Result> results;
    auto measure = [&](const std::string& name, int64_t np, int64_t ng, auto fn, int64_t n) {
      Result r{name, np, ng, {}};
      fn(std::min<int64_t>(n, 16));  // warm-up: page in weights, spin up threads
      for (int i = 0; i < o->reps; ++i) r.tps.push_back(n / fn(n));
      results.push_back(r);
      if (!o->json) fmt::print(stderr, "  {}: {:.2f} tok/s\n", name, r.mean());
    };
    for (int64_t n : pps) {
      if (n > 0) measure("pp" + std::to_string(n), n, 0, run_pp, n);
    }
    for (int64_t n : tgs) {
      if (n > 0) measure("tg" + std::to_string(n), 0, n, run_tg, n);
    }
    std::string model_desc = fmt::format("{} {}L {}d ({})", m.config.arch, m.config.n_layers, m.config.hidden, m.source_format);
    if (o->json) {
      nlohmann::json out = nlohmann::json::array();
      for (const Result& r : results) {
        out.push_back({{"model", model_desc}, {"backend", engine->name()}, {"test", r.test}, {"n_prompt", r.n_prompt},
                       {"n_gen", r.n_gen}, {"avg_ts", r.mean()}, {"stddev_ts", r.sd()}, {"samples_ts", r.tps}});
      }
      fmt::print("{}\n", out.dump(2));
    } else {
      fmt::print("| {:<48} | {:<16} | {:>8} | {:>20} |\n", "model", "backend", "test", "t/s");
      fmt::print("| {:-<48} | {:-<16} | {:->8} | {:->20} |\n", "", "", "", "");
      for (const Result& r : results) {
        fmt::print("| {:<48} | {:<16} | {:>8} | {:>20} |\n", model_desc, engine->name(), r.test,
                   fmt::format("{:.2f} ± {:.2f}", r.mean(), r.sd()));
      }
    }
    return 0;
  };
}

}  // namespace tern::cli
