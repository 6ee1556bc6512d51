#include "train/trainer.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/load_util.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset.h"
#include "train/grad_engine.h"
#include "train/lora_model.h"
#include "util/atomic_file.h"

namespace tern {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using train::LoraSet;

// The highest N of out/checkpoint-N (complete ones only), or -1.
int64_t latest_checkpoint(const std::string& out) {
  int64_t best = -1;
  std::error_code ec;
  if (!fs::is_directory(out, ec)) return -1;
  for (const auto& e : fs::directory_iterator(out, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) != 0 || !e.is_directory()) continue;
    const std::string num = name.substr(11);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;  // skips *.tmp
    best = std::max<int64_t>(best, std::stoll(num));
  }
  return best;
}

std::string checkpoint_dir(const std::string& out, int64_t step) {
  return (fs::path(out) / ("checkpoint-" + std::to_string(step))).string();
}

struct History {
  std::vector<std::string> lines;  // metrics.jsonl
  std::vector<std::pair<int64_t, double>> train, eval;
  void add(const json& j) {
    lines.push_back(j.dump());
    if (j.contains("loss")) train.emplace_back(j["step"].get<int64_t>(), j["loss"].get<double>());
    if (j.contains("eval_loss")) eval.emplace_back(j["step"].get<int64_t>(), j["eval_loss"].get<double>());
  }
  std::string text() const {
    std::string s;
    for (const std::string& l : lines) s += l + "\n";
    return s;
  }
};

class Trainer {
 public:
  Trainer(const Model& m, const TrainConfig& cfg) : m_(m), cfg_(cfg) {}

  TrainSummary run(const std::function<void(const StepMetrics&)>& progress) {
    if (m_.tokenizer.empty()) fail("{}: the model has no tokenizer (needed to read the training data)", m_.path);
    if (cfg_.batch_size < 1 || cfg_.grad_accum < 1) fail("--batch-size and --grad-accum must be at least 1");
    if (cfg_.out_dir.empty()) fail("finetune: -o ADAPTER_DIR is required");
    load_data();
    init_adapter();
    make_engine();
    Batcher batcher(split_.train, BatcherOptions{cfg_.batch_size, cfg_.seed, true, false, pad_token_for(m_.tokenizer)});
    const int64_t per_epoch = (batcher.batches_per_epoch() + cfg_.grad_accum - 1) / cfg_.grad_accum;
    total_ = cfg_.max_steps > 0 ? cfg_.max_steps : per_epoch * std::max<int64_t>(1, cfg_.epochs);
    if (start_step_ > 0) {
      batcher.restore(resume_batcher_);
      summary_.start_step = start_step_;
    }
    fs::create_directories(cfg_.out_dir);
    write_file_atomic((fs::path(cfg_.out_dir) / "metrics.jsonl").string(), history_.text());
    std::ofstream metrics((fs::path(cfg_.out_dir) / "metrics.jsonl").string(), std::ios::app);
    auto log = [&](const json& j) {
      history_.add(j);
      metrics << j.dump() << "\n";
      metrics.flush();
    };

    const auto t0 = std::chrono::steady_clock::now();
    int64_t tokens_done = 0;
    for (int64_t step = start_step_; step < total_; ++step) {
      engine_->zero_grads();
      double loss = 0;
      int64_t tokens = 0;
      for (int64_t a = 0; a < cfg_.grad_accum; ++a) {
        const Batch b = batcher.next();
        loss += micro_batch(b, step, a);
        for (int32_t len : b.lengths) tokens += len;
      }
      const double lr = scheduled_lr(cfg_.schedule, cfg_.lr, step, cfg_.warmup_steps, total_);
      double norm = 0;
      if (engine_->owns_optimizer()) {
        norm = engine_->optimizer_step(cfg_.optimizer, lr, cfg_.max_grad_norm, opt_->steps() + 1);
        opt_->set_steps(opt_->steps() + 1);  // its moments catch up at the next sync_from_engine
        host_stale_ = true;
      } else {
        engine_->get_grads(grads_);
        norm = clip_grad_norm(opt_->params(), cfg_.max_grad_norm);
        opt_->step(lr);
        engine_->set_params(params_);
      }
      tokens_done += tokens;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      StepMetrics sm{step + 1, total_, batcher.epoch(), loss, lr, norm, tokens_done / std::max(el, 1e-9), el,
                     el / (step + 1 - start_step_) * (total_ - step - 1), tokens};
      log(json{{"step", sm.step}, {"epoch", sm.epoch}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm}, {"tokens", tokens},
               {"tokens_per_s", sm.tokens_per_s}, {"elapsed_s", el}});
      if (step == start_step_) summary_.first_loss = loss;
      summary_.last_loss = loss;
      progress(sm);
      const bool last = step + 1 == total_;
      if (last || (cfg_.save_every > 0 && (step + 1) % cfg_.save_every == 0)) {
        sync_from_engine();
        if (!split_.eval.empty()) {
          summary_.eval_loss = eval_loss();
          log(json{{"step", step + 1}, {"eval_loss", summary_.eval_loss}});
        }
        save_checkpoint(step + 1, batcher);
      }
    }
    summary_.steps = total_;
    sync_from_engine();
    train::store_into(params_, adapter_);
    save_peft_adapter(adapter_, cfg_.out_dir, m_.path);
    write_loss_curve((fs::path(cfg_.out_dir) / "loss_curve.svg").string(), history_.train, history_.eval);
    return summary_;
  }

 private:
  void load_data() {
    Tokenizer tok(m_.tokenizer);
    DatasetOptions o;
    o.max_len = cfg_.max_len;
    DatasetStats st;
    auto examples = load_dataset(cfg_.data, tok, m_.tokenizer, o, &st);
    summary_.dataset = describe(st);
    if (cfg_.eval_split < 0 || cfg_.eval_split >= 1) fail("--eval-split: expected a fraction in [0, 1), got {}", cfg_.eval_split);
    split_ = split_eval(std::move(examples), cfg_.eval_split, cfg_.seed);
    summary_.train_examples = static_cast<int64_t>(split_.train.size());
    summary_.eval_examples = static_cast<int64_t>(split_.eval.size());
  }

  void init_adapter() {
    const int64_t ck = cfg_.resume ? latest_checkpoint(cfg_.out_dir) : -1;
    if (cfg_.resume && ck < 0) fail("--resume: {} has no checkpoint-N directory to resume from", cfg_.out_dir);
    if (ck >= 0) {
      const std::string dir = checkpoint_dir(cfg_.out_dir, ck);
      adapter_ = load_peft_adapter(dir, m_.config);
      const std::string sf = (fs::path(dir) / "trainer_state.json").string();
      const json st = read_json_object(sf);
      try {
        start_step_ = st.at("step").get<int64_t>();
        from_json(st.at("batcher"), resume_batcher_);
      } catch (const json::exception& e) {
        fail("{}: {}", sf, e.what());
      }
      std::ifstream in((fs::path(dir) / "metrics.jsonl").string());
      for (std::string line; std::getline(in, line);) {
        if (!line.empty()) history_.add(json::parse(line));
      }
    } else if (!cfg_.init_adapter.empty()) {
      adapter_ = load_peft_adapter(cfg_.init_adapter, m_.config);
    } else {
      adapter_ = random_lora_adapter(m_.config, cfg_.rank, cfg_.alpha, cfg_.targets, cfg_.seed, 0.0f);
    }
    adapter_.dropout = cfg_.dropout;
    params_ = train::lora_set_from<float>(adapter_);
    grads_ = train::zeros_like(params_);
    opt_ = std::make_unique<Optimizer>(cfg_.optimizer, train::lora_param_refs(params_, grads_));
    if (ck >= 0) opt_->load_state((fs::path(checkpoint_dir(cfg_.out_dir, ck)) / "optimizer.safetensors").string());
  }

  void make_engine() {
    if (cfg_.backend == "cuda") {
      int64_t longest = 1;
      for (const auto* v : {&split_.train, &split_.eval}) {
        for (const TrainExample& e : *v) longest = std::max<int64_t>(longest, static_cast<int64_t>(e.tokens.size()));
      }
      engine_ = train::make_cuda_grad_engine(m_, params_, cfg_.batch_size, longest, cfg_.tf32);
    } else if (cfg_.backend == "cpu" || cfg_.backend.empty()) {
      engine_ = train::make_cpu_grad_engine(m_, cfg_.threads);
    } else {
      fail("--backend: unknown training backend '{}' (expected cpu or cuda)", cfg_.backend);
    }
    engine_->set_params(params_);
    if (engine_->owns_optimizer()) {
      std::vector<float> m, v;
      opt_->export_moments(m, v);
      engine_->set_moments(m, v);
    }
    summary_.engine = engine_->name();
  }

  // Parameters and moments back from an engine that owns the optimizer (before an
  // evaluation, a checkpoint or the end).
  void sync_from_engine() {
    if (!host_stale_) return;
    engine_->get_params(params_);
    std::vector<float> m, v;
    engine_->get_moments(m, v);
    opt_->import_moments(m, v, opt_->steps());
    host_stale_ = false;
  }

  // Adds one micro-batch's gradient (scaled for the mean over its trained tokens and the
  // average over grad_accum) into the engine's accumulated gradient; returns its loss /
  // grad_accum. Row r's dropout masks come from its own seed (any engine, any threads).
  double micro_batch(const Batch& b, int64_t step, int64_t micro) {
    const int64_t n_norm = std::max<int64_t>(1, b.trained_tokens) * cfg_.grad_accum;
    std::vector<uint64_t> seeds(b.rows);
    for (int64_t r = 0; r < b.rows; ++r) {
      seeds[r] = cfg_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>((step * 64 + micro) * 4096 + r);
    }
    const double loss = engine_->run(b, n_norm, cfg_.dropout, seeds, true);
    summary_.device_bytes = std::max(summary_.device_bytes, engine_->device_bytes());
    return loss;
  }

  // Mean cross entropy over every trained token of the eval split (no dropout).
  double eval_loss() {
    int64_t total = 0;
    for (const TrainExample& e : split_.eval) total += e.n_trained();
    Batcher batches(split_.eval, BatcherOptions{cfg_.batch_size, 0, false, false, pad_token_for(m_.tokenizer)});
    double s = 0;
    for (int64_t i = 0; i < batches.batches_per_epoch(); ++i) s += engine_->run(batches.next(), std::max<int64_t>(1, total), 0.0f, {}, false);
    return s;
  }

  void save_checkpoint(int64_t step, const Batcher& batcher) {
    const std::string final_dir = checkpoint_dir(cfg_.out_dir, step), tmp = final_dir + ".tmp";
    fs::remove_all(tmp);
    train::store_into(params_, adapter_);
    save_peft_adapter(adapter_, tmp, m_.path);
    opt_->save_state((fs::path(tmp) / "optimizer.safetensors").string());
    json st{{"step", step}, {"total_steps", total_}, {"seed", cfg_.seed}};
    to_json(st["batcher"], batcher.state());
    write_file_atomic((fs::path(tmp) / "trainer_state.json").string(), st.dump(2) + "\n");
    write_file_atomic((fs::path(tmp) / "metrics.jsonl").string(), history_.text());
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);  // the checkpoint appears whole or not at all
  }

  const Model& m_;
  TrainConfig cfg_;
  std::unique_ptr<train::GradEngine> engine_;
  DatasetSplit split_;
  LoraAdapter adapter_;
  LoraSet<float> params_, grads_;
  std::unique_ptr<Optimizer> opt_;
  int64_t start_step_ = 0, total_ = 0;
  bool host_stale_ = false;  // the engine's parameters / moments are newer than params_ / opt_
  BatcherState resume_batcher_;
  History history_;
  TrainSummary summary_;
};

}  // namespace

TrainSummary train_lora(const Model& m, const TrainConfig& cfg, const std::function<void(const StepMetrics&)>& progress) {
  Trainer t(m, cfg);
  return t.run(progress);
}

void write_loss_curve(const std::string& path, const std::vector<std::pair<int64_t, double>>& train,
                      const std::vector<std::pair<int64_t, double>>& eval) {
  constexpr double W = 720, H = 400, L = 60, R = 20, T = 30, B = 45;
  double x1 = 1, y0 = 1e300, y1 = -1e300;
  for (const auto* s : {&train, &eval}) {
    for (const auto& [st, v] : *s) {
      x1 = std::max(x1, static_cast<double>(st));
      if (std::isfinite(v)) y0 = std::min(y0, v), y1 = std::max(y1, v);
    }
  }
  if (y0 > y1) y0 = 0, y1 = 1;
  if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
  auto X = [&](double s) { return L + (W - L - R) * (s / x1); };
  auto Y = [&](double v) { return T + (H - T - B) * (1.0 - (v - y0) / (y1 - y0)); };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text><text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" "
      "text-anchor=\"middle\">loss</text>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3f}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3f}</text>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
      W, H, L, H - B, W - R, H - B, L, T, L, H - B, (L + W - R) / 2, H - 10, (T + H - B) / 2, (T + H - B) / 2, L - 4, Y(y1) + 4, y1,
      L - 4, Y(y0) + 4, y0, X(0), H - B + 16, X(x1), H - B + 16, static_cast<int64_t>(x1));
  std::string pts;
  for (const auto& [st, v] : train) {
    if (std::isfinite(v)) pts += fmt::format("{:.1f},{:.1f} ", X(static_cast<double>(st)), Y(v));
  }
  svg += fmt::format("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n", pts);
  for (const auto& [st, v] : eval) {
    if (std::isfinite(v)) svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"#d62728\"/>\n", X(static_cast<double>(st)), Y(v));
  }
  svg += fmt::format("<text x=\"{}\" y=\"18\" fill=\"#1f77b4\">train loss</text><text x=\"{}\" y=\"18\" fill=\"#d62728\">eval loss</text>\n",
                     L + 10, L + 110);
  svg += "</svg>\n";
  write_file_atomic(path, svg);
}

}  // namespace tern
