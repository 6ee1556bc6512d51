// The CUDA engine: the exact BitNet b1.58 forward pass of CpuEngine
// (backend/cpu/cpu_engine.cpp) on one GPU. All weights are uploaded at construction
// (ternary linears repacked to tern2-mma, kernels.h; the embedding/LM head kept in its
// stored F16/BF16/F32, or an int8 copy with --lm-head int8), with a float32 KV cache
// [layer][sequence][ctx][kv_dim] on the device.
//
// Decode (one token): 5 launches per layer (QKV GEMV, attention with RoPE and the cache
// write, O GEMV + residual, gate/up GEMV + relu^2*up, down GEMV + residual; every GEMV
// RMSNorms and quantizes its own input) plus the LM head, captured once as a CUDA graph
// and replayed. Token, position and sequence travel through device memory, so one graph
// serves every position of every sequence; only the logits (or just the argmax) come back.
// Batched decode (B sequences, one token each): the prefill kernels over B rows, each
// row with its own position and cache (RowMap), the head on cuBLAS; one graph per B.
// Prefill (M > 1 tokens): the same math over M rows with int8 tensor-core GEMMs, a
// quantization kernel per linear input and causal attention over the prompt.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <utility>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/weights.h"
#include "model/head_i8.h"
#include "train/lora_adapter.h"
#include "util/thread_pool.h"
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
constexpr int kMaxBatch = 512;    // sequences per batched decode pass

class CudaEngine final : public Engine {
 public:
  CudaEngine(const Model& model, const EngineOptions& opts)
      : c_(model.config),
        ctx_(opts.ctx > 0 ? opts.ctx : model.config.ctx),
        n_seq_(opts.n_seq),
        use_graph_(!env_flag_off("TERN_CUDA_GRAPH")),
        use_pdl_(!env_flag_off("TERN_CUDA_PDL")),
        skip_(std::getenv("TERN_CUDA_SKIP") != nullptr ? std::getenv("TERN_CUDA_SKIP") : "") {
    validate(model, opts);
    int dev = 0;
    TERN_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    TERN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 8) cuda::throw_error(std::string("CUDA backend needs compute capability 8.0 or newer; ") + prop.name + " has " +
                                    std::to_string(prop.major) + "." + std::to_string(prop.minor));
    name_ = std::string("cuda (") + prop.name + ")";
    if (opts.lm_head == LmHead::Int8) name_ += " int8 head";
    if (prop.major < 9) use_pdl_ = false;
    stream_ = std::make_unique<Stream>();
    const cudaStream_t st = stream_->get();

    const int H = static_cast<int>(c_.hidden), QD = static_cast<int>(c_.q_dim()), KV = static_cast<int>(c_.kv_dim());
    const int F = static_cast<int>(c_.ffn), V = static_cast<int>(c_.vocab);
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
    upload_loras(opts.loras);
    emb_type_ = float_type_code(model.embedding.type);
    emb_ = upload_bytes(model.embedding.data, model.embedding.nbytes());
    HeadWeights hw;
    hw.emb = emb_.as<void>(), hw.type = emb_type_, hw.V = V, hw.H = H;
    if (opts.lm_head == LmHead::Int8) {
      ThreadPool pool(opts.threads);
      const HeadI8 h8 = quantize_head_i8(model.embedding, pool);
      head8_q_ = upload_vec(h8.q);
      head8_s_ = upload_vec(h8.scale);
      hw.q8 = head8_q_.as<int8_t>(), hw.scale8 = head8_s_.as<float>();
    }
    head_gemm_ = std::make_unique<HeadGemm>(hw, st);
    out_norm_ = upload_vec(model.output_norm);
    rope_ = upload_vec(rope_table(c_.rope_theta, static_cast<int>(c_.head_dim), static_cast<int>(ctx_)));

    seq_stride_ = ctx_ * KV;
    const size_t cache = static_cast<size_t>(c_.n_layers) * n_seq_ * seq_stride_;
    kc_ = DevBuf(cache * sizeof(float));
    vc_ = DevBuf(cache * sizeof(float));
    pos_.assign(n_seq_, 0);

    maxm_ = static_cast<int>(std::min<int64_t>(kMaxPrefill, std::max<int64_t>(ctx_, 1)));
    maxb_ = std::min(n_seq_, kMaxBatch);
    const size_t M = std::max(maxm_, maxb_);
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
    logits_ = DevBuf(static_cast<size_t>(V) * sizeof(float));
    if (maxb_ > 1) blogits_ = DevBuf(static_cast<size_t>(maxb_) * V * sizeof(float));
    params_ = DevBuf(3 * M * sizeof(int32_t));
    if (lora_rmax_ > 0) lora_t_ = DevBuf(M * lora_rmax_ * sizeof(float));
    split_part_ = DevBuf(gemm_split_part_ints(prop.multiProcessorCount) * sizeof(int32_t));
    split_count_ = DevBuf(kMaxSplitPositions * sizeof(int32_t));
    TERN_CUDA_CHECK(cudaMemsetAsync(split_count_.as<void>(), 0, split_count_.size(), st));
    best_ = DevBuf(M * sizeof(unsigned long long));

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

    h_params_ = Pinned<int32_t>(3 * M);
    h_best_ = Pinned<unsigned long long>(M);
    h_logits_ = Pinned<float>(c_.vocab);
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
  }

  const ModelConfig& config() const override { return c_; }
  std::string name() const override { return name_; }
  int n_seq() const override { return n_seq_; }
  int64_t position(int seq) const override { return pos_.at(check_seq(seq)); }
  int64_t context_length() const override { return ctx_; }
  void reset(int seq) override { pos_.at(check_seq(seq)) = 0; }
  void truncate(int seq, int64_t n) override {
    int64_t& p = pos_.at(check_seq(seq));
    p = std::clamp<int64_t>(n, 0, p);
  }

  void forward(int seq, std::span<const int32_t> tokens, float* logits, Logits which) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    check_forward_args(c_, seq, n_seq_, tokens, n == 0 ? 0 : pos_[seq], ctx_);
    if (n == 0) return;
    if (n == 1) {
      step(std::span<const int>(&seq, 1), tokens, which != Logits::None ? logits : nullptr, nullptr);
      return;
    }
    const int64_t V = c_.vocab;
    for (int64_t i = 0; i < n; i += maxm_) {
      const int len = static_cast<int>(std::min<int64_t>(maxm_, n - i));
      const bool last = i + len == n;
      if (which == Logits::All) {
        prefill(seq, tokens.data() + i, len, logits + i * V, Logits::All);
      } else {
        prefill(seq, tokens.data() + i, len, logits, last ? which : Logits::None);
      }
    }
  }

  void decode(std::span<const int> seqs, std::span<const int32_t> tokens, float* logits, int32_t* argmax) override {
    check_decode_args(c_, n_seq_, seqs, tokens, ctx_, [&](int s) { return pos_[s]; });
    const size_t V = c_.vocab;
    for (size_t i = 0; i < seqs.size(); i += maxb_) {
      const size_t n = std::min<size_t>(maxb_, seqs.size() - i);
      step(seqs.subspan(i, n), tokens.subspan(i, n), logits != nullptr ? logits + i * V : nullptr,
           argmax != nullptr ? argmax + i : nullptr);
    }
  }

 private:
  struct LayerDev {
    DevTernary qkv, o, gu, down;
    DevBuf attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
  };

  int check_seq(int seq) const {
    if (seq < 0 || seq >= n_seq_) cuda::throw_error("sequence " + std::to_string(seq) + " is out of range (engine has " +
                                                    std::to_string(n_seq_) + ")");
    return seq;
  }

  void validate(const Model& m, const EngineOptions& opts) const {
    const ModelConfig& c = m.config;
    auto need = [](bool ok, const std::string& what) {
      if (!ok) cuda::throw_error("CUDA backend: " + what);
    };
    need(opts.n_seq >= 1, "n_seq must be at least 1");
    need(c.n_layers > 0 && static_cast<int64_t>(m.layers.size()) == c.n_layers, "layer count does not match the config");
    need(c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0, "heads must be a multiple of KV heads");
    need(attn_head_dim_supported(static_cast<int>(c.head_dim)),
         "head_dim " + std::to_string(c.head_dim) + " is not supported (32, 64, 128 or 256)");
    need(c.hidden < (1 << 20) && c.ffn < (1 << 20) && c.vocab < (1 << 28), "dimensions too large");
    need(opts.lm_head != LmHead::Int8 || c.hidden % 4 == 0, "--lm-head int8 needs a hidden size divisible by 4");
    need(opts.kv_type == KvType::F32, "--cache-type f16 is a CPU option (the CUDA backend keeps an F32 cache)");
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

  // LoRA groups: the linears sharing an input. kLoraQKV {q,k,v} on attn_norm(x), kLoraO {o}
  // on attn_sub_norm(att), kLoraGU {gate,up} on ffn_norm(x), kLoraDown {down} on
  // ffn_sub_norm(act(gate)*up). See LoraDev in kernels.h.
  enum { kLoraQKV = 0, kLoraO, kLoraGU, kLoraDown, kLoraGroups };
  struct LoraGroupDev {
    DevBuf A, B;
    LoraDev view;
  };

  void upload_loras(const std::vector<LoraRef>& loras) {
    if (loras.empty()) return;
    const int64_t H = c_.hidden, QD = c_.q_dim(), KV = c_.kv_dim(), F = c_.ffn;
    struct Member {
      Proj p;
      int64_t offset;  // first output row within the group
    };
    const std::vector<Member> members[kLoraGroups] = {
        {{Proj::Q, 0}, {Proj::K, QD}, {Proj::V, QD + KV}}, {{Proj::O, 0}}, {{Proj::Gate, 0}, {Proj::Up, F}}, {{Proj::Down, 0}}};
    const int64_t in[kLoraGroups] = {H, QD, H, F}, out[kLoraGroups] = {QD + 2 * KV, H, 2 * F, H};
    lora_.resize(c_.n_layers);
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      for (int g = 0; g < kLoraGroups; ++g) {
        int R = 0;
        for (const LoraRef& ref : loras) {
          for (const Member& mb : members[g]) {
            if (ref.adapter->layers.at(l)[static_cast<int>(mb.p)]) R += ref.adapter->rank;
          }
        }
        if (R == 0) continue;
        std::vector<float> A(static_cast<size_t>(R) * in[g]), B(static_cast<size_t>(out[g]) * R, 0.0f);
        int j0 = 0;
        for (const LoraRef& ref : loras) {
          const float scale = ref.scale * ref.adapter->scaling();
          for (const Member& mb : members[g]) {
            const auto& w = ref.adapter->layers.at(l)[static_cast<int>(mb.p)];
            if (!w) continue;
            const int r = ref.adapter->rank;
            if (w->in != in[g] || static_cast<int64_t>(w->A.size()) != r * in[g] || static_cast<int64_t>(w->B.size()) != w->out * r) {
              cuda::throw_error("--lora: adapter shapes do not match the model at layer " + std::to_string(l) + " " + proj_name(mb.p));
            }
            std::copy(w->A.begin(), w->A.end(), A.begin() + static_cast<int64_t>(j0) * in[g]);
            for (int64_t o = 0; o < w->out; ++o) {
              for (int k = 0; k < r; ++k) B[(mb.offset + o) * R + j0 + k] = scale * w->B[o * r + k];
            }
            j0 += r;
          }
        }
        LoraGroupDev& d = lora_[l][g];
        d.A = upload_vec(A);
        d.B = upload_vec(B);
        d.view.A = d.A.as<float>(), d.view.B = d.B.as<float>(), d.view.R = R;
        d.view.n = static_cast<int>(in[g]), d.view.out = static_cast<int>(out[g]);
        lora_rmax_ = std::max(lora_rmax_, R);
      }
    }
  }

  // The LoRA group g of layer l (R == 0: none).
  LoraDev lora(size_t l, int g) const { return lora_.empty() ? LoraDev{} : lora_[l][g].view; }

  // Layer l's cache of sequence seq.
  float* kcache(size_t l, int seq = 0) const { return kc_.as<float>() + (l * n_seq_ + seq) * seq_stride_; }
  float* vcache(size_t l, int seq = 0) const { return vc_.as<float>() + (l * n_seq_ + seq) * seq_stride_; }

  // The LM head of one row (GEMV, fused argmax) or of M rows (cuBLAS).
  void head(const float* x, int M, float* logits, unsigned long long* best, cudaStream_t st, bool pdl) {
    const int V = static_cast<int>(c_.vocab), H = static_cast<int>(c_.hidden);
    if (M > 1) return head_gemm_->run(x, M, out_norm_.as<float>(), c_.rms_eps, logits, best, st);
    if (head8_q_.size() != 0) {
      launch_lm_head_i8(head8_q_.as<int8_t>(), head8_s_.as<float>(), V, H, x, out_norm_.as<float>(), c_.rms_eps, logits, st, pdl,
                        best);
    } else {
      launch_lm_head(emb_.as<void>(), emb_type_, V, H, x, 1, out_norm_.as<float>(), c_.rms_eps, logits, st, pdl, best);
    }
  }

  // One token of one sequence (params: token, position, sequence), launched into `st`
  // (captured into a graph on first use).
  void step1_body(cudaStream_t st, bool want_logits) {
    const int H = static_cast<int>(c_.hidden), QD = static_cast<int>(c_.q_dim()), F = static_cast<int>(c_.ffn);
    const float eps = c_.rms_eps;
    int32_t* params = params_.as<int32_t>();
    unsigned long long* best = best_.as<unsigned long long>();
    TERN_CUDA_CHECK(cudaMemcpyAsync(params, h_params_.get(), 3 * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    float* x = x_.as<float>();
    launch_embed(emb_.as<void>(), emb_type_, H, params, 1, x, st, best);
    // TERN_CUDA_SKIP=qkv,attn,o,gu,down (diagnostics only: wrong results) leaves kernels
    // out of the step, to time each kind's share of the real pipelined step.
    auto on = [&](const char* k) { return skip_.find(k) == std::string::npos; };
    bool first = true;  // the first kernel after the embedding may not overlap it (PDL
                        // edges link kernels only, and the embedding follows a copy)
    auto pdl = [&] { return use_pdl_ && !std::exchange(first, false); };
    float* lt = lora_t_.as<float>();
    // LoRA: t = A . xn of the group (one small kernel), B . t fused into the GEMV epilogue.
    auto with_lora = [&](GemvArgs& a, const LoraDev& lg, const float* in, const float* normw) {
      a.lora_R = lg.R;
      if (lg.R == 0) return;
      launch_lora_a(lg, in, lg.n, false, 0, normw, eps, 1, lt, st, pdl());
      a.lora_B = lg.B, a.lora_t = lt;
    };
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerDev& L = layers_[l];
      GemvArgs a;
      a.eps = eps;
      a.w = L.qkv.view, a.in = x, a.normw = L.attn_norm.as<float>(), a.n = H, a.out = qkv_.as<float>();
      with_lora(a, lora(l, kLoraQKV), x, L.attn_norm.as<float>());
      if (on("qkv")) launch_gemv(kEpiStore, a, st, pdl());
      if (on("attn")) {
        launch_attn_decode(ash_, qkv_.as<float>(), kcache(l), vcache(l), rope_.as<float>(), params + 1, params + 2, seq_stride_,
                           splits_, partial_.as<float>(), counters_.as<int32_t>(), att_.as<float>(), st, pdl());
      }
      a.w = L.o.view, a.in = att_.as<float>(), a.normw = L.attn_sub_norm.as<float>(), a.n = QD, a.out = x;
      with_lora(a, lora(l, kLoraO), att_.as<float>(), L.attn_sub_norm.as<float>());
      if (on("o")) launch_gemv(kEpiAdd, a, st, pdl());
      a.w = L.gu.view, a.in = x, a.normw = L.ffn_norm.as<float>(), a.n = H, a.out = h_.as<float>(), a.act = act_code(c_.act);
      with_lora(a, lora(l, kLoraGU), x, L.ffn_norm.as<float>());
      if (on("gu")) launch_gemv(kEpiGateUp, a, st, pdl());
      a.w = L.down.view, a.in = h_.as<float>(), a.normw = L.ffn_sub_norm.as<float>(), a.n = F, a.out = x;
      with_lora(a, lora(l, kLoraDown), h_.as<float>(), L.ffn_sub_norm.as<float>());
      if (on("down")) launch_gemv(kEpiAdd, a, st, pdl());
    }
    head(x, 1, logits_.as<float>(), best, st, pdl());
    TERN_CUDA_CHECK(cudaMemcpyAsync(h_best_.get(), best, sizeof(unsigned long long), cudaMemcpyDeviceToHost, st));
    if (want_logits) {
      TERN_CUDA_CHECK(cudaMemcpyAsync(h_logits_.get(), logits_.as<float>(), c_.vocab * sizeof(float), cudaMemcpyDeviceToHost, st));
    }
  }

  // The layers over M rows in x_ (prefill of one sequence, or one token of each of M
  // sequences), caches from sequence seq0 on, rows placed by `rows`.
  void layers_rows(int M, const RowMap& rows, int seq0, cudaStream_t st) {
    const int H = static_cast<int>(c_.hidden), QD = static_cast<int>(c_.q_dim()), KV = static_cast<int>(c_.kv_dim());
    const int F = static_cast<int>(c_.ffn), ldq = QD + 2 * KV;
    const float eps = c_.rms_eps;
    float* x = x_.as<float>();
    uint32_t* act = act_.as<uint32_t>();
    float* s = s_.as<float>();
    int32_t* qsum = qsum_.as<int32_t>();
    // TERN_CUDA_SKIP=gemm,rope,attn,norm (diagnostics, wrong results): see step1_body.
    const bool gemm = skip_.find("gemm") == std::string::npos, rope = skip_.find("rope") == std::string::npos;
    const bool attn = skip_.find("attn") == std::string::npos, norm = skip_.find("norm") == std::string::npos;
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerDev& L = layers_[l];
      GemmArgs g;
      g.act = act, g.s = s, g.qsum = qsum, g.M = M;
      g.split_part = split_part_.as<int32_t>(), g.split_count = split_count_.as<int32_t>();
      if (norm) launch_norm_quant(x, H, L.attn_norm.as<float>(), H, eps, M, act, L.qkv.view.kwords(), s, qsum, st);
      g.w = L.qkv.view, g.out = qkv_.as<float>(), g.ldo = ldq;
      if (gemm) launch_gemm(kEpiStore, g, st);
      lora_rows(lora(l, kLoraQKV), x, H, false, L.attn_norm.as<float>(), M, qkv_.as<float>(), ldq, st);
      if (rope) launch_rope_kv(ash_, qkv_.as<float>(), ldq, M, rows, rope_.as<float>(), kcache(l, seq0), vcache(l, seq0), st);
      if (attn) {
        launch_attn_prefill(ash_, qkv_.as<float>(), ldq, kcache(l, seq0), vcache(l, seq0), M, rows, att_.as<float>(), QD, st);
      }
      if (norm) {
        launch_norm_quant(att_.as<float>(), QD, L.attn_sub_norm.as<float>(), QD, eps, M, act, L.o.view.kwords(), s, qsum, st);
      }
      g.w = L.o.view, g.out = x, g.ldo = H;
      if (gemm) launch_gemm(kEpiAdd, g, st);
      lora_rows(lora(l, kLoraO), att_.as<float>(), QD, false, L.attn_sub_norm.as<float>(), M, x, H, st);
      if (norm) launch_norm_quant(x, H, L.ffn_norm.as<float>(), H, eps, M, act, L.gu.view.kwords(), s, qsum, st);
      g.w = L.gu.view, g.out = gu_.as<float>(), g.ldo = 2 * F;
      if (gemm) launch_gemm(kEpiStore, g, st);
      lora_rows(lora(l, kLoraGU), x, H, false, L.ffn_norm.as<float>(), M, gu_.as<float>(), 2 * F, st);
      if (norm) {
        launch_norm_quant_gated(gu_.as<float>(), F, L.ffn_sub_norm.as<float>(), eps, act_code(c_.act), M, act,
                                L.down.view.kwords(), s, qsum, st);
      }
      g.w = L.down.view, g.out = x, g.ldo = H;
      // The down input (act(gate) * up) is read by lora_a before the GEMM adds into x.
      lora_rows(lora(l, kLoraDown), gu_.as<float>(), 2 * F, true, L.ffn_sub_norm.as<float>(), M, nullptr, 0, st);
      if (gemm) launch_gemm(kEpiAdd, g, st);
      if (lora(l, kLoraDown).R > 0) launch_lora_b(lora(l, kLoraDown), lora_t_.as<float>(), M, x, H, st);
    }
  }

  // LoRA over M rows: t = A . xn (input rows at stride ldx; gated: [gate | up] rows), then
  // out += B . t unless out is null (the caller adds B . t itself, later).
  void lora_rows(const LoraDev& lg, const float* in, int ldx, bool gated, const float* normw, int M, float* out, int ldo,
                 cudaStream_t st) {
    if (lg.R == 0) return;
    launch_lora_a(lg, in, ldx, gated, act_code(c_.act), normw, c_.rms_eps, M, lora_t_.as<float>(), st);
    if (out != nullptr) launch_lora_b(lg, lora_t_.as<float>(), M, out, ldo, st);
  }

  // One token of each of B sequences (params: tokens[B], positions[B], sequences[B]).
  void stepB_body(cudaStream_t st, int B) {
    int32_t* params = params_.as<int32_t>();
    unsigned long long* best = best_.as<unsigned long long>();
    TERN_CUDA_CHECK(cudaMemcpyAsync(params, h_params_.get(), 3 * B * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    launch_embed(emb_.as<void>(), emb_type_, static_cast<int>(c_.hidden), params, B, x_.as<float>(), st, best);
    RowMap rows;
    rows.pos = params + B, rows.seq = params + 2 * B, rows.seq_stride = seq_stride_;
    layers_rows(B, rows, 0, st);
    if (skip_.find("head") == std::string::npos) head(x_.as<float>(), B, blogits_.as<float>(), best, st, false);
    TERN_CUDA_CHECK(cudaMemcpyAsync(h_best_.get(), best, B * sizeof(unsigned long long), cudaMemcpyDeviceToHost, st));
  }

  // Runs body(st) through a CUDA graph captured once per key.
  template <class Body>
  void run_graph(std::pair<int, bool> key, Body body) {
    const cudaStream_t st = stream_->get();
    if (!use_graph_) return body(st);
    std::unique_ptr<GraphExec>& g = graphs_[key];
    if (g == nullptr) {
      auto fresh = std::make_unique<GraphExec>();
      TERN_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
      try {
        body(st);
      } catch (...) {
        cudaGraph_t graph = nullptr;
        cudaStreamEndCapture(st, &graph);
        if (graph != nullptr) cudaGraphDestroy(graph);
        cudaGetLastError();
        graphs_.erase(key);
        throw;
      }
      TERN_CUDA_CHECK(cudaStreamEndCapture(st, &fresh->graph_));
      TERN_CUDA_CHECK(cudaGraphInstantiate(&fresh->exec_, fresh->graph_, 0));
      g = std::move(fresh);
    }
    TERN_CUDA_CHECK(cudaGraphLaunch(g->exec_, st));
  }

  // One decode step of n <= maxb_ sequences (arguments already checked).
  void step(std::span<const int> seqs, std::span<const int32_t> tokens, float* logits, int32_t* argmax) {
    const cudaStream_t st = stream_->get();
    const int B = static_cast<int>(seqs.size());
    int32_t* p = h_params_.get();
    for (int i = 0; i < B; ++i) {
      p[i] = tokens[i];
      p[B + i] = static_cast<int32_t>(pos_[seqs[i]]);
      p[2 * B + i] = seqs[i];
    }
    const bool want_logits = logits != nullptr;
    if (B == 1) {
      run_graph({1, want_logits}, [&](cudaStream_t s) { step1_body(s, want_logits); });
    } else {
      run_graph({B, false}, [&](cudaStream_t s) { stepB_body(s, B); });
      if (want_logits) {
        TERN_CUDA_CHECK(cudaMemcpyAsync(logits, blogits_.as<float>(), static_cast<size_t>(B) * c_.vocab * sizeof(float),
                                        cudaMemcpyDeviceToHost, st));
      }
    }
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int i = 0; i < B; ++i) pos_[seqs[i]] += 1;
    if (argmax != nullptr) {
      for (int i = 0; i < B; ++i) argmax[i] = argmax_from_key(h_best_.get()[i]);
    }
    if (B == 1 && want_logits) std::memcpy(logits, h_logits_.get(), c_.vocab * sizeof(float));
  }

  void prefill(int seq, const int32_t* toks, int M, float* logits, Logits which) {
    const cudaStream_t st = stream_->get();
    const int H = static_cast<int>(c_.hidden), V = static_cast<int>(c_.vocab);
    float* x = x_.as<float>();
    TERN_CUDA_CHECK(cudaMemcpyAsync(tok_.as<int32_t>(), toks, M * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    launch_embed(emb_.as<void>(), emb_type_, H, tok_.as<int32_t>(), M, x, st);
    RowMap rows;
    rows.pos0 = static_cast<int>(pos_[seq]);
    layers_rows(M, rows, seq, st);
    if (which == Logits::Last) {
      head(x + static_cast<size_t>(M - 1) * H, 1, logits_.as<float>(), nullptr, st, false);
      TERN_CUDA_CHECK(cudaMemcpyAsync(h_logits_.get(), logits_.as<float>(), V * sizeof(float), cudaMemcpyDeviceToHost, st));
    } else if (which == Logits::All) {
      const size_t need = static_cast<size_t>(M) * V * sizeof(float);
      if (logits_all_.size() < need) logits_all_ = DevBuf(need);
      head(x, M, logits_all_.as<float>(), nullptr, st, false);
      TERN_CUDA_CHECK(cudaMemcpyAsync(logits, logits_all_.as<float>(), need, cudaMemcpyDeviceToHost, st));
    }
    TERN_CUDA_CHECK(cudaStreamSynchronize(st));
    pos_[seq] += M;
    if (which == Logits::Last) std::memcpy(logits, h_logits_.get(), V * sizeof(float));
  }

  ModelConfig c_;
  int64_t ctx_;
  int n_seq_;
  bool use_graph_;
  bool use_pdl_;
  std::string skip_;
  std::vector<int64_t> pos_;
  std::string name_;
  std::unique_ptr<Stream> stream_;
  std::vector<LayerDev> layers_;
  DevBuf emb_, head8_q_, head8_s_, out_norm_, rope_, kc_, vc_;
  std::unique_ptr<HeadGemm> head_gemm_;
  int emb_type_ = 1;
  int64_t seq_stride_ = 0;
  int maxm_ = 1, maxb_ = 1;
  DevBuf x_, qkv_, att_, gu_, h_, act_, s_, qsum_, tok_, logits_, blogits_, logits_all_, params_, best_, partial_, counters_;
  DevBuf split_part_, split_count_;  // split-K scratch of the small-M GEMMs (batched decode)
  std::vector<std::array<LoraGroupDev, kLoraGroups>> lora_;  // per layer; empty without --lora
  int lora_rmax_ = 0;
  DevBuf lora_t_;  // [rows][lora_rmax_]: A . xn of the current group
  AttnShape ash_;
  int splits_ = 1;
  Pinned<int32_t> h_params_;
  Pinned<unsigned long long> h_best_;
  Pinned<float> h_logits_;
  std::map<std::pair<int, bool>, std::unique_ptr<GraphExec>> graphs_;
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

double cuda_copy_bandwidth() {
  constexpr size_t kBytes = size_t{1} << 30;
  cuda::DevBuf a(kBytes), b(kBytes);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  TERN_CUDA_CHECK(cudaEventCreate(&e0));
  TERN_CUDA_CHECK(cudaEventCreate(&e1));
  TERN_CUDA_CHECK(cudaMemset(a.as<void>(), 1, kBytes));
  float best = 1e30f;
  for (int rep = 0; rep < 6; ++rep) {
    TERN_CUDA_CHECK(cudaEventRecord(e0));
    TERN_CUDA_CHECK(cudaMemcpy(b.as<void>(), a.as<void>(), kBytes, cudaMemcpyDeviceToDevice));
    TERN_CUDA_CHECK(cudaEventRecord(e1));
    TERN_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    TERN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (rep > 0) best = std::min(best, ms);  // the first copy warms up
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * kBytes / (best * 1e-3);
}

std::unique_ptr<Engine> make_cuda_engine(const Model& model, const EngineOptions& opts) {
  if (!cuda_available()) cuda::throw_error("--backend cuda: no CUDA device found");
  return std::make_unique<cuda::CudaEngine>(model, opts);
}

}  // namespace tern
