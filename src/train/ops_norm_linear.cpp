// RMSNorm, ternary linear (STE), LoRA branch and gated activations: forward and backward
// (train/ops.h). Loops are plain; the outer loop of each is over independent rows or
// tokens unless a comment says where the writes would collide when threaded.
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

// Row r of a tern2 matrix as int8 {-1, 0, 1}, padded_cols values (model/ternary.h layout:
// byte j of a 128-block holds weights j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0).
void unpack_row(const TernaryMatrix& W, int64_t r, int8_t* out) {
  const uint8_t* row = W.data + r * W.row_bytes;
  for (int64_t b = 0; b < W.padded_cols() / kTernBlock; ++b) {
    const uint8_t* p = row + b * 32;
    int8_t* o = out + b * kTernBlock;
    for (int j = 0; j < 32; ++j) {
      const int byte = p[j];
      o[j] = static_cast<int8_t>((byte >> 6) - 1);
      o[j + 32] = static_cast<int8_t>(((byte >> 4) & 3) - 1);
      o[j + 64] = static_cast<int8_t>(((byte >> 2) & 3) - 1);
      o[j + 96] = static_cast<int8_t>((byte & 3) - 1);
    }
  }
}

void check_dropout(float p, const uint8_t* mask) {
  if (!(p >= 0.0f && p < 1.0f)) fail("lora: dropout probability {} is outside [0, 1)", p);
  if (p > 0.0f && !mask) fail("lora: dropout {} needs a mask", p);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// RMSNorm

template <class T>
void rmsnorm_fwd(const T* x, const float* w, int64_t M, int64_t n, float eps, T* y) {
  for (int64_t m = 0; m < M; ++m) {  // parallel over rows
    const T* xr = x + m * n;
    T* yr = y + m * n;
    const double ss = cpu::sum_squares(xr, n);
    // The engine's order: r in T from the double mean; out = w * (x * r).
    const T r = T(1) / std::sqrt(static_cast<T>(ss / n) + static_cast<T>(eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = static_cast<T>(w[i]) * (xr[i] * r);
  }
}

template <class T>
void rmsnorm_bwd(const T* x, const float* w, const T* dy, int64_t M, int64_t n, float eps, T* dx, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {  // parallel over rows
    const T* xr = x + m * n;
    const T* dyr = dy + m * n;
    T* dxr = dx + m * n;
    const double ss = cpu::sum_squares(xr, n);  // (the forward's r, bit for bit)
    double dot = 0;
    for (int64_t i = 0; i < n; ++i) dot += static_cast<double>(w[i]) * dyr[i] * xr[i];
    const T r = T(1) / std::sqrt(static_cast<T>(ss / n) + static_cast<T>(eps));
    const double rd = static_cast<double>(r);
    const T coef = static_cast<T>(rd * rd * rd / static_cast<double>(n) * dot);
    for (int64_t i = 0; i < n; ++i) {
      const T g = r * (static_cast<T>(w[i]) * dyr[i]) - xr[i] * coef;
      dxr[i] = accumulate ? dxr[i] + g : g;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Ternary linear

template <class T>
void ternary_linear_fwd(const T* x, const TernaryMatrix& W, int64_t M, T* y, ActQuant quant, bool accumulate) {
  const int64_t in = W.cols, out = W.rows, P = W.padded_cols();
  if (quant == ActQuant::Int8) {
    // Exactly the engine (cpu_engine.cpp ternary_linear): quantize every token, then
    // rows outer, tokens inner, y = float(int dot) / s * m.
    std::vector<float> xf;
    const float* xs;
    if constexpr (std::is_same_v<T, float>) {
      xs = x;
    } else {
      xf.assign(x, x + M * in);
      xs = xf.data();
    }
    std::vector<int8_t> q(M * P);
    std::vector<float> s(M);
    std::vector<int32_t> qsum(M);
    for (int64_t m = 0; m < M; ++m) s[m] = cpu::quantize_row_i8(xs + m * in, in, P, q.data() + m * P, &qsum[m]);
    for (int64_t r = 0; r < out; ++r) {  // parallel over rows
      const uint8_t* row = W.data + r * W.row_bytes;
      for (int64_t m = 0; m < M; ++m) {
        const int32_t d = cpu::ternary_dot(row, q.data() + m * P, P, qsum[m]);
        const float v = static_cast<float>(d) / s[m] * W.scale;
        T& o = y[m * out + r];
        if constexpr (std::is_same_v<T, float>) {
          o = accumulate ? o + v : v;
        } else {
          o = accumulate ? o + static_cast<T>(v) : static_cast<T>(v);
        }
      }
    }
    return;
  }
  // The STE surrogate y = m * Wq x in T.
  std::vector<int8_t> wr(P);
  for (int64_t r = 0; r < out; ++r) {  // parallel over rows
    unpack_row(W, r, wr.data());
    for (int64_t m = 0; m < M; ++m) {
      const T* xm = x + m * in;
      T acc = 0;
      for (int64_t c = 0; c < in; ++c) acc += static_cast<T>(wr[c]) * xm[c];
      const T v = static_cast<T>(W.scale) * acc;
      T& o = y[m * out + r];
      o = accumulate ? o + v : v;
    }
  }
}

template <class T>
void ternary_linear_bwd(const TernaryMatrix& W, const T* dy, int64_t M, T* dx, bool accumulate) {
  const int64_t in = W.cols, out = W.rows;
  if (!accumulate) std::fill(dx, dx + M * in, T(0));
  std::vector<int8_t> wr(W.padded_cols());
  // Rows outer so each weight row is unpacked once per call. Threaded, split the tokens
  // (each thread unpacking the rows itself) or the columns: rows race on dx.
  for (int64_t r = 0; r < out; ++r) {
    unpack_row(W, r, wr.data());
    for (int64_t m = 0; m < M; ++m) {
      const T g = dy[m * out + r] * static_cast<T>(W.scale);
      if (g == T(0)) continue;
      T* d = dx + m * in;
      for (int64_t c = 0; c < in; ++c) d[c] += g * static_cast<T>(wr[c]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// LoRA

void dropout_mask(int64_t n, float p, uint64_t seed, uint8_t* mask) {
  if (!(p >= 0.0f && p < 1.0f)) fail("lora: dropout probability {} is outside [0, 1)", p);
  const uint32_t thr = dropout_threshold(p);
  uint64_t state = seed, z = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i % 4 == 0) {
      z = (state += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
    }
    mask[i] = ((z >> (16 * (i % 4))) & 0xffffu) >= thr ? 1 : 0;
  }
}

template <class T>
void lora_fwd(const T* x, const T* A, const T* B, int64_t M, int64_t in, int64_t r, int64_t out, float scaling,
              const uint8_t* mask, float p, T* u, T* y, bool accumulate) {
  check_dropout(p, mask);
  const bool drop = p > 0.0f;
  const T keep = T(1) / (T(1) - static_cast<T>(p));
  std::vector<T> xd(in);
  for (int64_t m = 0; m < M; ++m) {  // parallel over tokens
    const T* xm = x + m * in;
    if (drop) {
      for (int64_t i = 0; i < in; ++i) xd[i] = mask[m * in + i] ? xm[i] * keep : T(0);
      xm = xd.data();
    }
    T* um = u + m * r;
    for (int64_t j = 0; j < r; ++j) {
      const T* a = A + j * in;
      T acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += a[i] * xm[i];
      um[j] = acc;
    }
    T* ym = y + m * out;
    for (int64_t o = 0; o < out; ++o) {
      const T* b = B + o * r;
      T acc = 0;
      for (int64_t j = 0; j < r; ++j) acc += b[j] * um[j];
      const T v = static_cast<T>(scaling) * acc;
      ym[o] = accumulate ? ym[o] + v : v;
    }
  }
}

template <class T>
void lora_bwd(const T* x, const T* A, const T* B, const T* u, const T* dy, int64_t M, int64_t in, int64_t r,
              int64_t out, float scaling, const uint8_t* mask, float p, T* dx, T* dA, T* dB, bool accumulate) {
  check_dropout(p, mask);
  const bool drop = p > 0.0f;
  const T keep = T(1) / (T(1) - static_cast<T>(p));
  const T sc = static_cast<T>(scaling);
  std::vector<T> du(r), xd(in);
  // Tokens outer; threaded, dA and dB would need per-thread partial sums.
  for (int64_t m = 0; m < M; ++m) {
    const T* dym = dy + m * out;
    const T* um = u + m * r;
    std::fill(du.begin(), du.end(), T(0));
    for (int64_t o = 0; o < out; ++o) {
      const T g = sc * dym[o];
      const T* b = B + o * r;
      T* db = dB + o * r;
      for (int64_t j = 0; j < r; ++j) {
        du[j] += g * b[j];
        db[j] += g * um[j];
      }
    }
    const T* xm = x + m * in;
    for (int64_t i = 0; i < in; ++i) xd[i] = !drop ? xm[i] : mask[m * in + i] ? xm[i] * keep : T(0);
    for (int64_t j = 0; j < r; ++j) {
      T* da = dA + j * in;
      for (int64_t i = 0; i < in; ++i) da[i] += du[j] * xd[i];
    }
    if (!dx) continue;
    T* dxm = dx + m * in;
    for (int64_t i = 0; i < in; ++i) {
      T g = 0;
      for (int64_t j = 0; j < r; ++j) g += du[j] * A[j * in + i];
      if (drop) g = mask[m * in + i] ? g * keep : T(0);
      dxm[i] = accumulate ? dxm[i] + g : g;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Gated activations (the engine's expressions, cpu::gated_activation)

template <class T>
void gated_act_fwd(const T* g, const T* u, int64_t n, Activation act, T* h) {
  switch (act) {
    case Activation::Relu2:
      for (int64_t i = 0; i < n; ++i) {
        const T r = std::max(g[i], T(0));
        h[i] = r * r * u[i];
      }
      return;
    case Activation::Silu:
      for (int64_t i = 0; i < n; ++i) h[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
      return;
    case Activation::Gelu: {
      const T c = static_cast<T>(0.70710678f);
      for (int64_t i = 0; i < n; ++i) h[i] = T(0.5) * g[i] * (T(1) + std::erf(g[i] * c)) * u[i];
      return;
    }
  }
}

template <class T>
void gated_act_bwd(const T* g, const T* u, const T* dh, int64_t n, Activation act, T* dg, T* du) {
  switch (act) {
    case Activation::Relu2:
      for (int64_t i = 0; i < n; ++i) {
        const T r = std::max(g[i], T(0));
        du[i] = dh[i] * (r * r);
        dg[i] = dh[i] * u[i] * (T(2) * r);
      }
      return;
    case Activation::Silu:
      for (int64_t i = 0; i < n; ++i) {
        const T sig = T(1) / (T(1) + std::exp(-g[i]));
        du[i] = dh[i] * (g[i] / (T(1) + std::exp(-g[i])));
        dg[i] = dh[i] * u[i] * (sig * (T(1) + g[i] * (T(1) - sig)));
      }
      return;
    case Activation::Gelu: {
      // The derivative of the engine's function, constant c = 0.70710678f included.
      const T c = static_cast<T>(0.70710678f);
      const T k = static_cast<T>(1.12837916709551257390);  // 2 / sqrt(pi)
      for (int64_t i = 0; i < n; ++i) {
        const T z = g[i] * c;
        du[i] = dh[i] * (T(0.5) * g[i] * (T(1) + std::erf(z)));
        dg[i] = dh[i] * u[i] * (T(0.5) * (T(1) + std::erf(z)) + T(0.5) * g[i] * c * k * std::exp(-z * z));
      }
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Explicit instantiations

#define TERN_INSTANTIATE(T)                                                                                       \
  template void rmsnorm_fwd<T>(const T*, const float*, int64_t, int64_t, float, T*);                              \
  template void rmsnorm_bwd<T>(const T*, const float*, const T*, int64_t, int64_t, float, T*, bool);              \
  template void ternary_linear_fwd<T>(const T*, const TernaryMatrix&, int64_t, T*, ActQuant, bool);               \
  template void ternary_linear_bwd<T>(const TernaryMatrix&, const T*, int64_t, T*, bool);                         \
  template void lora_fwd<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, float,             \
                            const uint8_t*, float, T*, T*, bool);                                                 \
  template void lora_bwd<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, \
                            float, const uint8_t*, float, T*, T*, T*, bool);                                      \
  template void gated_act_fwd<T>(const T*, const T*, int64_t, Activation, T*);                                    \
  template void gated_act_bwd<T>(const T*, const T*, const T*, int64_t, Activation, T*, T*);

TERN_INSTANTIATE(float)
TERN_INSTANTIATE(double)
#undef TERN_INSTANTIATE

}  // namespace tern::train
