#include "train/lora_model.h"

#include <algorithm>

#include "backend/cpu/kernels.h"
#include "tern/error.h"

namespace tern::train {

namespace {

struct Shapes {
  int64_t H, QD, KV, F, hd, nh, nkv;
  explicit Shapes(const ModelConfig& c)
      : H(c.hidden), QD(c.q_dim()), KV(c.kv_dim()), F(c.ffn), hd(c.head_dim), nh(c.n_heads), nkv(c.n_kv_heads) {}
  int64_t in(Proj p) const { return p == Proj::O ? QD : p == Proj::Down ? F : H; }
  int64_t out(Proj p) const {
    switch (p) {
      case Proj::Q: return QD;
      case Proj::K:
      case Proj::V: return KV;
      case Proj::O:
      case Proj::Down: return H;
      default: return F;
    }
  }
};

const TernaryMatrix& weight(const Layer& L, Proj p) {
  switch (p) {
    case Proj::Q: return L.q;
    case Proj::K: return L.k;
    case Proj::V: return L.v;
    case Proj::O: return L.o;
    case Proj::Gate: return L.gate;
    case Proj::Up: return L.up;
    default: return L.down;
  }
}

// Everything one layer's backward needs, recomputed from the layer input x.
template <class T>
struct LayerActs {
  std::vector<T> xn1, q, k, v, qr, kr, att, lse, an, xmid, xn2, g, u, h, hn;
  std::array<std::vector<T>, kProjCount> lu;         // LoRA A x_d per projection
  std::array<std::vector<uint8_t>, kProjCount> mask;  // dropout masks
};

template <class T>
class Runner {
 public:
  Runner(const Model& m, const LoraSet<T>& p, int64_t Tn, const StepOptions& o)
      : m_(m), c_(m.config), s_(m.config), p_(p), Tn_(Tn), o_(o), inv_(c_.head_dim / 2) {
    cpu::rope_inv_freq(c_.rope_theta, c_.head_dim, inv_.data());
  }

  // Linear p of layer l on input x [Tn][in] into y [Tn][out]: ternary + LoRA (if any).
  void linear(int64_t l, Proj pr, const T* x, T* y, LayerActs<T>& a) const {
    const int pi = static_cast<int>(pr);
    ternary_linear_fwd<T>(x, weight(m_.layers[l], pr), Tn_, y, o_.quant);
    const auto& A = p_.A[l][pi];
    if (A.empty()) return;
    const int64_t in = s_.in(pr), out = s_.out(pr), r = p_.rank;
    a.lu[pi].assign(Tn_ * r, T(0));
    const uint8_t* mask = nullptr;
    if (o_.dropout > 0.0f) {
      a.mask[pi].resize(Tn_ * in);
      dropout_mask(Tn_ * in, o_.dropout, o_.dropout_seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(l * kProjCount + pi + 1),
                   a.mask[pi].data());
      mask = a.mask[pi].data();
    }
    lora_fwd<T>(x, A.data(), p_.B[l][pi].data(), Tn_, in, r, out, p_.scaling, mask, o_.dropout, a.lu[pi].data(), y, true);
  }

  // dx (+)= d(linear p)/dx . dy, and the LoRA gradients.
  void linear_bwd(int64_t l, Proj pr, const T* x, const T* dy, T* dx, bool accumulate, const LayerActs<T>& a,
                  LoraSet<T>* grads) const {
    const int pi = static_cast<int>(pr);
    ternary_linear_bwd<T>(weight(m_.layers[l], pr), dy, Tn_, dx, accumulate);
    const auto& A = p_.A[l][pi];
    if (A.empty()) return;
    lora_bwd<T>(x, A.data(), p_.B[l][pi].data(), a.lu[pi].data(), dy, Tn_, s_.in(pr), p_.rank, s_.out(pr), p_.scaling,
                a.mask[pi].empty() ? nullptr : a.mask[pi].data(), o_.dropout, dx, grads->A[l][pi].data(), grads->B[l][pi].data(),
                true);
  }

  // x [Tn][H] -> x_out; the layer's activations in a.
  void layer_fwd(int64_t l, const T* x, T* x_out, LayerActs<T>& a) const {
    const Layer& L = m_.layers[l];
    const int64_t H = s_.H, QD = s_.QD, KV = s_.KV, F = s_.F, n = Tn_;
    const float eps = c_.rms_eps;
    a.xn1.resize(n * H);
    rmsnorm_fwd<T>(x, L.attn_norm.data(), n, H, eps, a.xn1.data());
    a.q.resize(n * QD), a.k.resize(n * KV), a.v.resize(n * KV);
    linear(l, Proj::Q, a.xn1.data(), a.q.data(), a);
    linear(l, Proj::K, a.xn1.data(), a.k.data(), a);
    linear(l, Proj::V, a.xn1.data(), a.v.data(), a);
    a.qr = a.q, a.kr = a.k;
    rope_neox_fwd<T>(a.qr.data(), n, s_.nh, s_.hd, 0, inv_.data());
    rope_neox_fwd<T>(a.kr.data(), n, s_.nkv, s_.hd, 0, inv_.data());
    a.att.resize(n * QD), a.lse.resize(n * s_.nh);
    attention_fwd<T>(a.qr.data(), a.kr.data(), a.v.data(), n, s_.nh, s_.nkv, s_.hd, a.att.data(), a.lse.data());
    a.an.resize(n * QD);
    rmsnorm_fwd<T>(a.att.data(), L.attn_sub_norm.data(), n, QD, eps, a.an.data());
    std::vector<T> y(n * H);
    linear(l, Proj::O, a.an.data(), y.data(), a);
    a.xmid.resize(n * H);
    for (int64_t i = 0; i < n * H; ++i) a.xmid[i] = x[i] + y[i];
    a.xn2.resize(n * H);
    rmsnorm_fwd<T>(a.xmid.data(), L.ffn_norm.data(), n, H, eps, a.xn2.data());
    a.g.resize(n * F), a.u.resize(n * F), a.h.resize(n * F), a.hn.resize(n * F);
    linear(l, Proj::Gate, a.xn2.data(), a.g.data(), a);
    linear(l, Proj::Up, a.xn2.data(), a.u.data(), a);
    gated_act_fwd<T>(a.g.data(), a.u.data(), n * F, c_.act, a.h.data());
    rmsnorm_fwd<T>(a.h.data(), L.ffn_sub_norm.data(), n, F, eps, a.hn.data());
    linear(l, Proj::Down, a.hn.data(), y.data(), a);
    for (int64_t i = 0; i < n * H; ++i) x_out[i] = a.xmid[i] + y[i];
  }

  // dx_out [Tn][H] -> dx_in (written), LoRA gradients accumulated.
  void layer_bwd(int64_t l, const T* x, const T* dx_out, T* dx_in, const LayerActs<T>& a, LoraSet<T>* grads) const {
    const Layer& L = m_.layers[l];
    const int64_t H = s_.H, QD = s_.QD, KV = s_.KV, F = s_.F, n = Tn_;
    const float eps = c_.rms_eps;
    // Feed-forward block: x_out = xmid + Down(hn).
    std::vector<T> dxmid(dx_out, dx_out + n * H), dhn(n * F), dh(n * F), dg(n * F), du(n * F), dxn2(n * H);
    linear_bwd(l, Proj::Down, a.hn.data(), dx_out, dhn.data(), false, a, grads);
    rmsnorm_bwd<T>(a.h.data(), L.ffn_sub_norm.data(), dhn.data(), n, F, eps, dh.data());
    gated_act_bwd<T>(a.g.data(), a.u.data(), dh.data(), n * F, c_.act, dg.data(), du.data());
    linear_bwd(l, Proj::Gate, a.xn2.data(), dg.data(), dxn2.data(), false, a, grads);
    linear_bwd(l, Proj::Up, a.xn2.data(), du.data(), dxn2.data(), true, a, grads);
    rmsnorm_bwd<T>(a.xmid.data(), L.ffn_norm.data(), dxn2.data(), n, H, eps, dxmid.data(), true);
    // Attention block: xmid = x + O(an).
    std::vector<T> dan(n * QD), datt(n * QD), dq(n * QD), dk(n * KV), dv(n * KV), dxn1(n * H);
    linear_bwd(l, Proj::O, a.an.data(), dxmid.data(), dan.data(), false, a, grads);
    rmsnorm_bwd<T>(a.att.data(), L.attn_sub_norm.data(), dan.data(), n, QD, eps, datt.data());
    attention_bwd<T>(a.qr.data(), a.kr.data(), a.v.data(), a.lse.data(), datt.data(), n, s_.nh, s_.nkv, s_.hd, dq.data(),
                     dk.data(), dv.data());
    rope_neox_bwd<T>(dq.data(), n, s_.nh, s_.hd, 0, inv_.data());
    rope_neox_bwd<T>(dk.data(), n, s_.nkv, s_.hd, 0, inv_.data());
    linear_bwd(l, Proj::Q, a.xn1.data(), dq.data(), dxn1.data(), false, a, grads);
    linear_bwd(l, Proj::K, a.xn1.data(), dk.data(), dxn1.data(), true, a, grads);
    linear_bwd(l, Proj::V, a.xn1.data(), dv.data(), dxn1.data(), true, a, grads);
    std::copy(dxmid.begin(), dxmid.end(), dx_in);
    rmsnorm_bwd<T>(x, L.attn_norm.data(), dxn1.data(), n, H, eps, dx_in, true);
  }

  double run(const int32_t* tokens, const int32_t* labels, int64_t n_norm, LoraSet<T>* grads) const {
    const int64_t H = s_.H, n = Tn_, Ln = c_.n_layers;
    // Forward, keeping each layer's input (checkpoints).
    std::vector<std::vector<T>> xs(Ln + 1, std::vector<T>(n * H));
    std::vector<float> row(H);
    for (int64_t t = 0; t < n; ++t) {
      if (tokens[t] < 0 || tokens[t] >= c_.vocab) fail("token id {} at position {} is outside the vocabulary ({})", tokens[t], t, c_.vocab);
      m_.embedding.row_to_f32(tokens[t], row.data());
      std::copy(row.begin(), row.end(), xs[0].begin() + t * H);
    }
    for (int64_t l = 0; l < Ln; ++l) {
      LayerActs<T> a;
      layer_fwd(l, xs[l].data(), xs[l + 1].data(), a);
    }
    std::vector<T> xn(n * H);
    rmsnorm_fwd<T>(xs[Ln].data(), m_.output_norm.data(), n, H, c_.rms_eps, xn.data());
    if (grads == nullptr) {
      std::vector<double> lse(n);
      return cross_entropy_fwd<T>(xn.data(), m_.embedding, labels, n, n_norm, lse.data());
    }
    std::vector<T> dxn(n * H), dx(n * H), dprev(n * H);
    const double loss = cross_entropy_fwd_bwd<T>(xn.data(), m_.embedding, labels, n, n_norm, 1.0, dxn.data());
    rmsnorm_bwd<T>(xs[Ln].data(), m_.output_norm.data(), dxn.data(), n, H, c_.rms_eps, dx.data());
    for (int64_t l = Ln - 1; l >= 0; --l) {
      LayerActs<T> a;
      std::vector<T> out(n * H);
      layer_fwd(l, xs[l].data(), out.data(), a);  // recompute (checkpointing)
      layer_bwd(l, xs[l].data(), dx.data(), dprev.data(), a, grads);
      std::swap(dx, dprev);
    }
    return loss;
  }

 private:
  const Model& m_;
  const ModelConfig& c_;
  Shapes s_;
  const LoraSet<T>& p_;
  int64_t Tn_;
  StepOptions o_;
  std::vector<float> inv_;
};

}  // namespace

template <class T>
LoraSet<T> lora_set_from(const LoraAdapter& a) {
  LoraSet<T> s;
  s.rank = a.rank;
  s.scaling = a.scaling();
  s.A.resize(a.layers.size());
  s.B.resize(a.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      if (!a.layers[l][p]) continue;
      s.A[l][p].assign(a.layers[l][p]->A.begin(), a.layers[l][p]->A.end());
      s.B[l][p].assign(a.layers[l][p]->B.begin(), a.layers[l][p]->B.end());
    }
  }
  return s;
}

template <class T>
LoraSet<T> zeros_like(const LoraSet<T>& s) {
  LoraSet<T> z = s;
  for (auto& layer : z.A)
    for (auto& v : layer) std::fill(v.begin(), v.end(), T(0));
  for (auto& layer : z.B)
    for (auto& v : layer) std::fill(v.begin(), v.end(), T(0));
  return z;
}

template <class T>
void store_into(const LoraSet<T>& s, LoraAdapter& a) {
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      if (!a.layers[l][p]) continue;
      std::transform(s.A[l][p].begin(), s.A[l][p].end(), a.layers[l][p]->A.begin(), [](T x) { return static_cast<float>(x); });
      std::transform(s.B[l][p].begin(), s.B[l][p].end(), a.layers[l][p]->B.begin(), [](T x) { return static_cast<float>(x); });
    }
  }
}

template <class T>
double lora_loss_and_grad(const Model& m, const LoraSet<T>& p, const int32_t* tokens, const int32_t* labels, int64_t Tn,
                          int64_t n_norm, const StepOptions& o, LoraSet<T>* grads) {
  if (Tn <= 0) fail("lora_loss_and_grad: empty sequence");
  if (static_cast<int64_t>(p.A.size()) != m.config.n_layers) {
    fail("LoRA adapter has {} layers but the model has {}", p.A.size(), m.config.n_layers);
  }
  Runner<T> r(m, p, Tn, o);
  return r.run(tokens, labels, n_norm, grads);
}

std::vector<ParamRef> lora_param_refs(LoraSet<float>& p, LoraSet<float>& g) {
  std::vector<ParamRef> refs;
  for (size_t l = 0; l < p.A.size(); ++l) {
    for (int pr = 0; pr < kProjCount; ++pr) {
      if (p.A[l][pr].empty()) continue;
      for (bool b : {false, true}) {
        auto& v = b ? p.B[l][pr] : p.A[l][pr];
        auto& gv = b ? g.B[l][pr] : g.A[l][pr];
        refs.push_back({peft_tensor_name(static_cast<int64_t>(l), static_cast<Proj>(pr), b), std::span<float>(v), std::span<float>(gv)});
      }
    }
  }
  return refs;
}

#define TERN_LORA_MODEL(T)                                                                                              \
  template LoraSet<T> lora_set_from<T>(const LoraAdapter&);                                                             \
  template LoraSet<T> zeros_like<T>(const LoraSet<T>&);                                                                 \
  template void store_into<T>(const LoraSet<T>&, LoraAdapter&);                                                         \
  template double lora_loss_and_grad<T>(const Model&, const LoraSet<T>&, const int32_t*, const int32_t*, int64_t, int64_t, \
                                        const StepOptions&, LoraSet<T>*);
TERN_LORA_MODEL(float)
TERN_LORA_MODEL(double)
#undef TERN_LORA_MODEL

}  // namespace tern::train
