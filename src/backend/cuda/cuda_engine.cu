// The CUDA engine: the exact BitNet b1.58 forward pass of CpuEngine
// (backend/cpu/cpu_engine.cpp) on one GPU. All weights are uploaded at construction
// (ternary linears repacked to tern2-mma, kernels.h; the embedding/LM head kept in its
// stored F16/BF16/F32), with a float32 KV cache [layer][ctx][kv_dim] on the device.
//
// Decode (one token): 5 launches per layer (QKV GEMV, attention with RoPE and the cache
// write, O GEMV + residual, gate/up GEMV + relu^2*up, down GEMV + residual; every GEMV
// RMSNorms and quantizes its own input) plus the LM head, captured once as a CUDA graph
// and replayed. Token and position travel through device memory, so one graph serves
// every position; only the logits come back.
// Prefill (M > 1 tokens): the same math over M rows with int8 tensor-core GEMMs, a
// quantization kernel per linear input and causal attention over the prompt.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/weights.h"
#include "runtime/engine.h"

namespace tern {

namespace cuda {

namespace {

// Pinned host memory.
template <class T>
class Pinned {
 public:
  Pinned() = default;
  explicit Pinned(size_t n) {
    void* p = nullptr;
    TERN_CUDA_CHECK(cudaMallocHost(&p, std::max<size_t>(n, 1) * sizeof(T)));
    p_ = static_cast<T*>(p);
  }
  ~Pinned() {
    if (p_ != nullptr) cudaFreeHost(p_);
  }
  Pinned(Pinned&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Pinned& operator=(Pinned&& o) noexcept {
    if (this != &o) {
      if (p_ != nullptr) cudaFreeHost(p_);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

class Stream {
 public:
  Stream() { TERN_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec() { reset(); }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  void reset() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }
  cudaGraphExec_t exec_ = nullptr;
  cudaGraph_t graph_ = nullptr;
};

int float_type_code(FloatType t) {
  switch (t) {
    case FloatType::F32: return 0;
    case FloatType::F16: return 1;
    case FloatType::BF16: return 2;
  }
  return -1;
}

int act_code(Activation a) {
  switch (a) {
    case Activation::Relu2: return 0;
    case Activation::Silu: return 1;
    case Activation::Gelu: return 2;
  }
  return 0;
}

bool env_flag_off(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0);
}

constexpr int kMaxPrefill = 512;  // tokens per prefill pass (longer prompts run in chunks)

class CudaEngine final : public Engine {
 public:
  CudaEngine(const Model& model, const EngineOptions& opts)
      : c_(model.config),
        ctx_(opts.ctx > 0 ? opts.ctx : model.config.ctx),
        use_graph_(!env_flag_off("TERN_CUDA_GRAPH")),
        use_pdl_(!env_flag_off("TERN_CUDA_PDL")) {
    validate(model);
    int dev = 0;
    TERN_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    TERN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 8) cuda::throw_error(std::string("CUDA backend needs compute capability 8.0 or newer; ") + prop.name + " has " +
                                    std::to_string(prop.major) + "." + std::to_string(prop.minor));
    name_ = std::string("cuda (") + prop.name + ")";
    if (prop.major < 9) use_pdl_ = false;
    stream_ = std::make_unique<Stream>();
    const cudaStream_t st = stream_->get();

    const int H = static_cast<int>(c_.hidden), QD = static_cast<int>(c_.q_dim()), KV = static_cast<int>(c_.kv_dim());
    const int F = static_cast<int>(c_.ffn);
    layers_.reserve(c_.n_layers);
    for (const Layer& L : model.layers) {
      LayerDev d;
      d.qkv = upload_ternary({&L.q, &L.k, &L.v}, {0, QD, QD + KV}, false, st);
      d.o = upload_ternary({&L.o}, {0}, false, st);
      d.gu = upload_ternary({&L.gate, &L.up}, {0, F}, true, st);
      d.down = upload_ternary({&L.down}, {0}, false, st);
      d.attn_norm = upload_vec(L.attn_norm);
      d.attn_sub_norm = upload_vec(L.attn_sub_norm);
      d.ffn_norm = upload_vec(L.ffn_norm);
      d.ffn_sub_norm = upload_vec(L.ffn_sub_norm);
      layers_.push_back(std::move(d));
    }
    emb_type_ = float_type_code(model.embedding.type);
    emb_ = upload_bytes(model.embedding.data, model.embedding.nbytes());
    out_norm_ = upload_vec(model.output_norm);
    rope_ = upload_vec(rope_table(c_.rope_theta, static_cast<int>(c_.head_dim), static_cast<int>(ctx_)));

    const size_t cache = static_cast<size_t>(c_.n_layers) * ctx_ * KV;
    kc_ = DevBuf(cache * sizeof(float));
    vc_ = DevBuf(cache * sizeof(float));

    maxm_ = static_cast<int>(std::min<int64_t>(kMaxPrefill, std::max<int64_t>(ctx_, 1)));
    const size_t M = maxm_;
    const int kw = std::max({layers_[0].qkv.view.kwords(), layers_[0].o.view.kwords(), layers_[0].down.view.kwords()});
    x_ = DevBuf(M * H * sizeof(float));
    qkv_ = DevBuf(M * (QD + 2 * KV) * sizeof(float));
    att_ = DevBuf(M * QD * sizeof(float));
    gu_ = DevBuf(M * 2 * F * sizeof(float));
    h_ = DevBuf(static_cast<size_t>(F) * sizeof(float));
    act_ = DevBuf(M * kw * sizeof(uint32_t));
    s_ = DevBuf(M * sizeof(float));
    qsum_ = DevBuf(M * sizeof(int32_t));
    tok_ = DevBuf(M * sizeof(int32_t));
    logits_ = DevBuf(static_cast<size_t>(c_.vocab) * sizeof(float));
    params_ = DevBuf(2 * sizeof(int32_t));

    ash_.n_heads = static_cast<int>(c_.n_heads);
    ash_.n_kv = static_cast<int>(c_.n_kv_heads);
    ash_.hd = static_cast<int>(c_.head_dim);
    ash_.qd = QD;
    ash_.kv_dim = KV;
    ash_.gb = attn_heads_per_block(ash_.n_heads, ash_.n_kv);
    splits_ = static_cast<int>(std::clamp<int64_t>((ctx_ + 63) / 64, 1, 32));
    const int groups = ash_.n_heads / ash_.gb;
    partial_ = DevBuf(static_cast<size_t>(groups) * splits_ * ash_.gb * (ash_.hd + 2) * sizeof(float));
    counters_ = DevBuf(static_cast<size_t>(groups) * sizeof(int32_t));
    TERN_CUDA_CHECK(cudaMemsetAsync(counters_.as<void>(), 0, counters_.size(), st));

    h_params_ = Pinned<int32_t>(2);
    h_logits_ = Pinned<float>(c_.vocab);
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
  }

  const ModelConfig& config() const override { return c_; }
  std::string name() const override { return name_; }
  int64_t position() const override { return pos_; }
  int64_t context_length() const override { return ctx_; }
  void reset() override { pos_ = 0; }
  void truncate(int64_t n) override { pos_ = std::clamp<int64_t>(n, 0, pos_); }

  void forward(std::span<const int32_t> tokens, float* logits, Logits which) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n == 0) return;
    check_forward_args(c_, tokens, pos_, ctx_);
    if (n == 1) {
      decode(tokens[0], logits, which);
      return;
    }
    const int64_t V = c_.vocab;
    for (int64_t i = 0; i < n; i += maxm_) {
      const int len = static_cast<int>(std::min<int64_t>(maxm_, n - i));
      const bool last = i + len == n;
      if (which == Logits::All) {
        prefill(tokens.data() + i, len, logits + i * V, Logits::All);
      } else {
        prefill(tokens.data() + i, len, logits, last ? which : Logits::None);
      }
    }
  }

 private:
  struct LayerDev {
    DevTernary qkv, o, gu, down;
    DevBuf attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
  };

  void validate(const Model& m) const {
    const ModelConfig& c = m.config;
    auto need = [](bool ok, const std::string& what) {
      if (!ok) cuda::throw_error("CUDA backend: " + what);
    };
    need(c.n_layers > 0 && static_cast<int64_t>(m.layers.size()) == c.n_layers, "layer count does not match the config");
    need(c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0, "heads must be a multiple of KV heads");
    need(attn_head_dim_supported(static_cast<int>(c.head_dim)),
         "head_dim " + std::to_string(c.head_dim) + " is not supported (32, 64, 128 or 256)");
    need(c.hidden < (1 << 20) && c.ffn < (1 << 20) && c.vocab < (1 << 28), "dimensions too large");
    need(m.embedding.rows == c.vocab && m.embedding.cols == c.hidden && m.embedding.data != nullptr, "embedding shape");
    need(static_cast<int64_t>(m.output_norm.size()) == c.hidden, "output_norm size");
    for (const Layer& L : m.layers) {
      need(static_cast<int64_t>(L.attn_norm.size()) == c.hidden && static_cast<int64_t>(L.ffn_norm.size()) == c.hidden,
           "attn_norm/ffn_norm size");
      need(static_cast<int64_t>(L.attn_sub_norm.size()) == c.q_dim(), "attn_sub_norm size");
      need(static_cast<int64_t>(L.ffn_sub_norm.size()) == c.ffn, "ffn_sub_norm size");
      need(L.q.rows == c.q_dim() && L.k.rows == c.kv_dim() && L.v.rows == c.kv_dim() && L.o.rows == c.hidden &&
               L.gate.rows == c.ffn && L.up.rows == c.ffn && L.down.rows == c.hidden,
           "linear shapes");
      need(L.q.cols == c.hidden && L.o.cols == c.q_dim() && L.gate.cols == c.hidden && L.down.cols == c.ffn, "linear widths");
    }
  }

  float* kcache(size_t l) const { return kc_.as<float>() + l * ctx_ * c_.kv_dim(); }
  float* vcache(size_t l) const { return vc_.as<float>() + l * ctx_ * c_.kv_dim(); }

  // The decode step, launched into `st` (captured into the graph on first use).
  void decode_body(cudaStream_t st) {
    const int H = static_cast<int>(c_.hidden), QD = static_cast<int>(c_.q_dim()), F = static_cast<int>(c_.ffn);
    const float eps = c_.rms_eps;
    int32_t* params = params_.as<int32_t>();
    TERN_CUDA_CHECK(cudaMemcpyAsync(params, h_params_.get(), 2 * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    float* x = x_.as<float>();
    launch_embed(emb_.as<void>(), emb_type_, H, params, 1, x, st);
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerDev& L = layers_[l];
      GemvArgs a;
      a.eps = eps;
      a.w = L.qkv.view, a.in = x, a.normw = L.attn_norm.as<float>(), a.n = H, a.out = qkv_.as<float>();
      // The first kernel after the embedding may not overlap it (PDL edges link kernels only
      // and the embedding follows a copy).
      launch_gemv(kEpiStore, a, st, use_pdl_ && l > 0);
      launch_attn_decode(ash_, qkv_.as<float>(), kcache(l), vcache(l), rope_.as<float>(), params + 1, splits_,
                         partial_.as<float>(), counters_.as<int32_t>(), att_.as<float>(), st, use_pdl_);
      a.w = L.o.view, a.in = att_.as<float>(), a.normw = L.attn_sub_norm.as<float>(), a.n = QD, a.out = x;
      launch_gemv(kEpiAdd, a, st, use_pdl_);
      a.w = L.gu.view, a.in = x, a.normw = L.ffn_norm.as<float>(), a.n = H, a.out = h_.as<float>(), a.act = act_code(c_.act);
      launch_gemv(kEpiGateUp, a, st, use_pdl_);
      a.w = L.down.view, a.in = h_.as<float>(), a.normw = L.ffn_sub_norm.as<float>(), a.n = F, a.out = x;
      launch_gemv(kEpiAdd, a, st, use_pdl_);
    }
    launch_lm_head(emb_.as<void>(), emb_type_, static_cast<int>(c_.vocab), H, x, 1, out_norm_.as<float>(), eps,
                   logits_.as<float>(), st, use_pdl_);
    TERN_CUDA_CHECK(cudaMemcpyAsync(h_logits_.get(), logits_.as<float>(), c_.vocab * sizeof(float), cudaMemcpyDeviceToHost, st));
  }

  void capture() {
    const cudaStream_t st = stream_->get();
    graph_.reset();
    TERN_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    try {
      decode_body(st);
    } catch (...) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(st, &g);
      if (g != nullptr) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    TERN_CUDA_CHECK(cudaStreamEndCapture(st, &graph_.graph_));
    TERN_CUDA_CHECK(cudaGraphInstantiate(&graph_.exec_, graph_.graph_, 0));
  }

  void decode(int32_t token, float* logits, Logits which) {
    const cudaStream_t st = stream_->get();
    h_params_.get()[0] = token;
    h_params_.get()[1] = static_cast<int32_t>(pos_);
    if (use_graph_) {
      if (graph_.exec_ == nullptr) capture();
      TERN_CUDA_CHECK(cudaGraphLaunch(graph_.exec_, st));
    } else {
      decode_body(st);
    }
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    pos_ += 1;
    if (which != Logits::None) std::memcpy(logits, h_logits_.get(), c_.vocab * sizeof(float));
  }

  void prefill(const int32_t* toks, int M, float* logits, Logits which) {
    const cudaStream_t st = stream_->get();
    const int H = static_cast<int>(c_.hidden), QD = static_cast<int>(c_.q_dim()), KV = static_cast<int>(c_.kv_dim());
    const int F = static_cast<int>(c_.ffn), V = static_cast<int>(c_.vocab), ldq = QD + 2 * KV;
    const float eps = c_.rms_eps;
    const int pos0 = static_cast<int>(pos_);
    float* x = x_.as<float>();
    uint32_t* act = act_.as<uint32_t>();
    float* s = s_.as<float>();
    int32_t* qsum = qsum_.as<int32_t>();
    TERN_CUDA_CHECK(cudaMemcpyAsync(tok_.as<int32_t>(), toks, M * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    launch_embed(emb_.as<void>(), emb_type_, H, tok_.as<int32_t>(), M, x, st);
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerDev& L = layers_[l];
      GemmArgs g;
      g.act = act, g.s = s, g.qsum = qsum, g.M = M;
      launch_norm_quant(x, H, L.attn_norm.as<float>(), H, eps, M, act, L.qkv.view.kwords(), s, qsum, st);
      g.w = L.qkv.view, g.out = qkv_.as<float>(), g.ldo = ldq;
      launch_gemm(kEpiStore, g, st);
      launch_rope_kv(ash_, qkv_.as<float>(), ldq, M, pos0, rope_.as<float>(), kcache(l), vcache(l), st);
      launch_attn_prefill(ash_, qkv_.as<float>(), ldq, kcache(l), vcache(l), M, pos0, att_.as<float>(), QD, st);
      launch_norm_quant(att_.as<float>(), QD, L.attn_sub_norm.as<float>(), QD, eps, M, act, L.o.view.kwords(), s, qsum, st);
      g.w = L.o.view, g.out = x, g.ldo = H;
      launch_gemm(kEpiAdd, g, st);
      launch_norm_quant(x, H, L.ffn_norm.as<float>(), H, eps, M, act, L.gu.view.kwords(), s, qsum, st);
      g.w = L.gu.view, g.out = gu_.as<float>(), g.ldo = 2 * F;
      launch_gemm(kEpiStore, g, st);
      launch_norm_quant_gated(gu_.as<float>(), F, L.ffn_sub_norm.as<float>(), eps, act_code(c_.act), M, act,
                              L.down.view.kwords(), s, qsum, st);
      g.w = L.down.view, g.out = x, g.ldo = H;
      launch_gemm(kEpiAdd, g, st);
    }
    if (which == Logits::Last) {
      launch_lm_head(emb_.as<void>(), emb_type_, V, H, x + static_cast<size_t>(M - 1) * H, 1, out_norm_.as<float>(), eps,
                     logits_.as<float>(), st);
      TERN_CUDA_CHECK(cudaMemcpyAsync(h_logits_.get(), logits_.as<float>(), V * sizeof(float), cudaMemcpyDeviceToHost, st));
    } else if (which == Logits::All) {
      const size_t need = static_cast<size_t>(M) * V * sizeof(float);
      if (logits_all_.size() < need) logits_all_ = DevBuf(need);
      launch_lm_head(emb_.as<void>(), emb_type_, V, H, x, M, out_norm_.as<float>(), eps, logits_all_.as<float>(), st);
      TERN_CUDA_CHECK(cudaMemcpyAsync(logits, logits_all_.as<float>(), need, cudaMemcpyDeviceToHost, st));
    }
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    pos_ += M;
    if (which == Logits::Last) std::memcpy(logits, h_logits_.get(), V * sizeof(float));
  }

  ModelConfig c_;
  int64_t ctx_;
  bool use_graph_;
  bool use_pdl_;
  int64_t pos_ = 0;
  std::string name_;
  std::unique_ptr<Stream> stream_;
  std::vector<LayerDev> layers_;
  DevBuf emb_, out_norm_, rope_, kc_, vc_;
  int emb_type_ = 1;
  int maxm_ = 1;
  DevBuf x_, qkv_, att_, gu_, h_, act_, s_, qsum_, tok_, logits_, logits_all_, params_, partial_, counters_;
  AttnShape ash_;
  int splits_ = 1;
  Pinned<int32_t> h_params_;
  Pinned<float> h_logits_;
  GraphExec graph_;
};

}  // namespace

}  // namespace cuda

bool cuda_available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::unique_ptr<Engine> make_cuda_engine(const Model& model, const EngineOptions& opts) {
  if (!cuda_available()) cuda::throw_error("--backend cuda: no CUDA device found");
  return std::make_unique<cuda::CudaEngine>(model, opts);
}

}  // namespace tern
