#include "backend/cpu/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "util/half.h"

namespace tern::cpu {

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  const float r = 1.0f / std::sqrt(static_cast<float>(sum_squares(x, n) / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

// Written in 16-float vectors (it runs on the caller alone between decode's parallel
// loops: the plain loops took ~2.4 us for 2560 inputs), with the very results of
//   amax = max_i |x_i|,  q_i = clamp(nearbyint(x_i * s), -128, 127):
// - max is exact and order-free, and a > m ? a : m skips NaN as std::max(m, a) does, so
//   16 lanes give the same amax;
// - v + 1.5 * 2^23 - 1.5 * 2^23 rounds v to an integer half to even (the default
//   rounding mode, as nearbyint) for |v| < 2^22; v is clamped to [-129, 128] first,
//   which changes no result after the final clamp (and sends NaN to -128, as before).
namespace {
typedef float Lanes __attribute__((vector_size(64)));
typedef int32_t IntLanes __attribute__((vector_size(64)));
typedef int8_t ByteLanes __attribute__((vector_size(16)));

inline float quantize_one(float x, float s, int32_t& sum) {
  const float v = std::min(128.0f, std::max(-129.0f, x * s));
  const float r = std::min(127.0f, std::max(-128.0f, (v + 12582912.0f) - 12582912.0f));
  sum += static_cast<int32_t>(r);
  return r;
}
}  // namespace

float quantize_row_i8(const float* x, int64_t n, int64_t padded, int8_t* q, int32_t* qsum) {
  Lanes m[4] = {};  // (four chains: one waited on its own compare and blend)
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int k = 0; k < 4; ++k) {
      Lanes a;
      std::memcpy(&a, x + i + 16 * k, sizeof a);
      a = reinterpret_cast<Lanes>(reinterpret_cast<IntLanes>(a) & 0x7fffffff);  // |a|
      m[k] = a > m[k] ? a : m[k];
    }
  }
  float amax = 0;
  for (int k = 0; k < 4; ++k) {
    for (int j = 0; j < 16; ++j) amax = std::max(amax, m[k][j]);
  }
  for (; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = 127.0f / std::max(amax, 1e-5f);
  IntLanes sums = {};
  for (i = 0; i + 16 <= n; i += 16) {
    Lanes v;
    std::memcpy(&v, x + i, sizeof v);
    v *= s;
    v = v > -129.0f ? v : -129.0f;
    v = v < 128.0f ? v : 128.0f;
    v = (v + 12582912.0f) - 12582912.0f;  // 1.5 * 2^23
    v = v > -128.0f ? v : -128.0f;
    v = v < 127.0f ? v : 127.0f;
    const IntLanes t = __builtin_convertvector(v, IntLanes);
    sums += t;
    const ByteLanes b = __builtin_convertvector(t, ByteLanes);
    std::memcpy(q + i, &b, sizeof b);
  }
  int32_t sum = 0;
  for (int j = 0; j < 16; ++j) sum += sums[j];
  for (; i < n; ++i) q[i] = static_cast<int8_t>(quantize_one(x[i], s, sum));
  for (i = n; i < padded; ++i) q[i] = 0;
  *qsum = sum;
  return s;
}

void rope_inv_freq(float theta, int64_t head_dim, float* inv_freq) {
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, e);
  }
}

void rope_table(int64_t pos, const float* inv_freq, int64_t half, float* cs) {
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    cs[i] = std::cos(angle);
    cs[half + i] = std::sin(angle);
  }
}

void rope_neox_table(float* x, int64_t n_heads, int64_t head_dim, const float* cs) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half], c = cs[i], s = cs[half + i];
      v[i] = a * c - b * s;
      v[i + half] = b * c + a * s;
    }
  }
}

void rope_neox(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, const float* inv_freq) {
  std::vector<float> cs(static_cast<size_t>(head_dim / 2 * 2));
  rope_table(pos, inv_freq, head_dim / 2, cs.data());
  rope_neox_table(x, n_heads, head_dim, cs.data());
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
  // out = sum_t p_t v_t, each element summed over t in order (a multiply, then an add).
  // 64 columns at a time in four 16-float vectors held across all of t: summed into out in
  // memory, every position's adds waited on the previous position's stores (~60 % of a
  // decode attention's time). Vector extensions because GCC kept a local array of 64 on
  // the stack (the same store-to-load chain).
  typedef float Lanes __attribute__((vector_size(64)));
  auto load = [](const T* p) {
    Lanes v;
    if constexpr (std::is_same_v<T, float>) {
      std::memcpy(&v, p, sizeof v);
    } else {
      for (int j = 0; j < 16; ++j) v[j] = widen(p[j]);
    }
    return v;
  };
  int64_t c0 = 0;
  for (; c0 + 64 <= head_dim; c0 += 64) {
    Lanes a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = 0; t < n_ctx; ++t) {
      const float p = scores[t] * inv;
      if (p == 0.0f) continue;
      const T* vt = v + t * stride + c0;
      a0 += p * load(vt), a1 += p * load(vt + 16), a2 += p * load(vt + 32), a3 += p * load(vt + 48);
    }
    std::memcpy(out + c0, &a0, sizeof a0), std::memcpy(out + c0 + 16, &a1, sizeof a1);
    std::memcpy(out + c0 + 32, &a2, sizeof a2), std::memcpy(out + c0 + 48, &a3, sizeof a3);
  }
  if (c0 == head_dim) return;
  std::fill(out + c0, out + head_dim, 0.0f);  // (a head_dim that is not a multiple of 64)
  for (int64_t t = 0; t < n_ctx; ++t) {
    const float p = scores[t] * inv;
    if (p == 0.0f) continue;
    const T* vt = v + t * stride;
    for (int64_t i = c0; i < head_dim; ++i) out[i] += p * widen(vt[i]);
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
