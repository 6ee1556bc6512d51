#include "backend/cpu/kernels.h"

#include <algorithm>
#include <cmath>

#include "util/half.h"

namespace tern::cpu {

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  double ss = 0;  // double: the sum of 6912 squares must not lose the small ones
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

float quantize_row_i8(const float* x, int64_t n, int64_t padded, int8_t* q, int32_t* qsum) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = 127.0f / std::max(amax, 1e-5f);
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    // nearbyint rounds half to even under the default rounding mode, like torch.round.
    float r = std::nearbyint(x[i] * s);
    r = std::min(127.0f, std::max(-128.0f, r));
    q[i] = static_cast<int8_t>(r);
    sum += q[i];
  }
  for (int64_t i = n; i < padded; ++i) q[i] = 0;
  *qsum = sum;
  return s;
}

void rope_inv_freq(float theta, int64_t head_dim, float* inv_freq) {
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, e);
  }
}

void rope_neox(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + h * head_dim;
      const float a = v[i], b = v[i + half];
      v[i] = a * c - b * s;
      v[i + half] = b * c + a * s;
    }
  }
}

namespace {
inline float widen(float x) { return x; }
inline float widen(uint16_t h) { return f16_to_f32(h); }
// q . k in dot_f32's fixed lane order (SIMD where the CPU has it; train::attention_fwd
// uses the same dot, so the training forward stays the engine's float for float).
inline float key_dot(const float* q, const float* k, int64_t n) { return dot_f32(k, q, n); }
inline float key_dot(const float* q, const uint16_t* k, int64_t n) { return dot_half_f32(k, false, q, n); }

template <class T>
void attention_head_t(const float* q, const T* k, const T* v, int64_t stride, int64_t n_ctx, int64_t head_dim, float* scores, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  float mx = -INFINITY;
  for (int64_t t = 0; t < n_ctx; ++t) {
    scores[t] = key_dot(q, k + t * stride, head_dim) * scale;
    mx = std::max(mx, scores[t]);
  }
  // Below -104 expf is exactly 0, but glibc reaches it through its underflow handler (2 %
  // of a random model's pp512, whose scores are far apart); a key of weight 0 adds
  // nothing to out (V is finite), so it is skipped. Both leave every result bit unchanged.
  float sum = 0;
  for (int64_t t = 0; t < n_ctx; ++t) {
    const float d = scores[t] - mx;
    scores[t] = d < -104.0f ? 0.0f : std::exp(d);
    sum += scores[t];
  }
  const float inv = 1.0f / sum;
  std::fill(out, out + head_dim, 0.0f);
  for (int64_t t = 0; t < n_ctx; ++t) {
    const float p = scores[t] * inv;
    if (p == 0.0f) continue;
    const T* vt = v + t * stride;
    for (int64_t i = 0; i < head_dim; ++i) out[i] += p * widen(vt[i]);
  }
}
}  // namespace

void attention_head(const float* q, const float* k, const float* v, int64_t stride, int64_t n_ctx, int64_t head_dim,
                    float* scores, float* out) {
  attention_head_t(q, k, v, stride, n_ctx, head_dim, scores, out);
}

void attention_head(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t n_ctx, int64_t head_dim,
                    float* scores, float* out) {
  attention_head_t(q, k, v, stride, n_ctx, head_dim, scores, out);
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n) {
  int32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<int32_t>(a[i]) * b[i];
  return acc;
}

void gated_activation(const float* g, const float* u, int64_t n, Activation act, float* h) {
  switch (act) {
    case Activation::Relu2:
      for (int64_t i = 0; i < n; ++i) {
        const float r = std::max(g[i], 0.0f);
        h[i] = r * r * u[i];
      }
      return;
    case Activation::Silu:
      for (int64_t i = 0; i < n; ++i) h[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      return;
    case Activation::Gelu:
      for (int64_t i = 0; i < n; ++i) h[i] = 0.5f * g[i] * (1.0f + std::erf(g[i] * 0.70710678f)) * u[i];
      return;
  }
}

}  // namespace tern::cpu
