// The whole model with LoRA adapters as a differentiable function, for training:
// loss = causal-LM cross entropy of one sequence, and its gradient w.r.t. every LoRA
// A and B, by the reference ops of train/ops.h (CPU, plain C++).
//
// Gradient checkpointing per layer: the forward keeps only each layer's input residual
// stream x_l [T][H]; the backward recomputes one layer's forward at a time from x_l and
// walks back through it, so memory is O(L*T*H + one layer's activations) rather than all
// layers' activations.
//
// T = float with ActQuant::Int8 is the training computation (its logits are the
// inference engine's, LoRA included); T = double with ActQuant::None is the smooth
// surrogate the straight-through estimator differentiates, used to finite-difference
// check the whole backward (tests/unit/test_lora_model.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "model/model.h"
#include "train/lora_adapter.h"
#include "train/ops.h"
#include "train/optimizer.h"

namespace tern::train {

// LoRA parameters (or their gradients) in T: A[l][p] [rank][in], B[l][p] [out][rank],
// empty vectors where projection p of layer l is not adapted.
template <class T>
struct LoraSet {
  int rank = 0;
  float scaling = 0.0f;
  std::vector<std::array<std::vector<T>, kProjCount>> A, B;
};

template <class T>
LoraSet<T> lora_set_from(const LoraAdapter& a);
// Zeros with the same layout (gradient accumulators).
template <class T>
LoraSet<T> zeros_like(const LoraSet<T>& s);
// Writes the values of s back into a (same layout; float32 storage).
template <class T>
void store_into(const LoraSet<T>& s, LoraAdapter& a);
// The optimizer's view of parameters p and gradients g (same layout): every adapted A and
// B, named as peft names them, in layer / projection / A-then-B order (the order of the
// optimizer state files and of a GPU engine's flat buffers).
std::vector<ParamRef> lora_param_refs(LoraSet<float>& p, LoraSet<float>& g);

struct StepOptions {
  ActQuant quant = ActQuant::Int8;
  float dropout = 0.0f;        // LoRA dropout p (peft's lora_dropout); 0 = off
  uint64_t dropout_seed = 0;   // masks derived per (layer, projection) from this
};

// Loss of one sequence: tokens [Tn], labels [Tn] already aligned (labels[i] is the
// target after position i, or kIgnore), averaged over n_norm trained labels (<= 0: this
// sequence's count). When grads is non-null, the gradient of that loss is ADDED to it.
// Throws tern::Error on token ids outside the vocabulary.
template <class T>
double lora_loss_and_grad(const Model& m, const LoraSet<T>& p, const int32_t* tokens, const int32_t* labels, int64_t Tn,
                          int64_t n_norm, const StepOptions& o, LoraSet<T>* grads);

}  // namespace tern::train
