#include "backend/cpu/lora_apply.h"

#include <vector>

#include "backend/cpu/kernels.h"

namespace tern::cpu {

namespace {
int64_t rank_of(const LoraWeights& w) { return w.in > 0 ? static_cast<int64_t>(w.A.size()) / w.in : 0; }
}  // namespace

void lora_down(const LoraWeights& w, const float* x, int64_t M, float* t) {
  const int64_t r = rank_of(w);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < r; ++k) t[m * r + k] = dot_f32(w.A.data() + k * w.in, x + m * w.in, w.in);
  }
}

void lora_up_add(const LoraWeights& w, float s, const float* t, int64_t M, float* y, int64_t o0, int64_t o1) {
  const int64_t r = rank_of(w);
  // peft computes base(x) + lora_B(lora_A(x)) * scaling: the scale multiplies the
  // finished B-product, which is what is added here.
  for (int64_t o = o0; o < o1; ++o) {
    const float* b = w.B.data() + o * r;
    for (int64_t m = 0; m < M; ++m) y[m * w.out + o] += dot_f32(b, t + m * r, r) * s;
  }
}

void lora_add(const LoraWeights& w, float s, const float* x, int64_t M, float* y) {
  std::vector<float> t(M * rank_of(w));
  lora_down(w, x, M, t.data());
  lora_up_add(w, s, t.data(), M, y, 0, w.out);
}

}  // namespace tern::cpu
