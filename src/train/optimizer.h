// Optimizers, gradient clipping and learning-rate schedules for LoRA training, written to
// match PyTorch / HF transformers step for step:
//   AdamW (torch.optim.AdamW, decoupled decay): p *= 1 - lr*wd; m = b1 m + (1-b1) g;
//     v = b2 v + (1-b2) g^2; p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
//   SGD (torch.optim.SGD, no momentum): g += wd * p; p -= lr * g  (so with wd = 0 one step
//     is exactly p -= lr * grad)
//   clip_grad_norm (torch.nn.utils.clip_grad_norm_): scale every gradient by
//     max_norm / (total_norm + 1e-6) when that is < 1
//   schedules (transformers.get_*_schedule_with_warmup): linear warmup from 0 over
//     warmup steps, then constant or half-cosine down to 0 at total_steps.
// The state (moments and step count) is saved and restored for --resume.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tern {

enum class OptimizerKind { AdamW, Sgd };
OptimizerKind parse_optimizer(const std::string& s);  // "adamw" | "sgd"; throws

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::AdamW;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

// One trainable tensor: parameters and their gradient (same size), owned elsewhere.
struct ParamRef {
  std::string name;
  std::span<float> value;
  std::span<float> grad;
};

class Optimizer {
 public:
  Optimizer(OptimizerOptions o, std::vector<ParamRef> params);
  // Applies one update with learning rate lr to every parameter and increments step().
  void step(double lr);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  const std::vector<ParamRef>& params() const { return params_; }
  // Moments + step count in a safetensors file (atomic write); load checks that names and
  // sizes match these parameters and throws tern::Error naming the file otherwise.
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);
  // The moments flat in parameter order (an engine that runs the update on its device,
  // train/grad_engine.h), and setting them with the step count.
  void export_moments(std::vector<float>& m, std::vector<float>& v) const;
  void import_moments(const std::vector<float>& m, const std::vector<float>& v, int64_t steps);

 private:
  OptimizerOptions o_;
  std::vector<ParamRef> params_;
  std::vector<std::vector<float>> m_, v_;
  int64_t t_ = 0;
};

// Scales the gradients so that their global L2 norm is at most max_norm (<= 0: no-op).
// Returns the norm before clipping.
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm);

enum class LrSchedule { Constant, Cosine };
LrSchedule parse_lr_schedule(const std::string& s);  // "constant" | "cosine"; throws
// Learning rate for 0-based optimizer step `step` of total_steps.
double scheduled_lr(LrSchedule s, double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps);

}  // namespace tern
