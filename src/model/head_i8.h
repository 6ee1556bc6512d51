// The optional int8 LM head (`--lm-head int8`), shared by the CPU and CUDA engines so
// that both compute the same logits: every row v of the tied embedding is quantized
// symmetrically with its own scale,
//   scale[v] = max|w_v| / 127,  q[v][c] = clamp(rint(w_v[c] * 127 / max|w_v|), -127, 127)
// (an all-zero row gets scale 0 and q 0), and the final-normed hidden state x is
// quantized per token exactly like a ternary linear's input (cpu::quantize_row_i8,
// s = 127 / max|x|). Then
//   logit[v] = float(sum_c q[v][c] * qx[c]) / s * scale[v]      (two float roundings)
// The int32 dot is exact, so backends differ only if they round those two steps
// differently (they must not). Half the bytes of an F16 head; not exact.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace tern {

class ThreadPool;

struct HeadI8 {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> q;     // rows x cols, row-major
  std::vector<float> scale;  // rows
};

HeadI8 quantize_head_i8(const FloatMatrix& emb, ThreadPool& pool);

inline float head_i8_logit(int32_t dot, float x_scale, float row_scale) {
  return static_cast<float>(dot) / x_scale * row_scale;
}

}  // namespace tern
