// LoRA fine-tuning loop (`tern finetune`): data -> batches -> loss and gradient of every
// sequence (train/lora_model.h) -> gradient clipping -> optimizer step, with evaluation,
// checkpoints that --resume continues exactly, JSONL metrics and a loss-curve image.
//
// Loss normalisation as HF Trainer: each micro-batch's loss is the mean over its trained
// tokens, and the gradients of grad_accum micro-batches are averaged.
//
// Output directory:
//   adapter_config.json, adapter_model.safetensors   the final adapter (peft format)
//   checkpoint-N/   adapter files + optimizer.safetensors + trainer_state.json +
//                   metrics.jsonl after step N; written as checkpoint-N.tmp and renamed, so
//                   a killed run never leaves a half-written checkpoint
//   metrics.jsonl   one JSON object per step (and per evaluation)
//   loss_curve.svg  train and eval loss against the step
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/lora_adapter.h"
#include "train/optimizer.h"

namespace tern {

struct TrainConfig {
  std::string data, out_dir;
  // Adapter (ignored with init_adapter or resume: theirs apply).
  int rank = 16;
  float alpha = 32.0f;
  float dropout = 0.05f;
  std::vector<Proj> targets = {Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down};
  std::string init_adapter;
  // Optimisation.
  double lr = 2e-4;
  OptimizerOptions optimizer;
  LrSchedule schedule = LrSchedule::Cosine;
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0;  // 0 = off
  int64_t epochs = 1, max_steps = -1, batch_size = 4, grad_accum = 1, max_len = 512;
  double eval_split = 0.0;
  int64_t save_every = 0;  // steps between checkpoints (0: only at the end)
  bool resume = false;
  uint64_t seed = 42;
  int threads = 0;  // <= 0: all cores
  std::string backend = "cpu";  // where the loss and gradients are computed: cpu or cuda
  bool tf32 = true;             // cuda: 10-bit-mantissa products where it pays (grad_engine.h); false: float32
};

struct StepMetrics {
  int64_t step = 0, total_steps = 0, epoch = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, elapsed_s = 0, eta_s = 0;
  int64_t tokens = 0;
};

struct TrainSummary {
  int64_t steps = 0, start_step = 0, train_examples = 0, eval_examples = 0;
  double first_loss = 0, last_loss = 0, eval_loss = -1;  // -1: no eval split
  std::string dataset;  // describe(stats)
  std::string engine;   // GradEngine::name()
  size_t device_bytes = 0;  // peak device memory in use seen after a micro-batch (GPU)
};

// Trains on cfg.backend. `progress` is called after every step.
TrainSummary train_lora(const Model& m, const TrainConfig& cfg, const std::function<void(const StepMetrics&)>& progress);

// Writes an SVG line chart of loss per step (train) with eval points (step, loss).
void write_loss_curve(const std::string& path, const std::vector<std::pair<int64_t, double>>& train,
                      const std::vector<std::pair<int64_t, double>>& eval);

}  // namespace tern
