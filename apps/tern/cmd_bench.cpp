// tern bench -m MODEL [-p 512] [-n 128] [-d 0] [-B 1,8,32,64] [-r 3] [--backend cpu|cuda|auto]
//            [--threads N] [--lm-head f16|int8] [--cache-type f32|f16] [--lora DIR[:S]] [--bw GB/s] [--json]
// Like llama-bench: pp = one forward over N prompt tokens; tg = N single-token decode
// steps from an empty cache, greedy (the backend's argmax: only token ids come back);
// tgN@B = N decode steps of B sequences at once from empty caches, aggregate tokens/s.
// -d D (llama-bench's --n-depth): every test starts from D cached positions instead (a
// prompt of D tokens prefilled, untimed, before each run; named ppN@dD, tgN@dD): decode at
// depth pays attention over D + i positions per step, which an empty cache hides.
// Decode figures carry the memory-bandwidth roofline: the bytes a step must read
// (every weight once, plus each sequence's KV cache) at the measured bandwidth (GPU:
// device-to-device copy, read + write; CPU: a streaming read of the model's weights,
// the pages decode reads, by as many threads as the engine has, best of five at the
// start: util/membw.h). CPU decode also measures that read right before and after each
// timed run and reports the median of each run's tok/s against the mean of its two: a
// VM's bandwidth moves by +-25 % within seconds, which the one probe at the start cannot
// follow. And against one pass of the same read after every 4th step (not timed as the
// run's): the bytes of all those passes over their time. A VM can also stall memory for
// ~0.1 s every ~0.5 s (docs/PERFORMANCE.md); a run of 128 steps sits through them, while
// the best of three passes around it skips them; the passes between its steps meet them
// as often as the steps do.
// Mean +- sample std dev.
// --train [--train-batch 8] [--rank 16] [--targets all]: LoRA training steps of
// batch x (first -p) tokens instead (bench_train.h).
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench_train.h"
#include "commands.h"
#include "engine_flags.h"
#include "model_flags.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "util/mapped_file.h"
#include "util/membw.h"
#include "util/parse.h"

namespace tern::cli {

namespace {

struct Result {
  std::string test;
  int64_t n_prompt = 0, n_gen = 0, n_batch = 1, n_depth = 0;
  std::vector<double> tps;
  double roofline = 0;  // tok/s at the bandwidth limit; 0 = none (prefill)
  std::vector<double> pct_around = {};  // CPU decode: each run's % of the bandwidth read just before and after it
  std::vector<double> pct_between = {};  // ... and of the bandwidth read between its steps (see the top)
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t k = v.size() / 2;
    return v.size() % 2 ? v[k] : (v[k - 1] + v[k]) / 2;
  }
  double median_around() const { return median(pct_around); }
  double median_between() const { return median(pct_between); }
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

// Bytes one decode step must read besides the KV cache: ternary weights at 2 bits
// (as stored, rows padded to 128), the norms, and the LM head.
double weight_bytes(const Model& m, LmHead head) {
  double b = 0;
  for (const Layer& L : m.layers) {
    for (const TernaryMatrix* t : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) b += static_cast<double>(t->rows) * t->row_bytes;
    b += 4.0 * (L.attn_norm.size() + L.attn_sub_norm.size() + L.ffn_norm.size() + L.ffn_sub_norm.size());
  }
  const double cells = static_cast<double>(m.embedding.rows) * m.embedding.cols;
  b += head == LmHead::Int8 ? cells + 4.0 * m.embedding.rows : static_cast<double>(m.embedding.nbytes());
  return b;
}

// A read of the bytes a CPU decode step reads from the model: its ternary weights and
// its 16/32-bit head (an int8 head is the engine's copy, read at the same rate).
std::unique_ptr<ReadProbe> weights_probe(const Model& m, int threads) {
  std::vector<std::span<const uint8_t>> ranges;
  for (const Layer& L : m.layers) {
    for (const TernaryMatrix* t : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) ranges.emplace_back(t->data, t->rows * t->row_bytes);
  }
  ranges.emplace_back(static_cast<const uint8_t*>(m.embedding.data), m.embedding.nbytes());
  return std::make_unique<ReadProbe>(std::move(ranges), threads);
}

}  // namespace

Action add_bench(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    std::string p = "512", n = "128", d = "0", batch, backend = "cpu", lm_head = "f16", cache_type = "f32";
    std::vector<std::string> lora;
    int reps = 3, threads = 0;
    double bw = 0;
    bool json = false;
    bool train = false;
    std::string precision = "tf32";
    TrainBenchOptions tb;
  };
  auto o = std::make_shared<Opts>();
  o->model.add(app);
  app.add_option("-p,--n-prompt", o->p, "Prompt lengths, comma-separated (0 = skip)")->capture_default_str();
  app.add_option("-n,--n-gen", o->n, "Generation lengths, comma-separated (0 = skip)")->capture_default_str();
  app.add_option("-d,--n-depth", o->d, "Cached positions before each test, comma-separated (a prefilled prompt, untimed)")
      ->capture_default_str();
  app.add_option("-B,--batch", o->batch,
                 "Batched decode: sequence counts, comma-separated (default 1,8,32,64 on CUDA, none on CPU; 0 = skip)");
  app.add_option("-r,--repetitions", o->reps, "Repetitions of each test")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--backend", o->backend, "cpu, cuda or auto")->capture_default_str();
  app.add_option("-t,--threads", o->threads, "CPU threads (default: all cores)");
  add_lm_head_option(app, o->lm_head);
  add_cache_type_option(app, o->cache_type);
  add_lora_option(app, o->lora);
  app.add_option("--bw", o->bw, "Memory bandwidth for the roofline in GB/s (default: measured)");
  app.add_flag("--json", o->json, "Print results as JSON");
  app.add_flag("--train", o->train, "Measure LoRA training steps (batch x the first -p length) instead");
  app.add_option("--train-batch", o->tb.batch, "Sequences per training step (--train)")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--rank", o->tb.rank, "LoRA rank (--train)")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--targets", o->tb.targets, "LoRA target projections (--train)")->capture_default_str();
  app.add_option("--precision", o->precision, "--train on cuda: tf32 or fp32 products (tern finetune --precision)")->capture_default_str();
  return [o] {
    if (o->train) {
      Model m = o->model.load();
      TrainBenchOptions tb = o->tb;
      tb.backend = o->backend, tb.reps = o->reps, tb.threads = o->threads, tb.json = o->json;
      tb.seq_len = parse_int_list(o->p, "-p", 2, 1 << 20).at(0);
      if (o->precision != "tf32" && o->precision != "fp32") fail("--precision: expected tf32 or fp32, got '{}'", o->precision);
      tb.tf32 = o->precision == "tf32";
      return run_train_bench(m, tb);
    }
    std::vector<int64_t> pps = parse_int_list(o->p, "-p", 0, 1 << 20), tgs = parse_int_list(o->n, "-n", 0, 1 << 20),
                         depths = parse_int_list(o->d, "-d", 0, 1 << 20);
    Model m = o->model.load();
    int64_t longest = 1, deepest = 0;
    for (int64_t x : pps) longest = std::max(longest, x);
    for (int64_t x : tgs) longest = std::max(longest, x);
    for (int64_t x : depths) deepest = std::max(deepest, x);
    EngineOptions eo;
    eo.backend = o->backend;
    eo.threads = o->threads;
    eo.ctx = deepest + longest;
    eo.lm_head = parse_lm_head(o->lm_head);
    eo.kv_type = parse_cache_type(o->cache_type);
    eo.loras = load_loras(o->lora, m.config);
    const bool on_gpu = resolve_backend(o->backend) == "cuda";
    std::vector<int64_t> batches =
        parse_int_list(o->batch.empty() ? (on_gpu ? "1,8,32,64" : "0") : o->batch, "--batch", 0, 4096);
    std::erase(batches, 0);
    int64_t max_b = 1;
    for (int64_t b : batches) max_b = std::max(max_b, b);
    eo.n_seq = static_cast<int>(max_b);  // one engine (the weights uploaded once) serves every test
    auto engine = make_engine(m, eo);
    Engine& e1 = *engine;

    double bw = o->bw * 1e9;
    const int cpu_threads = o->threads > 0 ? o->threads : static_cast<int>(std::thread::hardware_concurrency());
    if (bw <= 0) {
#ifdef TERN_HAVE_CUDA
      if (on_gpu) bw = cuda_copy_bandwidth();
#endif
      if (bw <= 0) bw = weights_probe(m, cpu_threads)->best(5);
      if (bw <= 0) bw = cpu_read_bandwidth(cpu_threads);  // (a model with nothing to read)
    }
    // CPU decode: the probe around each timed run (see the top of this file).
    std::unique_ptr<ReadProbe> probe;
    if (!on_gpu && o->bw <= 0 && std::any_of(tgs.begin(), tgs.end(), [](int64_t n) { return n > 0; })) probe = weights_probe(m, cpu_threads);
    // CPU decode streams every weight each step: how much of them sits in 2 MB pages (the
    // probe above has touched them all; util/mapped_file.h says why it matters).
    const double huge_share = on_gpu ? -1 : huge_page_share(m.embedding.data);
    // What the CPU engine did to get there, for the file that holds the LM head (a later
    // call returns the first call's report).
    HugePageSettle settle;
    const auto* head = static_cast<const uint8_t*>(m.embedding.data);
    for (const auto& f : m.files) {
      if (!on_gpu && head >= f->data() && head < f->data() + f->size()) settle = f->settle_in_huge_pages();
    }
    const double wbytes = weight_bytes(m, eo.lm_head);
    const double kv_bytes = eo.kv_type == KvType::F16 ? 2.0 : 4.0;
    const double kv_per_pos = 2.0 * kv_bytes * m.config.n_layers * m.config.kv_dim();  // K and V
    // Roofline tok/s of n steps of B sequences from d cached positions (step i reads d+i+1).
    auto roofline = [&](int64_t n, int64_t B, int64_t d) {
      const double bytes = n * wbytes + B * kv_per_pos * (n * d + n * (n + 1) / 2.0);
      return B * n / (bytes / bw);
    };

    const int64_t V = m.config.vocab;
    std::vector<float> logits(V);
    // Fixed pseudo-random prompt tokens: speed must not depend on which ids they are.
    std::vector<int32_t> toks(std::max(deepest + longest, max_b));
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<int32_t>((i * 2654435761u) % V);
    using clock = std::chrono::steady_clock;
    // Sequence s from d cached positions (the first d prompt tokens, untimed).
    auto start_at = [&](int s, int64_t d) {
      e1.reset(s);
      if (d > 0) e1.forward(s, std::span<const int32_t>(toks.data(), d), nullptr, Logits::None);
    };
    auto run_pp = [&](int64_t n, int64_t d) {
      start_at(0, d);
      auto t0 = clock::now();
      e1.forward(std::span<const int32_t>(toks.data() + d, n), logits.data(), Logits::Last);
      return std::chrono::duration<double>(clock::now() - t0).count();
    };
    // CPU decode: one probe pass after every kProbeEvery steps, outside the timing.
    constexpr int64_t kProbeEvery = 4;
    double between_secs = 0, between_bytes = 0;  // the probe passes of the last run_tg
    // n steps of B sequences 0..B-1, each fed its own greedy output; seconds spent stepping.
    auto run_tg = [&](int64_t n, int64_t B, int64_t d) {
      std::vector<int> seqs(B);
      std::vector<int32_t> cur(toks.begin(), toks.begin() + B), next(B);
      for (int64_t b = 0; b < B; ++b) {
        seqs[b] = static_cast<int>(b);
        start_at(seqs[b], d);
      }
      between_secs = between_bytes = 0;
      auto t0 = clock::now();
      for (int64_t i = 0; i < n; ++i) {
        e1.decode(seqs, cur, nullptr, next.data());
        std::swap(cur, next);
        if (probe && (i + 1) % kProbeEvery == 0 && i + 1 < n) {
          const auto p0 = clock::now();
          const double rate = probe->pass();
          const double s = std::chrono::duration<double>(clock::now() - p0).count();
          between_secs += s, between_bytes += rate * s;
        }
      }
      return std::chrono::duration<double>(clock::now() - t0).count() - between_secs;
    };
    std::vector<Result> results;
    auto measure = [&](Result r, auto fn, int64_t tokens) {
      fn();  // warm-up: page in weights, capture graphs, spin up threads
      const bool around = probe != nullptr && r.roofline > 0;
      // (best of three passes: one pass is ~20 ms, and the VM's bandwidth dips for that long)
      auto probe_bw = [&] { return probe->best(3); };
      for (int i = 0; i < o->reps; ++i) {
        const double b0 = around ? probe_bw() : 0;
        r.tps.push_back(tokens / fn());
        if (around) r.pct_around.push_back(100 * r.tps.back() / (r.roofline * ((b0 + probe_bw()) / 2) / bw));  // (the roofline scales with it)
        if (around && between_bytes > 0) r.pct_between.push_back(100 * r.tps.back() / (r.roofline * (between_bytes / between_secs) / bw));
      }
      if (!o->json) {
        std::string how;
        if (r.roofline > 0) how = fmt::format(" ({:.1f}% of the {:.0f} tok/s roofline", 100 * r.mean() / r.roofline, r.roofline);
        if (!r.pct_around.empty()) how += fmt::format("; {:.1f}% of the bandwidth read around each run, median", r.median_around());
        if (!r.pct_between.empty()) how += fmt::format("; {:.1f}% of that read between its steps", r.median_between());
        if (r.roofline > 0) how += ")";
        fmt::print(stderr, "  {}: {:.2f} tok/s{}\n", r.test, r.mean(), how);
      }
      results.push_back(r);
    };
    for (int64_t d : depths) {
      const std::string at = d > 0 ? "@d" + std::to_string(d) : "";
      for (int64_t n : pps) {
        if (n > 0) measure(Result{"pp" + std::to_string(n) + at, n, 0, 1, d, {}, 0}, [&] { return run_pp(n, d); }, n);
      }
      for (int64_t n : tgs) {
        if (n <= 0) continue;
        measure(Result{"tg" + std::to_string(n) + at, 0, n, 1, d, {}, roofline(n, 1, d)}, [&] { return run_tg(n, 1, d); }, n);
        for (int64_t B : batches) {
          measure(Result{"tg" + std::to_string(n) + "@B" + std::to_string(B) + at, 0, n, B, d, {}, roofline(n, B, d)},
                  [&] { return run_tg(n, B, d); }, n * B);
        }
      }
    }
    const std::string model_desc =
        fmt::format("{} {}L {}d ({})", m.config.arch, m.config.n_layers, m.config.hidden, m.source_format);
    const std::string backend = e1.name();
    if (o->json) {
      nlohmann::json out = nlohmann::json::array();
      for (const Result& r : results) {
        nlohmann::json j = {{"model", model_desc}, {"backend", backend}, {"test", r.test}, {"n_prompt", r.n_prompt},
                            {"n_gen", r.n_gen}, {"n_batch", r.n_batch}, {"n_depth", r.n_depth}, {"avg_ts", r.mean()}, {"stddev_ts", r.sd()},
                            {"samples_ts", r.tps}, {"lm_head", o->lm_head}};
        if (r.roofline > 0) {
          j["roofline_ts"] = r.roofline;
          j["pct_roofline"] = 100 * r.mean() / r.roofline;
          j["bandwidth_gbs"] = bw / 1e9;
        }
        if (!r.pct_around.empty()) {
          j["pct_bw_around"] = r.median_around();
          j["pct_bw_around_samples"] = r.pct_around;
        }
        if (!r.pct_between.empty()) {
          j["pct_bw_between"] = r.median_between();
          j["pct_bw_between_samples"] = r.pct_between;
        }
        if (huge_share >= 0) j["weights_in_2mb_pages"] = huge_share;
        if (settle.recached) j["weights_recached_s"] = settle.seconds;
        out.push_back(j);
      }
      fmt::print("{}\n", out.dump(2));
    } else {
      fmt::print("| {:<44} | {:<28} | {:>12} | {:>20} | {:>10} |\n", "model", "backend", "test", "t/s", "roofline");
      fmt::print("| {:-<44} | {:-<28} | {:->12} | {:->20} | {:->10} |\n", "", "", "", "", "");
      for (const Result& r : results) {
        fmt::print("| {:<44} | {:<28} | {:>12} | {:>20} | {:>10} |\n", model_desc, backend, r.test,
                   fmt::format("{:.2f} ± {:.2f}", r.mean(), r.sd()),
                   r.roofline > 0 ? fmt::format("{:.1f}%", 100 * r.mean() / r.roofline) : "");
      }
      fmt::print("roofline: {:.3f} GB per step + KV cache, at {:.0f} GB/s ({})\n", wbytes / 1e9, bw / 1e9,
                 o->bw > 0 ? "--bw" : on_gpu ? "measured device copy, read + write" : "measured streaming read of the weights");
      if (huge_share >= 0) {
        fmt::print("LM head resident in 2 MB pages: {:.0f} %{}\n", 100 * huge_share,
                   huge_share < 0.8 ? " (the page cache holds the file in smaller pieces: --no-mmap reads it into 2 MB pages)" : "");
      }
      if (settle.recached) {
        fmt::print("the page cache held the model file {:.0f} % in 2 MB pages: dropped and read again at load ({:.2f} s)\n",
                   100 * settle.share_before, settle.seconds);
      }
    }
    return 0;
  };
}

}  // namespace tern::cli
