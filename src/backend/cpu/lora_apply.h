// The LoRA branch of an adapted linear on the CPU (BITNET_FACTS "Quantization math"):
// the branch sees the linear's float input x, before the int8 activation quantizer,
// and adds s * B(A x) to the linear's output, s = --lora scale * alpha / r.
// Plain float32 reference code; split in two halves so the engine can run the first
// over tokens and the second over output rows on its thread pool.
#pragma once
#include <cstdint>

#include "train/lora_adapter.h"

namespace tern::cpu {

// t[m, :rank] = A x[m] for M tokens; x is [M, w.in], t is [M, rank].
void lora_down(const LoraWeights& w, const float* x, int64_t M, float* t);
// y[m, o] += (B[o] . t[m]) * s for output rows o in [o0, o1); y is [M, w.out].
void lora_up_add(const LoraWeights& w, float s, const float* t, int64_t M, float* y, int64_t o0, int64_t o1);
// Both halves on one thread: y[M, out] += s * B(A x).
void lora_add(const LoraWeights& w, float s, const float* x, int64_t M, float* y);

}  // namespace tern::cpu
