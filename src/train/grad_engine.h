// Where the LoRA loss and gradient of a micro-batch are computed: the CPU reference
// (train/lora_model.h, one sequence per thread) or the GPU (backend/cuda/lora_train.cu,
// the whole micro-batch at once). The trainer (train/trainer.cpp) drives either the same
// way: set_params after every optimizer step, zero_grads, run each micro-batch, get_grads.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "model/model.h"
#include "train/dataset.h"
#include "train/lora_model.h"
#include "train/optimizer.h"

namespace tern::train {

class GradEngine {
 public:
  virtual ~GradEngine() = default;
  virtual std::string name() const = 0;
  // The adapter values used from now on (same layout for the engine's whole life).
  virtual void set_params(const LoraSet<float>& p) = 0;
  virtual void zero_grads() = 0;
  // Loss of micro-batch b normalised by n_norm (every trained token of the step); with
  // grad, its gradient is added to the accumulated gradients. dropout: peft's LoRA
  // dropout p, row r of the batch drawing its masks from seeds[r] (StepOptions).
  virtual double run(const Batch& b, int64_t n_norm, float dropout, std::span<const uint64_t> seeds, bool grad) = 0;
  // The accumulated gradients, into g (the layout of the params).
  virtual void get_grads(LoraSet<float>& g) = 0;
  // Device memory in use, in bytes (0 on the CPU).
  virtual size_t device_bytes() const { return 0; }

  // An engine that owns the optimizer keeps parameters, gradients and moments on its
  // device: the trainer calls optimizer_step instead of clip_grad_norm + Optimizer::step
  // (the same arithmetic, bit for bit) and fetches parameters and moments only to save.
  virtual bool owns_optimizer() const { return false; }
  // clip_grad_norm(max_norm) then one update (step number t, from 1) with learning rate
  // lr; returns the gradient norm before clipping.
  virtual double optimizer_step(const OptimizerOptions& o, double lr, double max_norm, int64_t t);
  virtual void get_params(LoraSet<float>& p);
  // AdamW moments, flat in parameter order (per layer and projection: A, then B).
  virtual void get_moments(std::vector<float>& m, std::vector<float>& v);
  virtual void set_moments(const std::vector<float>& m, const std::vector<float>& v);
};

std::unique_ptr<GradEngine> make_cpu_grad_engine(const Model& m, int threads);
// max_rows x max_len: the largest micro-batch (rows padded to the same length) the GPU
// buffers are sized for. tf32: products with 10-bit mantissas where it pays (attention
// on TF32 tensor cores, the backward's GEMMs with the float operand as one F16 term
// after an exact row scale; ~1e-3 relative, finer than peft's bf16) instead of float32
// throughout. Throws tern::Error without CUDA.
std::unique_ptr<GradEngine> make_cuda_grad_engine(const Model& m, const LoraSet<float>& layout, int64_t max_rows, int64_t max_len,
                                                  bool tf32 = false);

}  // namespace tern::train
