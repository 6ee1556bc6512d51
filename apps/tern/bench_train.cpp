#include "bench_train.h"

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "tern/error.h"
#include "train/grad_engine.h"
#include "train/lora_adapter.h"
#include "train/optimizer.h"

namespace tern::cli {

int run_train_bench(const Model& m, const TrainBenchOptions& o) {
  if (o.batch < 1 || o.seq_len < 2) fail("bench --train: needs a batch of at least 1 and a length (-p) of at least 2");
  const std::string backend = resolve_backend(o.backend);
  // peft's fresh adapter (B = 0) would make the first steps' gradients special; a small
  // random B exercises every path from the first step.
  const LoraAdapter a = random_lora_adapter(m.config, o.rank, 2.0f * o.rank, parse_lora_targets(o.targets), 1, 0.01f);
  train::LoraSet<float> params = train::lora_set_from<float>(a), grads = train::zeros_like(params);
  auto engine = backend == "cuda" ? train::make_cuda_grad_engine(m, params, o.batch, o.seq_len, o.tf32) : train::make_cpu_grad_engine(m, o.threads);
  engine->set_params(params);
  const std::vector<ParamRef> refs = train::lora_param_refs(params, grads);
  size_t n_params = 0;
  for (const ParamRef& r : refs) n_params += r.value.size();
  Optimizer opt(OptimizerOptions{}, refs);
  // Random tokens, every position trained (labels = the next token), as HF's causal-LM
  // loss with labels = input ids.
  Batch b;
  b.rows = o.batch, b.seq_len = o.seq_len;
  uint64_t s = 12345;
  for (int64_t i = 0; i < b.rows * b.seq_len; ++i) {
    b.tokens.push_back(static_cast<int32_t>(((s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33) % m.config.vocab));
  }
  b.labels.assign(b.tokens.size(), train::kIgnore);
  for (int64_t r = 0; r < b.rows; ++r) {
    b.lengths.push_back(static_cast<int32_t>(b.seq_len));
    for (int64_t t = 0; t + 1 < b.seq_len; ++t) b.labels[r * b.seq_len + t] = b.tokens[r * b.seq_len + t + 1], ++b.trained_tokens;
  }
  std::vector<uint64_t> seeds(b.rows, 7);
  double loss = 0;
  auto step = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    engine->zero_grads();
    loss = engine->run(b, b.trained_tokens, 0.05f, seeds, true);
    if (engine->owns_optimizer()) {  // as tern finetune: the update where the gradients are
      engine->optimizer_step(OptimizerOptions{}, 1e-4, 1.0, opt.steps() + 1);
      opt.set_steps(opt.steps() + 1);
    } else {
      engine->get_grads(grads);
      clip_grad_norm(opt.params(), 1.0);
      opt.step(1e-4);
      engine->set_params(params);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  step();  // warm-up: scratch buffers reach their size, cuBLAS picks its kernels
  std::vector<double> tps;
  for (int i = 0; i < o.reps; ++i) tps.push_back(static_cast<double>(b.rows * b.seq_len) / step());
  double mean = 0, sd = 0;
  for (double x : tps) mean += x / tps.size();
  for (double x : tps) sd += (x - mean) * (x - mean);
  sd = tps.size() > 1 ? std::sqrt(sd / (tps.size() - 1)) : 0;
  const double gib = engine->device_bytes() / 1073741824.0;
  const std::string test = fmt::format("train{}@b{}", o.seq_len, o.batch);
  if (o.json) {
    nlohmann::json j = {{"backend", engine->name()}, {"test", test}, {"n_batch", o.batch}, {"seq_len", o.seq_len}, {"rank", o.rank},
                        {"targets", o.targets}, {"lora_params", n_params}, {"avg_ts", mean}, {"stddev_ts", sd}, {"samples_ts", tps},
                        {"loss", loss}, {"device_gib", gib}, {"precision", backend == "cuda" && o.tf32 ? "tf32" : "fp32"}};
    fmt::print("{}\n", nlohmann::json::array({j}).dump(2));
  } else {
    fmt::print("{} on {}: {:.0f} ± {:.0f} training tok/s (batch {} x {}, r{} on {}, {} LoRA parameters, AdamW, {} products){}; loss {:.4f}\n",
               test, engine->name(), mean, sd, o.batch, o.seq_len, o.rank, o.targets, n_params, backend == "cuda" && o.tf32 ? "tf32" : "fp32",
               gib > 0 ? fmt::format(", {:.2f} GiB GPU memory in use", gib) : "", loss);
  }
  return 0;
}

}  // namespace tern::cli
