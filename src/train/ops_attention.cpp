// NeoX RoPE and causal GQA attention of one sequence: forward and backward (train/ops.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/kernels.h"
#include "train/ops.h"

// Compiled with -ffp-contract=off like the CPU engine (CMakeLists.txt), so the float
// forwards round exactly as the engine does.

namespace tern::train {

namespace {

// Rotates every head's pairs (j, j + half) of M rows by +angle (sign 1) or -angle (-1).
template <class T>
void rope_rotate(T* x, int64_t M, int64_t n_heads, int64_t head_dim, int64_t pos0, const float* inv_freq, int sign) {
  const int64_t half = head_dim / 2, n = n_heads * head_dim;
  for (int64_t m = 0; m < M; ++m) {  // parallel over rows
    T* row = x + m * n;
    for (int64_t i = 0; i < half; ++i) {
      // The angle in float, as cpu::rope_neox computes it.
      const float angle = static_cast<float>(pos0 + m) * inv_freq[i];
      const T c = std::cos(static_cast<T>(angle));
      const T s = sign * std::sin(static_cast<T>(angle));
      for (int64_t h = 0; h < n_heads; ++h) {
        T* v = row + h * head_dim;
        const T a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

// float: cpu::dot_f32, the engine's attention dot (its fixed lane order), so the float
// forward stays the engine's float for float; double (gradient checks): in order.
double dot(const double* a, const double* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d += a[i] * b[i];
  return d;
}
float dot(const float* a, const float* b, int64_t n) { return cpu::dot_f32(b, a, n); }

}  // namespace

template <class T>
void rope_neox_fwd(T* x, int64_t M, int64_t n_heads, int64_t head_dim, int64_t pos0, const float* inv_freq) {
  rope_rotate(x, M, n_heads, head_dim, pos0, inv_freq, 1);
}

template <class T>
void rope_neox_bwd(T* dy, int64_t M, int64_t n_heads, int64_t head_dim, int64_t pos0, const float* inv_freq) {
  rope_rotate(dy, M, n_heads, head_dim, pos0, inv_freq, -1);
}

template <class T>
void attention_fwd(const T* q, const T* k, const T* v, int64_t Tn, int64_t n_heads, int64_t n_kv, int64_t hd, T* out,
                   T* lse) {
  const int64_t group = n_heads / n_kv, QD = n_heads * hd, KD = n_kv * hd;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  std::vector<T> s(Tn);
  // Every (t, h) is independent: parallel over them (scratch s per thread).
  for (int64_t t = 0; t < Tn; ++t) {
    for (int64_t h = 0; h < n_heads; ++h) {
      const int64_t g = h / group;
      const T* qv = q + t * QD + h * hd;
      // cpu::attention_head's order of operations.
      T mx = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        s[j] = dot(qv, k + j * KD + g * hd, hd) * scale;
        mx = std::max(mx, s[j]);
      }
      T sum = 0;
      for (int64_t j = 0; j <= t; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      const T inv = T(1) / sum;
      T* o = out + t * QD + h * hd;
      std::fill(o, o + hd, T(0));
      for (int64_t j = 0; j <= t; ++j) {
        const T p = s[j] * inv;
        const T* vj = v + j * KD + g * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += p * vj[i];
      }
      lse[t * n_heads + h] = mx + std::log(sum);
    }
  }
}

template <class T>
void attention_bwd(const T* q, const T* k, const T* v, const T* lse, const T* dout, int64_t Tn, int64_t n_heads,
                   int64_t n_kv, int64_t hd, T* dq, T* dk, T* dv) {
  const int64_t group = n_heads / n_kv, QD = n_heads * hd, KD = n_kv * hd;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  std::fill(dq, dq + Tn * QD, T(0));
  std::fill(dk, dk + Tn * KD, T(0));
  std::fill(dv, dv + Tn * KD, T(0));
  std::vector<T> p(Tn), dp(Tn);
  // Parallel over KV heads: dk/dv of KV head g are written only by its query heads,
  // dq of (t, h) only here.
  for (int64_t g = 0; g < n_kv; ++g) {
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      for (int64_t t = 0; t < Tn; ++t) {
        const T* qv = q + t * QD + h * hd;
        const T* dov = dout + t * QD + h * hd;
        const T l = lse[t * n_heads + h];
        // p_j = softmax_j recomputed from the saved lse; dp_j = dout . v_j;
        // D = sum_j p_j dp_j (= dout . out); ds_j = p_j (dp_j - D).
        T D = 0;
        for (int64_t j = 0; j <= t; ++j) {
          p[j] = std::exp(dot(qv, k + j * KD + g * hd, hd) * scale - l);
          dp[j] = dot(dov, v + j * KD + g * hd, hd);
          D += p[j] * dp[j];
        }
        T* dqv = dq + t * QD + h * hd;
        for (int64_t j = 0; j <= t; ++j) {
          const T ds = p[j] * (dp[j] - D) * scale;
          const T* kj = k + j * KD + g * hd;
          T* dkj = dk + j * KD + g * hd;
          T* dvj = dv + j * KD + g * hd;
          for (int64_t i = 0; i < hd; ++i) {
            dvj[i] += p[j] * dov[i];
            dqv[i] += ds * kj[i];
            dkj[i] += ds * qv[i];
          }
        }
      }
    }
  }
}

#define TERN_INSTANTIATE(T)                                                                                  \
  template void rope_neox_fwd<T>(T*, int64_t, int64_t, int64_t, int64_t, const float*);                       \
  template void rope_neox_bwd<T>(T*, int64_t, int64_t, int64_t, int64_t, const float*);                       \
  template void attention_fwd<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, T*, T*); \
  template void attention_bwd<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                 int64_t, T*, T*, T*);

TERN_INSTANTIATE(float)
TERN_INSTANTIATE(double)
#undef TERN_INSTANTIATE

}  // namespace tern::train
