// Tied LM head and causal-LM cross entropy: forward and backward (train/ops.h).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "backend/cpu/kernels.h"
#include "tern/error.h"
#include "train/ops.h"

// Compiled with -ffp-contract=off like the CPU engine (CMakeLists.txt), so the float
// forwards round exactly as the engine does.

namespace tern::train {

namespace {

// Positions per pass over the head: the embedding (657 MB on the 2B model) is read once
// per chunk, the logits of a chunk are kChunk * V values.
constexpr int64_t kChunk = 16;

template <class T>
T head_dot(const float* e, const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return cpu::dot_f32(e, x, n);  // the engine's exact head
  } else {
    T d = 0;
    for (int64_t i = 0; i < n; ++i) d += static_cast<T>(e[i]) * x[i];
    return d;
  }
}

// The kept positions, after checking every label.
std::vector<int64_t> kept_rows(const int32_t* labels, int64_t M, int64_t V) {
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < M; ++i) {
    if (labels[i] == kIgnore) continue;
    if (labels[i] < 0 || labels[i] >= V)
      fail("cross entropy: label {} at position {} is outside the vocabulary [0, {}) (and not {})", labels[i], i, V,
           kIgnore);
    kept.push_back(i);
  }
  return kept;
}

// The forward (lse_in == nullptr) and/or the backward (dxn != nullptr) over the kept rows.
// lse_in given: the saved log-sum-exps are used instead of recomputing them.
template <class T>
double cross_entropy(const T* xn, const FloatMatrix& E, const int32_t* labels, int64_t M, int64_t n_norm,
                     double* lse_out, const double* lse_in, double dloss, T* dxn) {
  const int64_t V = E.rows, H = E.cols;
  const std::vector<int64_t> kept = kept_rows(labels, M, V);
  if (lse_out) std::fill(lse_out, lse_out + M, 0.0);
  if (dxn) std::fill(dxn, dxn + M * H, T(0));
  if (kept.empty()) return 0.0;
  const double norm = n_norm > 0 ? static_cast<double>(n_norm) : static_cast<double>(kept.size());
  const double gscale = dloss / norm;
  std::vector<T> x(kChunk * H), logits(kChunk * V);
  std::vector<double> acc(dxn ? kChunk * H : 0);
  std::vector<float> e(H);
  double loss = 0;
  for (size_t c0 = 0; c0 < kept.size(); c0 += kChunk) {
    const int64_t rows = std::min<int64_t>(kChunk, static_cast<int64_t>(kept.size() - c0));
    for (int64_t i = 0; i < rows; ++i) std::copy_n(xn + kept[c0 + i] * H, H, x.data() + i * H);
    lm_head_logits(x.data(), E, rows, logits.data());
    for (int64_t i = 0; i < rows; ++i) {  // parallel over rows
      const int64_t row = kept[c0 + i];
      T* l = logits.data() + i * V;
      double lse;
      if (lse_in) {
        lse = lse_in[row];
      } else {
        double mx = -INFINITY;
        for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(l[v]));
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(l[v]) - mx);
        lse = mx + std::log(sum);
      }
      if (lse_out) lse_out[row] = lse;
      loss += lse - static_cast<double>(l[labels[row]]);
      if (!dxn) continue;
      // dlogits = gscale * (softmax - onehot), in place over the logits.
      for (int64_t v = 0; v < V; ++v) l[v] = static_cast<T>(gscale * std::exp(static_cast<double>(l[v]) - lse));
      l[labels[row]] -= static_cast<T>(gscale);
    }
    if (!dxn) continue;
    // dxn = E^T dlogits, vocabulary outer (each row converted once per chunk), summed in
    // double. Threaded, split the hidden dimension or give each thread its own acc.
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t v = 0; v < V; ++v) {
      E.row_to_f32(v, e.data());
      for (int64_t i = 0; i < rows; ++i) {
        const double d = static_cast<double>(logits[i * V + v]);
        double* a = acc.data() + i * H;
        for (int64_t h = 0; h < H; ++h) a[h] += d * e[h];
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      T* out = dxn + kept[c0 + i] * H;
      for (int64_t h = 0; h < H; ++h) out[h] = static_cast<T>(acc[i * H + h]);
    }
  }
  return loss / norm;
}

}  // namespace

template <class T>
void lm_head_logits(const T* xn, const FloatMatrix& E, int64_t M, T* logits) {
  const int64_t V = E.rows, H = E.cols;
  std::vector<float> e(H);
  for (int64_t v = 0; v < V; ++v) {  // parallel over the vocabulary, as the engine
    E.row_to_f32(v, e.data());
    for (int64_t i = 0; i < M; ++i) logits[i * V + v] = head_dot(e.data(), xn + i * H, H);
  }
}

template <class T>
double cross_entropy_fwd(const T* xn, const FloatMatrix& E, const int32_t* labels, int64_t M, int64_t n_norm,
                         double* lse) {
  return cross_entropy<T>(xn, E, labels, M, n_norm, lse, nullptr, 0.0, nullptr);
}

template <class T>
void cross_entropy_bwd(const T* xn, const FloatMatrix& E, const int32_t* labels, const double* lse, int64_t M,
                       int64_t n_norm, double dloss, T* dxn) {
  cross_entropy<T>(xn, E, labels, M, n_norm, nullptr, lse, dloss, dxn);
}

template <class T>
double cross_entropy_fwd_bwd(const T* xn, const FloatMatrix& E, const int32_t* labels, int64_t M, int64_t n_norm,
                             double dloss, T* dxn) {
  return cross_entropy<T>(xn, E, labels, M, n_norm, nullptr, nullptr, dloss, dxn);
}

#define TERN_INSTANTIATE(T)                                                                                        \
  template void lm_head_logits<T>(const T*, const FloatMatrix&, int64_t, T*);                                       \
  template double cross_entropy_fwd<T>(const T*, const FloatMatrix&, const int32_t*, int64_t, int64_t, double*);    \
  template void cross_entropy_bwd<T>(const T*, const FloatMatrix&, const int32_t*, const double*, int64_t, int64_t, \
                                     double, T*);                                                                   \
  template double cross_entropy_fwd_bwd<T>(const T*, const FloatMatrix&, const int32_t*, int64_t, int64_t, double,  \
                                           T*);

TERN_INSTANTIATE(float)
TERN_INSTANTIATE(double)
#undef TERN_INSTANTIATE

}  // namespace tern::train
