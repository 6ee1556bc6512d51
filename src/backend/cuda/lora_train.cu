// LoRA loss and gradient of a whole micro-batch on the GPU (train::GradEngine): the
// computation of train/lora_model.cpp (the CPU reference, checked against peft) over
// B sequences padded to T positions at once, M = B * T rows; and the optimizer step
// (train/optimizer.cpp bit for bit) on parameters that stay on the device.
//
// Forward, per layer: norm + int8 quantization of each linear input, the ternary product
// as an int8 tensor-core GEMM (cuBLAS, int32 sums: exact) against the layer's ternary
// weights stored as int8 {-1, 0, 1}, one epilogue for the scale, the LoRA branch
// (B . u, u = A dropout(x) from lora_skinny.cu) and the residual add, attention with RoPE
// (train_attention.cu: flash-style F16 kernels with tf32, else cuBLAS). Kept for the
// backward: each layer's input (gradient checkpointing) and, while they fit kKeepBytes, the
// attention block's outputs and every LoRA u and dropout mask, and the last layers' gate/up
// outputs while they fit kGuKeepBytes; the loss runs on the rows that have a label. With
// --precision tf32 (fold_) the LoRA products fold the RMSNorms in (no normalized copies)
// and every layer's gate/up and down input are kept as F16, so nothing is recomputed.
// Backward, layer by layer from the top: recompute what was not kept (norms, the gate/up
// block), then walk back through the layer: the ternary linears by the straight-through
// estimator (dx = m dy Wq on split F16 terms against an F16 copy of the linear's weights
// made for the call, TrainBlas::split_gemm / terms_gemm), RMSNorm, relu^2 gating, attention
// with RoPE, and the LoRA gradients accumulated on the device (with tf32, du, dB and the
// F16 split from one pass over dy: lora_dy.cu; for gate/up the gating backward writes the
// split itself).
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/train_kernels.h"
#include "backend/cuda/weights.h"
#include "train/grad_engine.h"

namespace tern {

namespace cuda {

namespace {

int float_type(FloatType t) { return t == FloatType::F32 ? 0 : t == FloatType::F16 ? 1 : 2; }
int act_kind(Activation a) { return a == Activation::Relu2 ? 0 : a == Activation::Silu ? 1 : 2; }

class CudaGradEngine final : public train::GradEngine {
 public:
  CudaGradEngine(const Model& m, const train::LoraSet<float>& layout, int64_t max_rows, int64_t max_len, bool tf32)
      : c_(m.config), max_rows_(max_rows), max_len_(max_len), tf32_(tf32) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      cudaGetLastError();
      throw_error("--backend cuda: no CUDA device found");
    }
    if (max_rows < 1 || max_len < 1 || max_rows * max_len > (int64_t{1} << 24)) {
      throw_error("CUDA training: batch of " + std::to_string(max_rows) + " x " + std::to_string(max_len) + " tokens is out of range");
    }
    if (static_cast<int64_t>(layout.A.size()) != c_.n_layers) {
      throw_error("CUDA training: the adapter has " + std::to_string(layout.A.size()) + " layers, the model " + std::to_string(c_.n_layers));
    }
    TERN_CUDA_CHECK(cudaStreamCreateWithFlags(&st_, cudaStreamNonBlocking));
    blas_ = std::make_unique<TrainBlas>(st_);
    H_ = static_cast<int>(c_.hidden), QD_ = static_cast<int>(c_.q_dim()), KV_ = static_cast<int>(c_.kv_dim());
    F_ = static_cast<int>(c_.ffn), ldq_ = QD_ + 2 * KV_;
    upload_weights(m);
    plan_params(layout);
    // With tf32 (fold_) the backward recomputes nothing while the activations fit:
    // - the LoRA products of q/k/v, o and gate/up take their norm's input and row scales
    //   (DropoutSpec::norm_rs) instead of normalized copies;
    // - down's input, the sub-norm of h = act(gate) * up, is kept as F16 h * rs (exact in
    //   TF32; with RMS 1 per row F16's range loses nothing the TF32 products would keep), its
    //   weight folded in likewise;
    // - gate/up are kept as F16 for the gating backward (10-bit mantissas, as the TF32
    //   products there), not as floats for the last layers only.
    // TERN_TRAIN_FOLD=0: the float copies and the recompute, for A/B comparisons.
    const char* fold_env = std::getenv("TERN_TRAIN_FOLD");
    fold_ = tf32_ && lora_skinny_enabled() && rank_ <= 32 && H_ % 4 == 0 && QD_ % 4 == 0 && F_ % 8 == 0 &&
            !(fold_env != nullptr && std::string(fold_env) == "0");
    const size_t M = static_cast<size_t>(max_rows * max_len);
    auto fbuf = [&](size_t floats) { return DevBuf(floats * sizeof(float)); };
    xs_ = fbuf((c_.n_layers + 1) * M * H_);
    // The attention block's outputs (q|k|v roped, attention, xmid) and the LoRA A x of
    // every layer (with fold_ also the F16 gate/up and hn) are kept from the forward when they
    // fit: the backward then recomputes only the norms and the feed-forward block's gate/up,
    // or with fold_ nothing.
    const size_t keep_floats = M * (ldq_ + QD_ + H_ + c_.n_heads + kProjCount * std::max(rank_, 1) + (fold_ ? 3 * F_ / 2 : 0));
    keep_ = keep_floats * sizeof(float) * c_.n_layers <= (fold_ ? kKeepBytes + kGuKeepBytes : kKeepBytes);
    // TERN_TRAIN_KEEP=0: the recompute-everything path even when the activations fit (tests
    // check it against the kept one).
    if (const char* e = std::getenv("TERN_TRAIN_KEEP"); e != nullptr && std::string(e) == "0") keep_ = false;
    const size_t nl = keep_ ? c_.n_layers : 1;
    qkv_ = fbuf(nl * M * ldq_), att_ = fbuf(nl * M * QD_), xmid_ = fbuf(nl * M * H_);
    if (fold_) {
      rsn_ = fbuf(nl * 3 * M);
      gu16_ = DevBuf(nl * M * 2 * F_ * 2), hn_ = DevBuf(nl * M * F_ * 2);
    } else {
      hn_ = fbuf(M * F_);
      xn1_ = fbuf(M * H_), an_ = fbuf(M * QD_), xn2_ = fbuf(M * H_);
    }
    lse_ = fbuf(nl * M * c_.n_heads);
    // The gate/up outputs of the last layers too (each one kept saves its GEMM, epilogue and
    // input quantization in the backward), in slots 1.. after the working buffer.
    const size_t gu_floats = M * 2 * F_;
    // TERN_TRAIN_GU_KEEP=n caps the count (tests run the kept and recomputed paths side by side).
    size_t gu_kept = keep_ && !fold_ ? std::min<size_t>(c_.n_layers, kGuKeepBytes / (gu_floats * sizeof(float))) : 0;
    if (const char* e = std::getenv("TERN_TRAIN_GU_KEEP")) gu_kept = std::min<size_t>(gu_kept, std::strtoul(e, nullptr, 10));
    gu_from_ = static_cast<int>(c_.n_layers - gu_kept);
    gu_ = fbuf((1 + gu_kept) * gu_floats), y_ = fbuf(M * H_);
    lu_ = fbuf(nl * M * kProjCount * std::max(rank_, 1));
    for (int p = 0; p < kProjCount; ++p) {
      bits_off_[p] = bits_layer_;
      bits_layer_ += M * dropout_words(static_cast<int>(in_dim(static_cast<Proj>(p))));
    }
    bits_ = DevBuf(nl * bits_layer_ * sizeof(uint32_t));
    q8_ = DevBuf(M * std::max({kpad(H_), kpad(QD_), kpad(F_)}));
    s_ = fbuf(M), rs_dx_ = fbuf(M), rs_gu_ = fbuf(M);
    bool need_dgu = false;  // (gu_split layers have the F16 split instead)
    for (int l = 0; l < c_.n_layers; ++l) need_dgu = need_dgu || !gu_split(l);
    if (need_dgu) dgu_ = fbuf(M * 2 * F_);
    dx_ = fbuf(M * H_), dhn_ = fbuf(M * F_), dxn_ = fbuf(M * H_), dan_ = fbuf(M * QD_);
    datt_ = fbuf(M * QD_), dqkv_ = fbuf(M * ldq_);
    xc_ = fbuf(M * H_), dxc_ = fbuf(M * H_);
    tokens_ = DevBuf(M * 4), labels_ = DevBuf(M * 4), idx_ = DevBuf(M * 4), loss_ = DevBuf(M * sizeof(double));
    seeds_ = DevBuf(static_cast<size_t>(max_rows) * 8);
    rope_ = upload_vec(rope_table(c_.rope_theta, static_cast<int>(c_.head_dim), static_cast<int>(max_len)));
    profile_ = std::getenv("TERN_TRAIN_PROFILE") != nullptr ? std::atoi(std::getenv("TERN_TRAIN_PROFILE")) : 0;
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
  }

  ~CudaGradEngine() override {
    if (st_ != nullptr) cudaStreamSynchronize(st_);
    head_.reset();
    blas_.reset();
    if (st_ != nullptr) cudaStreamDestroy(st_);
  }

  std::string name() const override {
    int dev = 0;
    cudaDeviceProp p{};
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&p, dev) == cudaSuccess) return std::string("cuda (") + p.name + ")";
    return "cuda";
  }

  size_t device_bytes() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
    return total - free;
  }

  void set_params(const train::LoraSet<float>& p) override {
    check_layout(p);
    for_each(p, [&](const std::vector<float>& v, size_t off) { std::copy(v.begin(), v.end(), host_.begin() + off); });
    TERN_CUDA_CHECK(cudaMemcpyAsync(params_.as<void>(), host_.data(), host_.size() * sizeof(float), cudaMemcpyHostToDevice, st_));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
  }

  void zero_grads() override { TERN_CUDA_CHECK(cudaMemsetAsync(grads_.as<void>(), 0, grads_.size(), st_)); }

  void get_grads(train::LoraSet<float>& g) override {
    g = layout_;
    TERN_CUDA_CHECK(cudaMemcpyAsync(host_.data(), grads_.as<void>(), host_.size() * sizeof(float), cudaMemcpyDeviceToHost, st_));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
    for_each(g, [&](std::vector<float>& v, size_t off) { std::copy(host_.begin() + off, host_.begin() + off + v.size(), v.begin()); });
  }

  bool owns_optimizer() const override { return true; }

  double optimizer_step(const OptimizerOptions& o, double lr, double max_norm, int64_t t) override {
    // clip_grad_norm and Optimizer::step (train/optimizer.cpp): the same host-side constants.
    const double norm = std::sqrt(grad_sq_sum(grads_.as<float>(), n_params_, norm_scratch_.as<double>(), st_));
    OptimizerArgs a;
    if (max_norm > 0 && max_norm / (norm + 1e-6) < 1.0) a.clip = 1, a.coef = static_cast<float>(max_norm / (norm + 1e-6));
    if (o.kind == OptimizerKind::Sgd) {
      a.sgd = 1, a.lr = static_cast<float>(lr), a.wd = static_cast<float>(o.weight_decay);
    } else {
      const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(t)), bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
      a.neg_step = static_cast<float>(-lr / bc1), a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      a.w1 = static_cast<float>(1.0 - o.beta1), a.b2 = static_cast<float>(o.beta2), a.w2 = static_cast<float>(1.0 - o.beta2);
      a.eps = static_cast<float>(o.eps), a.decay = static_cast<float>(1.0 - lr * o.weight_decay), a.decay_on = o.weight_decay != 0.0;
    }
    launch_optimizer_update(params_.as<float>(), grads_.as<float>(), m_.as<float>(), v_.as<float>(), n_params_, a, st_);
    return norm;
  }

  void get_params(train::LoraSet<float>& p) override {
    p = layout_;
    TERN_CUDA_CHECK(cudaMemcpyAsync(host_.data(), params_.as<void>(), host_.size() * sizeof(float), cudaMemcpyDeviceToHost, st_));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
    for_each(p, [&](std::vector<float>& v, size_t off) { std::copy(host_.begin() + off, host_.begin() + off + v.size(), v.begin()); });
  }

  void get_moments(std::vector<float>& m, std::vector<float>& v) override {
    m.resize(n_params_), v.resize(n_params_);
    TERN_CUDA_CHECK(cudaMemcpyAsync(m.data(), m_.as<void>(), n_params_ * sizeof(float), cudaMemcpyDeviceToHost, st_));
    TERN_CUDA_CHECK(cudaMemcpyAsync(v.data(), v_.as<void>(), n_params_ * sizeof(float), cudaMemcpyDeviceToHost, st_));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
  }

  void set_moments(const std::vector<float>& m, const std::vector<float>& v) override {
    if (m.size() != n_params_ || v.size() != n_params_) throw_error("CUDA training: optimizer moments of the wrong size");
    TERN_CUDA_CHECK(cudaMemcpyAsync(m_.as<void>(), m.data(), n_params_ * sizeof(float), cudaMemcpyHostToDevice, st_));
    TERN_CUDA_CHECK(cudaMemcpyAsync(v_.as<void>(), v.data(), n_params_ * sizeof(float), cudaMemcpyHostToDevice, st_));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
  }

  double run(const Batch& b, int64_t n_norm, float dropout, std::span<const uint64_t> seeds, bool grad) override {
    if (b.rows < 1 || b.rows > max_rows_ || b.seq_len < 1 || b.seq_len > max_len_) {
      throw_error("CUDA training: a batch of " + std::to_string(b.rows) + " x " + std::to_string(b.seq_len) +
                  " tokens does not fit the buffers (" + std::to_string(max_rows_) + " x " + std::to_string(max_len_) + ")");
    }
    for (int32_t t : b.tokens) {
      if (t < 0 || t >= c_.vocab) throw_error("CUDA training: token id " + std::to_string(t) + " is outside the vocabulary");
    }
    B_ = static_cast<int>(b.rows), T_ = static_cast<int>(b.seq_len), M_ = B_ * T_;
    drop_ = grad ? dropout : 0.0f;
    const size_t M = M_;
    TERN_CUDA_CHECK(cudaMemcpyAsync(tokens_.as<void>(), b.tokens.data(), M * 4, cudaMemcpyHostToDevice, st_));
    std::vector<int32_t> idx, lab;
    for (int i = 0; i < M_; ++i) {
      if (b.labels[i] >= 0) idx.push_back(i), lab.push_back(b.labels[i]);
      if (b.labels[i] >= c_.vocab) throw_error("CUDA training: label " + std::to_string(b.labels[i]) + " is outside the vocabulary");
    }
    const int kept = static_cast<int>(idx.size());
    if (kept > 0) {
      TERN_CUDA_CHECK(cudaMemcpyAsync(idx_.as<void>(), idx.data(), kept * 4, cudaMemcpyHostToDevice, st_));
      TERN_CUDA_CHECK(cudaMemcpyAsync(labels_.as<void>(), lab.data(), kept * 4, cudaMemcpyHostToDevice, st_));
    }
    if (drop_ > 0.0f) {
      if (static_cast<int64_t>(seeds.size()) < b.rows) throw_error("CUDA training: one dropout seed per row needed");
      TERN_CUDA_CHECK(cudaMemcpyAsync(seeds_.as<void>(), seeds.data(), b.rows * 8, cudaMemcpyHostToDevice, st_));
    }
    Timer timer(profile_ > 0, st_);
    prof_ = profile_ > 1 ? &timer : nullptr;
    struct Unset {  // the timer lives in this call only
      CudaGradEngine* e;
      ~Unset() { e->prof_ = nullptr; }
    } unset{this};
    if (prof_ != nullptr) blas_->on_mark = [this](const char* what) { mark(what); };
    launch_embed(emb_.as<void>(), emb_type_, H_, tokens_.as<int32_t>(), M_, x(0), st_);
    for (int l = 0; l < c_.n_layers; ++l) layer_fwd(l, x(l), x(l + 1));
    timer.mark("forward");
    float* dx = dx_.as<float>();
    if (grad) TERN_CUDA_CHECK(cudaMemsetAsync(dx, 0, M * H_ * sizeof(float), st_));
    if (kept > 0) {
      launch_gather_rows(x(c_.n_layers), H_, idx_.as<int32_t>(), kept, xc_.as<float>(), st_);
      head_loss_rows(*blas_, *head_, hw_, xc_.as<float>(), out_norm_.as<float>(), c_.rms_eps, labels_.as<int32_t>(), kept, n_norm,
                     grad ? dxc_.as<float>() : nullptr, loss_.as<double>(), tf32_);
      if (grad) launch_scatter_rows(dxc_.as<float>(), H_, idx_.as<int32_t>(), kept, dx, st_);
    }
    timer.mark("loss");
    if (grad) {
      for (int l = c_.n_layers - 1; l >= 0; --l) {
        recompute(l);  // checkpointing: the layer's activations again, from its input
        timer.mark("recompute");
        layer_bwd(l, x(l), dx, l + 1 < c_.n_layers && tf32_ ? rs_dx_.as<float>() : nullptr);
        timer.mark("backward");
      }
    }
    std::vector<double> losses(kept);
    if (kept > 0) TERN_CUDA_CHECK(cudaMemcpyAsync(losses.data(), loss_.as<void>(), kept * sizeof(double), cudaMemcpyDeviceToHost, st_));
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
    timer.report(M_);
    double loss = 0;
    for (double v : losses) loss += v;
    return loss;
  }

 private:
  struct LayerW {
    // int8 [rows][kpad(cols)], values -1, 0, +1: the forward's GEMM operands; the backward
    // makes an F16 copy of one linear at a time (w16).
    DevBuf qkv8, o8, gu8, down8;
    float sq = 1, sk = 1, sv = 1, so = 1, sg = 1, su = 1, sd = 1;
    DevBuf attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
  };

  // Timings on stderr (TERN_TRAIN_PROFILE): the time between consecutive marks, summed
  // per name: forward, loss, recompute, backward (and with 2, every kind of op).
  class Timer {
   public:
    Timer(bool on, cudaStream_t st) : on_(on), st_(st) {
      if (on_) mark("start");
    }
    ~Timer() {
      for (auto& [n, e] : ev_) cudaEventDestroy(e);
    }
    void mark(const char* name) {
      if (!on_) return;
      cudaEvent_t e = nullptr;
      TERN_CUDA_CHECK(cudaEventCreate(&e));
      TERN_CUDA_CHECK(cudaEventRecord(e, st_));
      ev_.emplace_back(name, e);
    }
    void report(int M) const {
      if (!on_) return;
      std::vector<std::pair<std::string, double>> sums;
      for (size_t i = 1; i < ev_.size(); ++i) {
        float ms = 0;
        cudaEventElapsedTime(&ms, ev_[i - 1].second, ev_[i].second);
        auto it = std::find_if(sums.begin(), sums.end(), [&](auto& p) { return p.first == ev_[i].first; });
        if (it == sums.end()) sums.emplace_back(ev_[i].first, ms);
        else it->second += ms;
      }
      double total = 0;
      std::string line = "train step (" + std::to_string(M) + " rows):";
      for (auto& [n, ms] : sums) line += " " + n + " " + std::to_string(ms) + " ms", total += ms;
      std::fprintf(stderr, "%s; total %.2f ms\n", line.c_str(), total);
    }

   private:
    bool on_;
    cudaStream_t st_;
    std::vector<std::pair<std::string, cudaEvent_t>> ev_;
  };

  void mark(const char* what) {
    if (prof_ != nullptr) prof_->mark(what);
  }

  float* x(int l) const { return xs_.as<float>() + static_cast<size_t>(l) * max_rows_ * max_len_ * H_; }

  // The int8 GEMM's K: rows padded with zeros to a multiple of 16.
  static int kpad(int k) { return (k + 15) / 16 * 16; }
  DevBuf i8_copy(const void* f16, size_t rows, size_t cols) const {
    const int ld = kpad(static_cast<int>(cols));
    DevBuf d(rows * ld);
    launch_f16_to_i8_rows(f16, static_cast<int64_t>(rows), static_cast<int>(cols), d.as<int8_t>(), ld, st_);
    return d;
  }
  // The F16 copy of a linear's weights [rows][cols] for the backward's split GEMM, made per
  // call (~70 us a layer on the H100): F16 copies of every layer would hold 3.9 GiB at the
  // 2b-4t shape, which buy more as kept gate/up outputs (kGuKeepBytes).
  const void* w16(const DevBuf& w8, int rows, int cols) {
    void* out = blas_->scratch(kSlotWeightF16, static_cast<size_t>(rows) * cols * 2);
    launch_i8_to_f16_rows(w8.as<int8_t>(), rows, cols, kpad(cols), out, st_);
    mark("b.weights_f16");
    return out;
  }

  void upload_weights(const Model& m) {
    layers_.resize(c_.n_layers);
    const size_t H = H_, QD = QD_, KV = KV_, F = F_;
    DevBuf f16(std::max({(QD + 2 * KV) * H, H * QD, 2 * F * H, H * F}) * 2);
    for (int l = 0; l < c_.n_layers; ++l) {
      const Layer& L = m.layers[l];
      LayerW& w = layers_[l];
      if (L.q.cols != c_.hidden || L.k.cols != c_.hidden || L.v.cols != c_.hidden || L.o.cols != c_.q_dim() || L.gate.cols != c_.hidden ||
          L.up.cols != c_.hidden || L.down.cols != c_.ffn || L.q.rows != c_.q_dim() || L.k.rows != c_.kv_dim() || L.v.rows != c_.kv_dim() ||
          L.o.rows != c_.hidden || L.gate.rows != c_.ffn || L.up.rows != c_.ffn || L.down.rows != c_.hidden) {
        throw_error("CUDA training: layer " + std::to_string(l) + " linear shapes do not match the config");
      }
      // Through one F16 staging buffer (stream-ordered reuse).
      auto* t = f16.as<__half>();
      upload_ternary_f16_into(L.q, t, st_);
      upload_ternary_f16_into(L.k, t + QD * H, st_);
      upload_ternary_f16_into(L.v, t + (QD + KV) * H, st_);
      w.qkv8 = i8_copy(t, QD + 2 * KV, H);
      upload_ternary_f16_into(L.o, t, st_);
      w.o8 = i8_copy(t, H, QD);
      upload_ternary_f16_into(L.gate, t, st_);
      upload_ternary_f16_into(L.up, t + F * H, st_);
      w.gu8 = i8_copy(t, 2 * F, H);
      upload_ternary_f16_into(L.down, t, st_);
      w.down8 = i8_copy(t, H, F);
      w.sq = L.q.scale, w.sk = L.k.scale, w.sv = L.v.scale, w.so = L.o.scale, w.sg = L.gate.scale, w.su = L.up.scale, w.sd = L.down.scale;
      w.attn_norm = upload_vec(L.attn_norm), w.attn_sub_norm = upload_vec(L.attn_sub_norm);
      w.ffn_norm = upload_vec(L.ffn_norm), w.ffn_sub_norm = upload_vec(L.ffn_sub_norm);
    }
    emb_type_ = float_type(m.embedding.type);
    emb_ = upload_bytes(m.embedding.data, m.embedding.nbytes());
    hw_.emb = emb_.as<void>(), hw_.type = emb_type_, hw_.V = static_cast<int>(c_.vocab), hw_.H = H_;
    head_ = std::make_unique<HeadGemm>(hw_, st_, 1024, tf32_, false);  // head_loss_rows' chunks: the head read once per 1024 rows
    out_norm_ = upload_vec(m.output_norm);
  }

  // Offsets of every LoRA A and B in the flat parameter buffer (layer, projection, A then B).
  void plan_params(const train::LoraSet<float>& p) {
    layout_ = train::zeros_like(p);
    rank_ = p.rank;
    scaling_ = p.scaling;
    size_t off = 0;
    offA_.assign(c_.n_layers, {}), offB_.assign(c_.n_layers, {});
    for (int l = 0; l < c_.n_layers; ++l) {
      for (int pi = 0; pi < kProjCount; ++pi) {
        offA_[l][pi] = offB_[l][pi] = -1;
        if (p.A[l][pi].empty()) continue;
        const int64_t in = in_dim(static_cast<Proj>(pi)), out = out_dim(static_cast<Proj>(pi));
        if (static_cast<int64_t>(p.A[l][pi].size()) != p.rank * in || static_cast<int64_t>(p.B[l][pi].size()) != out * p.rank) {
          throw_error(std::string("CUDA training: LoRA shapes do not match the model at layer ") + std::to_string(l) + " " +
                      proj_name(static_cast<Proj>(pi)));
        }
        offA_[l][pi] = static_cast<int64_t>(off), off += p.A[l][pi].size();
        offB_[l][pi] = static_cast<int64_t>(off), off += p.B[l][pi].size();
      }
    }
    n_params_ = off;
    params_ = DevBuf(std::max<size_t>(off, 1) * sizeof(float));
    grads_ = DevBuf(std::max<size_t>(off, 1) * sizeof(float));
    m_ = DevBuf(std::max<size_t>(off, 1) * sizeof(float));
    v_ = DevBuf(std::max<size_t>(off, 1) * sizeof(float));
    norm_scratch_ = DevBuf(1040 * sizeof(double));
    host_.assign(off, 0.0f);
    TERN_CUDA_CHECK(cudaMemsetAsync(grads_.as<void>(), 0, grads_.size(), st_));
    TERN_CUDA_CHECK(cudaMemsetAsync(m_.as<void>(), 0, m_.size(), st_));
    TERN_CUDA_CHECK(cudaMemsetAsync(v_.as<void>(), 0, v_.size(), st_));
  }

  void check_layout(const train::LoraSet<float>& p) const {
    bool ok = p.A.size() == layout_.A.size() && p.rank == rank_;
    for (size_t l = 0; ok && l < p.A.size(); ++l) {
      for (int pi = 0; pi < kProjCount; ++pi) ok = ok && p.A[l][pi].size() == layout_.A[l][pi].size() && p.B[l][pi].size() == layout_.B[l][pi].size();
    }
    if (!ok) throw_error("CUDA training: the adapter's layout changed");
  }

  // f(tensor, offset in the flat buffers) for every adapted A and B (S: a const or mutable set).
  template <class S, class F>
  void for_each(S& s, F f) const {
    for (int l = 0; l < c_.n_layers; ++l) {
      for (int pi = 0; pi < kProjCount; ++pi) {
        if (offA_[l][pi] < 0) continue;
        f(s.A[l][pi], static_cast<size_t>(offA_[l][pi]));
        f(s.B[l][pi], static_cast<size_t>(offB_[l][pi]));
      }
    }
  }

  int64_t in_dim(Proj p) const { return proj_shape(c_, p).second; }
  int64_t out_dim(Proj p) const { return proj_shape(c_, p).first; }

  bool has_lora(int l, Proj p) const { return offA_[l][static_cast<int>(p)] >= 0; }
  // Layer l's activation buffers (one set, reused, unless keep_).
  size_t rows() const { return static_cast<size_t>(max_rows_ * max_len_); }
  size_t slot(int l) const { return keep_ ? static_cast<size_t>(l) : 0; }
  float* qkv(int l) const { return qkv_.as<float>() + slot(l) * rows() * ldq_; }
  float* att(int l) const { return att_.as<float>() + slot(l) * rows() * QD_; }
  float* xmid(int l) const { return xmid_.as<float>() + slot(l) * rows() * H_; }
  bool gu_kept(int l) const { return l >= gu_from_; }
  // fold_ with gate or up adapted (and lora_dy_pass's rank and column bounds): the gating
  // backward writes dgu's F16 split instead of dgu, which lora_dy_pass (dy_f16) and the STE
  // product read -- half the bytes written and read.
  bool gu_split(int l) const {
    return fold_ && (rank_ == 8 || rank_ == 16) && F_ % 128 == 0 && (has_lora(l, Proj::Gate) || has_lora(l, Proj::Up));
  }
  // Down's LoRA input: RMSNorm(h) * w, or with fold_ F16 h * rs per (kept) layer.
  float* hn(int l) const { return fold_ ? reinterpret_cast<float*>(hn_.as<__half>() + slot(l) * rows() * F_) : hn_.as<float>(); }
  // fold_: F16 [gate | up] per (kept) layer, for the gating backward.
  __half* gu16(int l) const { return gu16_.as<__half>() + slot(l) * rows() * 2 * F_; }
  float* gu(int l) const { return gu_.as<float>() + (gu_kept(l) ? 1 + l - gu_from_ : 0) * rows() * 2 * F_; }
  // The tf32 attention forward's log-sum-exp per row and head (flash_attention_bwd reads it).
  float* lse(int l) const { return lse_.as<float>() + slot(l) * rows() * c_.n_heads; }
  float* u(int l, Proj p) const {
    return lu_.as<float>() + (slot(l) * kProjCount + static_cast<size_t>(p)) * rows() * std::max(rank_, 1);
  }
  DropoutSpec dropout(int l, Proj p) const {
    DropoutSpec d;
    d.p = drop_;
    d.seq_seed = seeds_.as<uint64_t>();
    d.salt = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(l * kProjCount + static_cast<int>(p) + 1);  // lora_model.cpp's
    d.period = T_;
    if (drop_ > 0.0f) {  // the forward hashes the mask once and stores it; the backward reads it
      d.bits = bits_.as<uint32_t>() + slot(l) * bits_layer_ + bits_off_[static_cast<int>(p)];
      d.write_bits = true;
    }
    const LayerW& w = layers_[l];
    if (fold_ && p != Proj::Down) {
      const int k = norm_of(p);
      d.norm_rs = rsn(l, k);
      d.norm_w = (k == 0 ? w.attn_norm : k == 1 ? w.attn_sub_norm : w.ffn_norm).as<float>();
    } else if (fold_ && p == Proj::Down) {  // hn(l): F16 h * rs
      d.norm_w = w.ffn_sub_norm.as<float>();
      d.x_f16 = true;
    }
    return d;
  }
  // fold_: the norm before projection p (0 attention input, 1 attention sub-norm, 2 feed-forward
  // input) and layer l's inverse RMS per row for it, written by the forward's norm kernels.
  static int norm_of(Proj p) { return p == Proj::O ? 1 : (p == Proj::Gate || p == Proj::Up) ? 2 : 0; }
  float* rsn(int l, int k) const { return rsn_.as<float>() + (slot(l) * 3 + static_cast<size_t>(k)) * rows(); }

  // u(l, p) = A dropout(xin) of each adapted projection p in `group` (sharing the input
  // xin); the epilogue adds B u (ternary()).
  void lora_u(int l, std::initializer_list<Proj> group, const float* xin) {
    for (Proj p : group) {
      if (!has_lora(l, p)) continue;
      const int pi = static_cast<int>(p);
      lora_fwd_gpu(*blas_, xin, params_.as<float>() + offA_[l][pi], params_.as<float>() + offB_[l][pi], M_, static_cast<int>(in_dim(p)),
                   rank_, static_cast<int>(out_dim(p)), scaling_, dropout(l, p), u(l, p), nullptr, 0, true, tf32_);
    }
  }

  // du: already computed (linear_bwd's fused path, dxin null there).
  // dB_done: lora_dy_pass accumulated dB already.
  void lora_bwd(int l, Proj p, const float* xin, const float* dy, int ldy, float* dxin, const float* du = nullptr, bool dB_done = false) {
    if (!has_lora(l, p)) return;
    const int pi = static_cast<int>(p);
    lora_bwd_gpu(*blas_, xin, params_.as<float>() + offA_[l][pi], params_.as<float>() + offB_[l][pi], u(l, p), dy, ldy, M_,
                 static_cast<int>(in_dim(p)), rank_, static_cast<int>(out_dim(p)), scaling_, dropout(l, p), dxin,
                 grads_.as<float>() + offA_[l][pi], dB_done ? nullptr : grads_.as<float>() + offB_[l][pi], true, tf32_, du);
  }

  // The activations layer_bwd(l) reads, after the forward pass has moved on: all of
  // layer_fwd without its output, or with keep_ only the norms and (unless gu_kept) the
  // gate/up block (the rest was kept).
  void recompute(int l) {
    if (!keep_) return layer_fwd(l, x(l), nullptr);
    if (fold_) return;  // everything the backward reads was kept
    const LayerW& w = layers_[l];
    const float eps = c_.rms_eps;
    const bool gemm = !gu_kept(l);
    // (the LoRA backward's inputs -- with fold_ the norms' inputs themselves and their row
    // scales kept from the forward; no int8 rows but the gate/up GEMM's: the others do not run again)
    if (!fold_) {
      launch_train_norm_quant(x(l), H_, false, 0, w.attn_norm.as<float>(), H_, eps, M_, nullptr, xn1_.as<float>(), nullptr, 0, nullptr, st_);
      launch_train_norm_quant(att(l), QD_, false, 0, w.attn_sub_norm.as<float>(), QD_, eps, M_, nullptr, an_.as<float>(), nullptr, 0, nullptr,
                              st_);
    }
    if (!fold_ || gemm) {
      launch_train_norm_quant(xmid(l), H_, false, 0, w.ffn_norm.as<float>(), H_, eps, M_, nullptr, xn2_.as<float>(),
                              gemm ? q8_.as<int8_t>() : nullptr, kpad(H_), gemm ? s_.as<float>() : nullptr, st_);
    }
    mark("f.norm_quant");
    if (gemm) ternary(l, w.gu8, H_, 2 * F_, gu(l), scales_gu(w), {Proj::Gate, Proj::Up});
    launch_train_norm_quant(gu(l), 2 * F_, true, act_kind(c_.act), w.ffn_sub_norm.as<float>(), F_, eps, M_, nullptr, hn(l), nullptr, 0,
                            nullptr, st_);
    mark("f.norm_quant");
  }

  // out [M][N] = BitLinear(q8) with column scales, plus the LoRA branches of the column
  // segments' projections (their u computed by lora_u before).
  // With resid: sum = resid + the linear (the residual stream), `out` only the GEMM's scratch.
  void ternary(int l, const DevBuf& w8, int K, int N, float* out, const ColScales& cs, std::initializer_list<Proj> parts,
               const float* resid = nullptr, float* sum = nullptr) {
    blas_->gemm_i8_nt(q8_.as<int8_t>(), M_, kpad(K), w8.as<int8_t>(), N, reinterpret_cast<int32_t*>(out), N);
    mark("f.ternary_gemm");
    LoraEpilogue le;
    int k = 0;
    for (Proj p : parts) {
      if (has_lora(l, p)) {
        le.r = rank_, le.scaling = scaling_, le.tf32 = tf32_;
        le.u[k] = u(l, p), le.B[k] = params_.as<float>() + offB_[l][static_cast<int>(p)];
      }
      ++k;
    }
    launch_linear_epilogue(out, N, M_, N, s_.as<float>(), cs, le, resid, sum, st_);
    mark("f.epilogue");
  }

  static ColScales scales1(float s) {
    ColScales c;
    c.n = 1, c.end[0] = 1 << 30, c.scale[0] = s;
    return c;
  }
  ColScales scales_qkv(const LayerW& w) const {
    ColScales c;
    c.n = 3, c.end[0] = QD_, c.end[1] = QD_ + KV_, c.end[2] = ldq_;
    c.scale[0] = w.sq, c.scale[1] = w.sk, c.scale[2] = w.sv;
    return c;
  }
  ColScales scales_gu(const LayerW& w) const {
    ColScales c;
    c.n = 2, c.end[0] = F_, c.end[1] = 2 * F_;
    c.scale[0] = w.sg, c.scale[1] = w.su;
    return c;
  }
  TrainAttnShape attn_shape() const {
    TrainAttnShape a;
    a.B = B_, a.T = T_, a.nh = static_cast<int>(c_.n_heads), a.nkv = static_cast<int>(c_.n_kv_heads), a.hd = static_cast<int>(c_.head_dim);
    return a;
  }

  // The layer's forward from xin into xout (null: not needed); the activations stay in
  // the layer buffers.
  void layer_fwd(int l, const float* xin, float* xout) {
    const LayerW& w = layers_[l];
    const float eps = c_.rms_eps;
    float *qkv = this->qkv(l), *xn1 = xn1_.as<float>(), *att = this->att(l), *an = an_.as<float>(), *y = y_.as<float>();
    float *xmid = this->xmid(l), *xn2 = xn2_.as<float>(), *gu = this->gu(l), *hn = this->hn(l);
    // Attention block.
    // (fold_: no normalized copies; the LoRA products take the norm's input and row scales)
    launch_train_norm_quant(xin, H_, false, 0, w.attn_norm.as<float>(), H_, eps, M_, nullptr, xn1, q8_.as<int8_t>(), kpad(H_), s_.as<float>(), st_,
                            fold_ ? rsn(l, 0) : nullptr);
    mark("f.norm_quant");
    lora_u(l, {Proj::Q, Proj::K, Proj::V}, fold_ ? xin : xn1);
    mark("f.lora");
    ternary(l, w.qkv8, H_, ldq_, qkv, scales_qkv(w), {Proj::Q, Proj::K, Proj::V});
    train_attention_fwd(*blas_, attn_shape(), qkv, qkv + QD_, qkv + QD_ + KV_, ldq_, att, QD_, tf32_, lse(l), rope_.as<float>());
    mark("f.attention");
    launch_train_norm_quant(att, QD_, false, 0, w.attn_sub_norm.as<float>(), QD_, eps, M_, nullptr, an, q8_.as<int8_t>(), kpad(QD_), s_.as<float>(), st_,
                            fold_ ? rsn(l, 1) : nullptr);
    mark("f.norm_quant");
    float* yo = y;  // the o and down GEMMs' scratch (their epilogues add into the residual stream)
    lora_u(l, {Proj::O}, fold_ ? att : an);
    mark("f.lora");
    ternary(l, w.o8, QD_, H_, yo, scales1(w.so), {Proj::O}, xin, xmid);
    // Feed-forward block.
    launch_train_norm_quant(xmid, H_, false, 0, w.ffn_norm.as<float>(), H_, eps, M_, nullptr, xn2, q8_.as<int8_t>(), kpad(H_), s_.as<float>(), st_,
                            fold_ ? rsn(l, 2) : nullptr);
    mark("f.norm_quant");
    lora_u(l, {Proj::Gate, Proj::Up}, fold_ ? xmid : xn2);
    mark("f.lora");
    ternary(l, w.gu8, H_, 2 * F_, gu, scales_gu(w), {Proj::Gate, Proj::Up});
    // h = act(gate) * up is not kept: the gating backward recomputes it (with fold_ from the
    // F16 gate/up this kernel writes; hn is then F16 h * rs).
    launch_train_norm_quant(gu, 2 * F_, true, act_kind(c_.act), w.ffn_sub_norm.as<float>(), F_, eps, M_, nullptr, fold_ ? nullptr : hn,
                            xout != nullptr ? q8_.as<int8_t>() : nullptr, kpad(F_), s_.as<float>(), st_, nullptr, fold_ ? hn : nullptr,
                            fold_ ? gu16(l) : nullptr);
    mark("f.norm_quant");
    lora_u(l, {Proj::Down}, hn);  // the backward needs only its A x
    mark("f.lora");
    if (xout == nullptr) return;
    ternary(l, w.down8, F_, H_, yo, scales1(w.sd), {Proj::Down}, xmid, xout);
  }

  // dxin [M][K] = the gradient w.r.t. a (fused) linear's input xin for dy [M][N] (row
  // stride N): the STE product m dy Wq (alpha = m, or cs for fused parts), then each
  // adapted part's LoRA backward (its dy columns from `offset`), which also accumulates
  // the LoRA gradients.
  // The adapted parts' du come first where LoraDx::fusable: split_gemm's combine then adds
  // their input gradients, so dxin is written once instead of once more per part.
  // dy_rscale: dy's row scales from its producer (tf32), so that lora_dy_pass splits dy too.
  // dy_split: instead of dy (null then), that split made by the producer (lora_dy_pass's
  // dy_f16; the caller checked that this path applies).
  void linear_bwd(int l, const void* w, const float* dy, int N, const ColScales& cs, float alpha, int K, const float* xin, float* dxin,
                  std::initializer_list<std::pair<Proj, int>> parts, const float* dy_rscale = nullptr, void* dy_split = nullptr) {
    int adapted = 0;
    for (auto [p, offset] : parts) adapted += has_lora(l, p) ? 1 : 0;
    LoraDx lx;
    const bool fuse = LoraDx::fusable(rank_, adapted, K, dxin, K);
    bool dy_pass = false;  // du, dB (and with dy_rscale the split) done in one pass over dy
    void* split = nullptr;
    if (fuse) {
      const size_t per = static_cast<size_t>(M_) * rank_;
      auto* du = static_cast<float*>(blas_->scratch(kSlotLoraU, adapted * per * sizeof(float)));
      lx.r = rank_, lx.keep = drop_ > 0.0f ? 1.0f / (1.0f - drop_) : 1.0f, lx.tf32 = tf32_;
      DyPass dp;
      dp.r = rank_, dp.scaling = scaling_;
      for (auto [p, offset] : parts) {
        DyPart& q = dp.part[dp.n++];
        q.beg = offset, q.end = offset + static_cast<int>(out_dim(p));
        if (!has_lora(l, p)) continue;
        const int pi = static_cast<int>(p);
        q.B = params_.as<float>() + offB_[l][pi], q.u = u(l, p), q.du = du + lx.n * per, q.dB = grads_.as<float>() + offB_[l][pi];
        lx.du[lx.n] = q.du, lx.A[lx.n] = params_.as<float>() + offA_[l][pi];
        lx.bits[lx.n] = drop_ > 0.0f ? dropout(l, p).bits : nullptr;
        ++lx.n;
      }
      if (tf32_) {
        if (dy_split != nullptr) {
          dp.rscale = dy_rscale, dp.cs = cs, dp.dy_f16 = true;
          split = dy_split;
        } else if (dy_rscale != nullptr) {
          dp.rscale = dy_rscale, dp.cs = cs;
          dp.split = split = blas_->scratch(kSlotSplitA, static_cast<size_t>(M_) * N * sizeof(uint16_t));
        }
        dy_pass = lora_dy_pass(*blas_, dy_split != nullptr ? static_cast<const float*>(dy_split) : dy, M_, N, dp);
        mark("b.lora.dy_pass");
      }
      if (!dy_pass) {
        for (int k = 0; k < dp.n; ++k) {
          const DyPart& q = dp.part[k];
          if (q.B != nullptr) lora_du_gpu(*blas_, dy + q.beg, N, q.B, M_, rank_, q.end - q.beg, scaling_, q.du, tf32_);
        }
        mark("b.lora.du");
      }
    }
    if (dy_split != nullptr && !dy_pass) throw_error("CUDA training: the F16 dy split was not taken by lora_dy_pass");
    if (dy_pass && split != nullptr) {
      blas_->terms_gemm(split, 1, dy_rscale, M_, N, w, 1, K, alpha, dxin, K, false, &lx);
    } else {
      blas_->split_gemm(dy, N, M_, N, cs, w, 1, K, alpha, dxin, K, false, tf32_, fuse ? &lx : nullptr);
    }
    mark("b.split_gemm");
    int k = 0;
    for (auto [p, offset] : parts) {
      if (!has_lora(l, p)) continue;
      lora_bwd(l, p, xin, dy != nullptr ? dy + offset : nullptr, N, fuse ? nullptr : dxin, fuse ? lx.du[k++] : nullptr, dy_pass);
    }
    mark("b.lora");
  }

  // dx: the gradient w.r.t. the layer's output on entry, w.r.t. its input on return.
  // dx_rs: dx's split row scales on entry (null: not known), on return (tf32: rs_dx_).
  void layer_bwd(int l, const float* xin, float* dx, const float* dx_rs) {
    const LayerW& w = layers_[l];
    const float eps = c_.rms_eps;
    float *qkv = this->qkv(l), *xn1 = xn1_.as<float>(), *att = this->att(l), *an = an_.as<float>();
    float *xmid = this->xmid(l), *xn2 = xn2_.as<float>(), *gu = this->gu(l), *hn = this->hn(l);
    float *dhn = dhn_.as<float>(), *dgu = dgu_.as<float>(), *dxn = dxn_.as<float>(), *dan = dan_.as<float>();
    float *datt = datt_.as<float>(), *dqkv = dqkv_.as<float>();
    // Feed-forward block: out = xmid + Down(hn).
    // (tf32: the producers of dy for down, gate/up and o also give its split row scales)
    float* rs_dx = tf32_ ? rs_dx_.as<float>() : nullptr;
    float* rs_gu = tf32_ ? rs_gu_.as<float>() : nullptr;
    linear_bwd(l, w16(w.down8, H_, F_), dx, H_, ColScales{}, w.sd, F_, hn, dhn, {{Proj::Down, 0}}, dx_rs);
    const bool gsplit = gu_split(l);
    void* gsp = gsplit ? blas_->scratch(kSlotSplitA, static_cast<size_t>(M_) * 2 * F_ * sizeof(uint16_t)) : nullptr;
    launch_gated_rmsnorm_bwd(fold_ ? reinterpret_cast<const float*>(gu16(l)) : gu, 2 * F_, act_kind(c_.act), w.ffn_sub_norm.as<float>(), dhn,
                             M_, F_, eps, dgu, 2 * F_, st_, rs_gu, w.sg, w.su, fold_, gsp);
    mark("b.gated_rmsnorm");
    linear_bwd(l, w16(w.gu8, 2 * F_, H_), gsplit ? nullptr : dgu, 2 * F_, scales_gu(w), 1.0f, H_, fold_ ? xmid : xn2, dxn,
               {{Proj::Gate, 0}, {Proj::Up, F_}}, rs_gu, gsp);
    launch_rmsnorm_bwd(xmid, w.ffn_norm.as<float>(), dxn, M_, H_, eps, dx, true, st_, rs_dx);  // dx = d xmid now
    mark("b.rmsnorm");
    // Attention block: xmid = x + O(an).
    linear_bwd(l, w16(w.o8, H_, QD_), dx, H_, ColScales{}, w.so, QD_, fold_ ? att : an, dan, {{Proj::O, 0}}, rs_dx);
    launch_rmsnorm_bwd(att, w.attn_sub_norm.as<float>(), dan, M_, QD_, eps, datt, false, st_);
    mark("b.rmsnorm");
    train_attention_bwd(*blas_, attn_shape(), qkv, qkv + QD_, qkv + QD_ + KV_, ldq_, datt, QD_, dqkv, dqkv + QD_, dqkv + QD_ + KV_, ldq_,
                        tf32_, att, lse(l), rope_.as<float>());
    mark("b.attention");
    linear_bwd(l, w16(w.qkv8, ldq_, H_), dqkv, ldq_, scales_qkv(w), 1.0f, H_, fold_ ? xin : xn1, dxn,
               {{Proj::Q, 0}, {Proj::K, QD_}, {Proj::V, QD_ + KV_}});
    launch_rmsnorm_bwd(xin, w.attn_norm.as<float>(), dxn, M_, H_, eps, dx, true, st_, l > 0 ? rs_dx : nullptr);
    mark("b.rmsnorm");
  }

  // Keeping every layer's attention-block activations (instead of recomputing them) is
  // worth ~15 % of a step; above this many bytes the backward recomputes everything.
  static constexpr size_t kKeepBytes = size_t{6} << 30;
  // Without fold_: float gate/up outputs kept for the last layers (226 MB a layer for the
  // 2b-4t shape at 8 x 512 rows: 26 of 30 layers, ~0.4 ms of recompute each; the whole step
  // then stays under 17 GiB). With fold_ the F16 copies of every layer take this budget.
  static constexpr size_t kGuKeepBytes = size_t{11} << 29;

  ModelConfig c_;
  int64_t max_rows_, max_len_;
  bool tf32_ = false;  // --precision tf32: 10-bit-mantissa products (grad_engine.h)
  bool keep_ = false;  // activations of every layer kept (see kKeepBytes)
  bool fold_ = false;  // the LoRA products fold the norms in (see the constructor)
  int gu_from_ = 0;    // layers from here keep their gate/up output (gu(l))
  int H_ = 0, QD_ = 0, KV_ = 0, F_ = 0, ldq_ = 0;
  int B_ = 0, T_ = 0, M_ = 0;
  float drop_ = 0.0f;
  int profile_ = 0;  // TERN_TRAIN_PROFILE: 1 phase timings, 2 per kind of op too (stderr)
  cudaStream_t st_ = nullptr;
  std::unique_ptr<TrainBlas> blas_;
  Timer* prof_ = nullptr;
  std::vector<LayerW> layers_;
  DevBuf emb_, out_norm_, rope_;
  int emb_type_ = 1;
  HeadWeights hw_;
  std::unique_ptr<HeadGemm> head_;
  // LoRA parameters and gradients, flat; offsets per (layer, projection) or -1.
  train::LoraSet<float> layout_;
  int rank_ = 0;
  float scaling_ = 0.0f;
  std::vector<std::array<int64_t, kProjCount>> offA_, offB_;
  size_t n_params_ = 0;
  DevBuf params_, grads_, m_, v_, norm_scratch_;  // m_, v_: AdamW moments
  std::vector<float> host_;
  // Activations ([M][...] rows) and gradients.
  DevBuf xs_, xn1_, qkv_, att_, an_, xmid_, xn2_, lse_, gu_, y_, lu_, q8_, s_;
  DevBuf hn_, gu16_;  // down's LoRA input (hn(l)); fold_: F16 gate/up (gu16(l))
  DevBuf rsn_;  // fold_: the inverse RMS of each row for the three norms before LoRA inputs, per (kept) layer
  DevBuf rs_dx_, rs_gu_;  // split row scales of dx and dgu from their producers (lora_dy_pass)
  DevBuf dx_, dhn_, dgu_, dxn_, dan_, datt_, dqkv_, xc_, dxc_;
  DevBuf tokens_, labels_, idx_, loss_, seeds_;
  DevBuf bits_;  // dropout masks as bits, per (kept) layer and projection
  size_t bits_layer_ = 0;
  std::array<size_t, kProjCount> bits_off_{};
};

}  // namespace

}  // namespace cuda

namespace train {

std::unique_ptr<GradEngine> make_cuda_grad_engine(const Model& m, const LoraSet<float>& layout, int64_t max_rows, int64_t max_len,
                                                  bool tf32) {
  return std::make_unique<cuda::CudaGradEngine>(m, layout, max_rows, max_len, tf32);
}

}  // namespace train

}  // namespace tern
