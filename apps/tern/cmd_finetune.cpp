// tern finetune -m MODEL --data FILE -o ADAPTER_DIR [--rank 16] [--alpha 32] [--dropout 0.05]
//   [--targets all] [--lr 2e-4] [--optimizer adamw|sgd] [--weight-decay 0]
//   [--lr-schedule cosine|constant] [--warmup-steps 0] [--max-grad-norm 1 (0 = off)]
//   [--epochs 1] [--max-steps -1] [--batch-size 4] [--grad-accum 1] [--max-len 512]
//   [--eval-split 0] [--save-every 0] [--resume] [--init-adapter DIR] [--seed 42]
//   [--backend auto|cpu|cuda] [-t N]
// LoRA fine-tuning (train/trainer.h). Progress on stderr: a bar on a terminal, a line every
// ~5 % otherwise.
#include <fmt/core.h>
#include <unistd.h>

#include <cstdio>

#include "commands.h"
#include "model_flags.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "train/trainer.h"

namespace tern::cli {

namespace {

std::string clock_str(double s) {
  const int64_t t = static_cast<int64_t>(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60) : fmt::format("{:02}:{:02}", t / 60, t % 60);
}

}  // namespace

Action add_finetune(CLI::App& app) {
  struct Opts {
    ModelFlags model;
    TrainConfig cfg;
    std::string targets = "all", optimizer = "adamw", schedule = "cosine", backend = "auto", precision = "tf32";
  };
  auto o = std::make_shared<Opts>();
  TrainConfig& c = o->cfg;
  o->model.add(app);
  app.add_option("--data", c.data, "Training data: Alpaca JSON/JSONL, {\"text\"} or {\"messages\"} records")->required();
  app.add_option("-o,--output", c.out_dir, "Adapter directory (peft format), checkpoints, metrics.jsonl, loss_curve.svg")->required();
  app.add_option("--rank", c.rank, "LoRA rank r")->capture_default_str()->check(CLI::Range(1, 65536));
  app.add_option("--alpha", c.alpha, "LoRA alpha (scaling alpha / r)")->capture_default_str();
  app.add_option("--dropout", c.dropout, "LoRA dropout on the adapter input")->capture_default_str()->check(CLI::Range(0.0, 0.99));
  app.add_option("--targets", o->targets, "Adapted projections: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all")
      ->capture_default_str();
  app.add_option("--lr", c.lr, "Peak learning rate")->capture_default_str();
  app.add_option("--optimizer", o->optimizer, "adamw or sgd")->capture_default_str()->check(CLI::IsMember({"adamw", "sgd"}));
  app.add_option("--weight-decay", c.optimizer.weight_decay, "Weight decay (AdamW: decoupled)")->capture_default_str();
  app.add_option("--lr-schedule", o->schedule, "cosine or constant (after the warmup)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cosine", "constant"}));
  app.add_option("--warmup-steps", c.warmup_steps, "Linear warmup steps")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--max-grad-norm", c.max_grad_norm, "Clip the global gradient norm (0 = off)")->capture_default_str();
  app.add_option("--epochs", c.epochs, "Passes over the training data")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-steps", c.max_steps, "Optimizer steps (overrides --epochs; -1 = from --epochs)")->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "Sequences per micro-batch")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--grad-accum", c.grad_accum, "Micro-batches per optimizer step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-len", c.max_len, "Longest sequence in tokens (longer ones are cut; 0 = no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--eval-split", c.eval_split, "Fraction of the records held out for evaluation")->capture_default_str();
  app.add_option("--save-every", c.save_every, "Steps between checkpoints (0: only at the end)")->capture_default_str();
  app.add_flag("--resume", c.resume, "Continue exactly from the latest checkpoint-N in the output directory");
  app.add_option("--init-adapter", c.init_adapter, "Start from this adapter (its rank, alpha and targets apply)");
  app.add_option("--seed", c.seed, "Seed for the adapter init, shuffling, eval split and dropout")->capture_default_str();
  app.add_option("--backend", o->backend, "auto, cpu or cuda")->capture_default_str();
  app.add_option("-t,--threads", c.threads, "CPU threads (default: all cores)");
  app.add_option("--precision", o->precision,
                 "cuda: tf32 (attention and backward products with 10-bit mantissas, ~1e-3) or fp32 (float32 throughout, slower)")
      ->capture_default_str();
  return [o] {
    TrainConfig cfg = o->cfg;
    cfg.targets = parse_lora_targets(o->targets);
    cfg.optimizer.kind = parse_optimizer(o->optimizer);
    cfg.schedule = parse_lr_schedule(o->schedule);
    cfg.backend = resolve_backend(o->backend);  // auto: cuda when a GPU is present
    if (o->precision != "tf32" && o->precision != "fp32") fail("--precision: expected tf32 or fp32, got '{}'", o->precision);
    cfg.tf32 = o->precision == "tf32";
    Model m = o->model.load();
    const bool tty = isatty(fileno(stderr)) != 0;
    int64_t last_line = -1;
    auto progress = [&](const StepMetrics& s) {
      const std::string stats = fmt::format("loss {:.4f}  lr {:.2e}  {:.0f} tok/s  {} elapsed  ETA {}", s.loss, s.lr, s.tokens_per_s,
                                            clock_str(s.elapsed_s), clock_str(s.eta_s));
      if (tty) {
        constexpr int kWidth = 30;
        const int fill = static_cast<int>(kWidth * s.step / std::max<int64_t>(1, s.total_steps));
        fmt::print(stderr, "\rstep {}/{} [{}{}] {}", s.step, s.total_steps, std::string(fill, '='), std::string(kWidth - fill, ' '),
                   stats);
        if (s.step == s.total_steps) fmt::print(stderr, "\n");
      } else if (s.step == s.total_steps || s.step * 20 / std::max<int64_t>(1, s.total_steps) != last_line) {
        last_line = s.step * 20 / std::max<int64_t>(1, s.total_steps);
        fmt::print(stderr, "step {}/{}  {}\n", s.step, s.total_steps, stats);
      }
    };
    const TrainSummary r = train_lora(m, cfg, progress);
    fmt::print("data: {}\n", r.dataset);
    fmt::print("trained steps {}..{} on {} examples ({} held out): loss {:.4f} -> {:.4f}{}\n", r.start_step, r.steps,
               r.train_examples, r.eval_examples, r.first_loss, r.last_loss,
               r.eval_loss >= 0 ? fmt::format(", eval loss {:.4f}", r.eval_loss) : "");
    fmt::print("adapter: {} (metrics.jsonl, loss_curve.svg, checkpoint-{})\n", cfg.out_dir, r.steps);
    fmt::print("engine: {}{}\n", r.engine,
               r.device_bytes > 0 ? fmt::format(", {:.2f} GiB of GPU memory in use", r.device_bytes / 1073741824.0) : "");
    return 0;
  };
}

}  // namespace tern::cli
