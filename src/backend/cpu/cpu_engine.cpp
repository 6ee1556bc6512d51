// The CPU engine: the exact BitNet b1.58 forward pass over a batch of M tokens of
// one sequence, layer by layer, with a float32 KV cache per sequence. Every ternary
// linear reads each weight row once per batch (rows outer, tokens inner), so prefill
// is a real matrix-matrix product rather than M matrix-vector products.
// LoRA adapters (EngineOptions::loras) add their branch to each adapted linear's output
// from the same float input the linear quantizes (backend/cpu/lora_apply.h).
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"
#include "backend/cpu/lora_apply.h"
#include "model/head_i8.h"
#include "runtime/engine.h"
#include "util/aligned.h"
#include "tern/error.h"
#include "train/lora_adapter.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace tern {

namespace {

// int8 activations of M tokens for one linear's input, zero-padded to 128.
struct QuantizedActs {
  int64_t rows = 0, padded = 0;
  AlignedVector<int8_t> q;  // (64-byte aligned: util/aligned.h says why)
  std::vector<float> scale;
  std::vector<int32_t> sum;
  // The tokens the prefill tiles leave over (decode's one token; rows % 4 of a prefill)
  // go through the single-token dot: single[i] is token first_single + i's row in the
  // order cpu::ternary_dot_decode reads (q's own row, or one in single_q).
  int64_t first_single = 0;
  const int8_t* single[4] = {};
  AlignedVector<int8_t> single_q;

  void quantize(const float* x, int64_t m, int64_t n, ThreadPool& pool) {
    rows = m;
    padded = (n + kTernBlock - 1) / kTernBlock * kTernBlock;
    q.resize(m * padded);
    scale.resize(m);
    sum.resize(m);
    pool.parallel_for(m, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) scale[i] = cpu::quantize_row_i8(x + i * n, n, padded, q.data() + i * padded, &sum[i]);
    });
    first_single = m / 4 * 4;
    single_q.resize(3 * padded);  // no allocation once the widest input has been seen
    for (int64_t i = first_single; i < m; ++i) {
      single[i - first_single] = cpu::decode_acts(q.data() + i * padded, padded, single_q.data() + (i - first_single) * padded);
    }
  }
};

// One output of a ternary linear from its exact integer dot (BITNET_FACTS: / s * scale),
// stored or added to what is there (o_proj and down add into the residual).
inline void store_dot(float& o, int32_t d, float act_scale, float w_scale, bool accumulate) {
  const float y = static_cast<float>(d) / act_scale * w_scale;
  o = accumulate ? o + y : y;
}

// Rows [r0, r1) of out[m, r] = (sum_k W[r,k] q[m,k]) / s[m] * W.scale, optionally added to out.
// Prefill is a blocked matrix product (cpu::ternary_dot8 / dot4 = 1 weight row x 8 / 4
// tokens): tokens in blocks whose int8 rows fit in L2 (512 tokens of the 6912-wide down
// projection are 3.5 MB), and within a block, rows in groups that fit in L1 with one
// tile of tokens, so each tile of token rows is read from L2 once per row group rather
// than once per row.
void ternary_rows(const TernaryMatrix& w, const QuantizedActs& a, float* out, bool accumulate, int64_t r0, int64_t r1) {
  constexpr int64_t kL2Budget = 384 * 1024, kL1Rows = 16 * 1024;
  // A multiple of 8, so the tokens no tile takes are the last rows % 4 (a.first_single on).
  const int64_t block = std::max<int64_t>(8, kL2Budget / a.padded / 8 * 8);
  const int64_t row_group = std::clamp<int64_t>(kL1Rows / w.row_bytes, 4, 32);
  auto put = [&](int64_t m, int64_t r, int32_t d) { store_dot(out[m * w.rows + r], d, a.scale[m], w.scale, accumulate); };
  // Tokens [mb, me) (a multiple of T) against rows [g0, g1), T tokens at a time.
  auto tiles = [&](auto tile, int64_t mb, int64_t me, int64_t g0, int64_t g1) {
    constexpr int T = decltype(tile)::value;
    for (int64_t m = mb; m < me; m += T) {
      for (int64_t r = g0; r < g1; ++r) {
        int32_t d[T];
        (T == 8 ? cpu::ternary_dot8 : cpu::ternary_dot4)(w.data + r * w.row_bytes, a.q.data() + m * a.padded, a.padded, w.padded_cols(),
                                                         a.sum.data() + m, d);
        for (int t = 0; t < T; ++t) put(m + t, r, d[t]);
      }
    }
  };
  for (int64_t m0 = 0; m0 < a.rows; m0 += block) {
    const int64_t m1 = std::min(a.rows, m0 + block), m8 = m0 + (m1 - m0) / 8 * 8, m4 = m0 + (m1 - m0) / 4 * 4;
    for (int64_t g0 = r0; g0 < r1; g0 += row_group) {
      const int64_t g1 = std::min(r1, g0 + row_group);
      tiles(std::integral_constant<int, 8>{}, m0, m8, g0, g1);
      tiles(std::integral_constant<int, 4>{}, m8, m4, g0, g1);
      for (int64_t r = g0; r < g1; ++r) {  // the tokens left over (decode: the one token)
        for (int64_t m = m4; m < m1; ++m) {
          put(m, r, cpu::ternary_dot_decode(w.data + r * w.row_bytes, a.single[m - a.first_single], w.padded_cols(), a.sum[m]));
        }
      }
    }
  }
}

// Several linears that read the same activations (q, k, v; gate, up) as one parallel loop
// over all their rows: one barrier instead of one per linear (a decode step is ~250 loops,
// and on 2 threads the waiting at their ends was ~11 % of it).
struct LinearOut {
  const TernaryMatrix* w;
  float* out;
};
// Decode (one token) with SIMD kernels: the rows of all parts in fours (row i + j q for
// j < 4, q a quarter of the rows), each four one cpu::ternary_dot4_decode, so every thread
// reads its share as four sequential streams (from the four quarters of the rows) and
// loads the activations once for all of them. On the scalar path (cpu::decode_streams()
// == 1) row by row, in order.
void ternary_linears_decode(std::initializer_list<LinearOut> parts, const QuantizedActs& a, bool accumulate, ThreadPool& pool) {
  int64_t total = 0;
  for (const LinearOut& p : parts) {
    if (p.w->row_bytes != parts.begin()->w->row_bytes) fail("ternary_linears: parts of different widths share one input");
    total += p.w->rows;
  }
  const int8_t* x = a.single[0];
  const int streams = cpu::decode_streams();
  const int64_t share = total / streams, padded = parts.begin()->w->padded_cols();
  auto put = [&](const LinearOut& p, int64_t r, int32_t d) { store_dot(p.out[r], d, a.scale[0], p.w->scale, accumulate); };
  // Global row g as (part, row in it, rows left in that part from there).
  auto locate = [&](int64_t g, const LinearOut*& part, int64_t& left) {
    for (const LinearOut& p : parts) {
      if (g < p.w->rows) {
        part = &p;
        left = p.w->rows - g;
        return g;
      }
      g -= p.w->rows;
    }
    return int64_t{-1};  // (never: g < total)
  };
  pool.parallel_for(share, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e;) {
      const LinearOut* part[4];
      int64_t row[4], m = e - i;
      for (int j = 0; j < streams; ++j) {
        int64_t left = 0;
        row[j] = locate(i + j * share, part[j], left);
        m = std::min(m, left);
      }
      for (int64_t k = 0; k < m; ++k) {
        if (streams == 1) {
          put(*part[0], row[0] + k, cpu::ternary_dot_decode(part[0]->w->data + (row[0] + k) * part[0]->w->row_bytes, x, padded, a.sum[0]));
          continue;
        }
        const uint8_t* rows[4];
        int32_t d[4];
        for (int j = 0; j < 4; ++j) rows[j] = part[j]->w->data + (row[j] + k) * part[j]->w->row_bytes;
        cpu::ternary_dot4_decode(rows, x, padded, a.sum[0], d);
        for (int j = 0; j < 4; ++j) put(*part[j], row[j] + k, d[j]);
      }
      i += m;
    }
  }, 8);
  for (int64_t g = streams * share; g < total; ++g) {  // the last total % 4 rows, alone
    const LinearOut* p = nullptr;
    int64_t left = 0;
    const int64_t r = locate(g, p, left);
    put(*p, r, cpu::ternary_dot_decode(p->w->data + r * p->w->row_bytes, x, padded, a.sum[0]));
  }
}

void ternary_linears(std::initializer_list<LinearOut> parts, const QuantizedActs& a, bool accumulate, ThreadPool& pool) {
  if (a.rows == 1) {
    ternary_linears_decode(parts, a, accumulate, pool);
    return;
  }
  int64_t total = 0;
  for (const LinearOut& p : parts) total += p.w->rows;
  pool.parallel_for(total, [&](int64_t b, int64_t e) {
    int64_t base = 0;
    for (const LinearOut& p : parts) {
      const int64_t lo = std::max(b, base), hi = std::min(e, base + p.w->rows);
      if (lo < hi) ternary_rows(*p.w, a, p.out, accumulate, lo - base, hi - base);
      base += p.w->rows;
    }
  }, 8);
}

// Decode streams every weight each token: from 4 KB pages it lost 20-30 % of its time on the
// 2-core VM, so the mapped files' bytes that decode reads in place (the LM head, ternary
// matrices used as stored) are brought into 2 MB pages where the kernel can; what a loader
// repacked into memory is not read from the file again and is left alone.
void settle_streamed_weights(const Model& m) {
  for (const auto& f : m.files) {
    const uint8_t *base = f->data(), *end = base + f->size(), *lo = end, *hi = base;
    auto add = [&](const void* p, size_t n) {
      const uint8_t* b = static_cast<const uint8_t*>(p);
      if (b >= base && b < end) lo = std::min(lo, b), hi = std::max(hi, b + std::min(n, static_cast<size_t>(end - b)));
    };
    add(m.embedding.data, m.embedding.nbytes());
    for (const Layer& L : m.layers) {
      for (const TernaryMatrix* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) add(w->data, static_cast<size_t>(w->rows * w->row_bytes));
    }
    if (lo < hi) f->settle_in_huge_pages(static_cast<size_t>(lo - base), static_cast<size_t>(hi - lo));
  }
}

class CpuEngine final : public Engine {
 public:
  CpuEngine(const Model& model, const EngineOptions& opts)
      : m_(model), c_(model.config), pool_(opts.threads), ctx_(opts.ctx > 0 ? opts.ctx : model.config.ctx) {
    if (opts.n_seq < 1) fail("the engine needs at least one sequence (n_seq {})", opts.n_seq);
    settle_streamed_weights(m_);
    // Left uninitialised: pages are only touched as positions are filled, so sequences
    // (and context) that are never used cost address space, not memory.
    const size_t cache = static_cast<size_t>(c_.n_layers) * ctx_ * c_.kv_dim();
    f16_cache_ = opts.kv_type == KvType::F16;
    seqs_.resize(opts.n_seq);
    for (Seq& s : seqs_) {
      if (f16_cache_) {
        s.k16 = make_aligned_array<uint16_t>(cache);
        s.v16 = make_aligned_array<uint16_t>(cache);
      } else {
        s.k = make_aligned_array<float>(cache);
        s.v = make_aligned_array<float>(cache);
      }
    }
    scratch_.resize(static_cast<size_t>(pool_.size() * scratch_floats()));
    inv_freq_.resize(c_.head_dim / 2);
    cpu::rope_inv_freq(c_.rope_theta, c_.head_dim, inv_freq_.data());
    int8_head_ = opts.lm_head == LmHead::Int8;
    if (int8_head_) head_i8_ = quantize_head_i8(m_.embedding, pool_);
    for (size_t i = 0; i < opts.loras.size(); ++i) {
      const LoraRef& ref = opts.loras[i];
      const std::string where = ref.adapter && !ref.adapter->source.empty() ? ref.adapter->source : fmt::format("LoRA adapter {}", i + 1);
      if (!ref.adapter) fail("{}: no adapter", where);
      if (!std::isfinite(ref.scale)) fail("{}: scale {} is not finite", where, ref.scale);
      check_lora_adapter(*ref.adapter, c_, where);
      loras_.push_back(ref);
    }
  }

  using Engine::forward;
  using Engine::position;
  using Engine::reset;
  using Engine::truncate;

  const ModelConfig& config() const override { return c_; }
  std::string name() const override { return "cpu (" + std::to_string(pool_.size()) + " threads, " + cpu::simd_level() + ")"; }
  int n_seq() const override { return static_cast<int>(seqs_.size()); }
  int64_t position(int seq) const override { return seqs_[checked(seq)].pos; }
  int64_t context_length() const override { return ctx_; }
  void reset(int seq) override { seqs_[checked(seq)].pos = 0; }
  void truncate(int seq, int64_t n) override {
    Seq& s = seqs_[checked(seq)];
    s.pos = std::clamp<int64_t>(n, 0, s.pos);
  }

  void forward(int seq, std::span<const int32_t> tokens, float* logits, Logits which) override {
    const int64_t pos = seq >= 0 && seq < n_seq() ? seqs_[seq].pos : 0;
    check_forward_args(c_, seq, n_seq(), tokens, pos, ctx_);
    run(seqs_[seq], tokens, logits, which);
  }

  // For now each sequence's token goes through the single-sequence path in turn: exact
  // and the same logits as forward(), but it reads every weight once per sequence. A
  // batched CPU step (one weight pass for all sequences, attention per sequence) is
  // later work.
  void decode(std::span<const int> seqs, std::span<const int32_t> tokens, float* logits, int32_t* argmax) override {
    // Everything is checked before any sequence runs, so an error advances none.
    check_decode_args(c_, n_seq(), seqs, tokens, ctx_, [&](int s) { return seqs_[s].pos; });
    const int64_t V = c_.vocab;
    if (!logits && argmax) row_.resize(V);
    for (size_t i = 0; i < seqs.size(); ++i) {
      float* row = logits ? logits + static_cast<int64_t>(i) * V : row_.data();
      run(seqs_[seqs[i]], tokens.subspan(i, 1), row, logits || argmax ? Logits::Last : Logits::None);
      if (argmax) argmax[i] = tern::argmax(row, V);
    }
  }

 private:
  struct Seq {
    // [layer][kv head][ctx][head_dim]: each head's keys (and values) one after another,
    // so attention streams them (rows of all heads, [ctx][kv_dim], put a head's 512 bytes
    // of each position 2.5 KB apart: read cold once per token, they cost more than
    // attention's arithmetic).
    AlignedArray<float> k, v;  // (64-byte aligned: util/aligned.h says why)
    AlignedArray<uint16_t> k16, v16;  // the same as F16 bits (KvType::F16)
    int64_t pos = 0;
  };

  // The calling pool thread's scratch of scratch_floats() floats (attention scores, a head
  // row), allocated with the engine: the decode path allocates nothing
  // (tests/unit/test_decode_alloc.cpp), whichever parts each thread happens to take.
  int64_t scratch_floats() const { return std::max<int64_t>(ctx_, c_.hidden); }
  float* scratch() { return scratch_.data() + ThreadPool::thread_index() * scratch_floats(); }

  size_t checked(int seq) const {
    if (seq < 0 || seq >= n_seq()) fail("sequence {} is out of range (the engine has {} sequences)", seq, n_seq());
    return static_cast<size_t>(seq);
  }

  // tokens are already checked.
  // Long inputs go through in chunks of kMaxRows tokens, so the activation buffers stay
  // bounded (~120 KB a token for the 2B model: a 2k prompt in one piece took 240 MB) and
  // the results are the same: every op is per token or reads the cache the earlier
  // chunks filled (Engine.PrefillEqualsDecodeAndChunks).
  static constexpr int64_t kMaxRows = 512;
  void run(Seq& s, std::span<const int32_t> tokens, float* logits, Logits which) {
    const int64_t n = static_cast<int64_t>(tokens.size()), V = c_.vocab;
    for (int64_t c0 = 0; c0 < n; c0 += kMaxRows) {
      const int64_t c = std::min(kMaxRows, n - c0);
      const bool last = c0 + c == n;
      const Logits w = which == Logits::All ? Logits::All : which == Logits::Last && last ? Logits::Last : Logits::None;
      run_rows(s, tokens.subspan(c0, c), which == Logits::All ? logits + c0 * V : logits, w);
    }
  }

  void run_rows(Seq& s, std::span<const int32_t> tokens, float* logits, Logits which) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n == 0) return;
    resize(n);
    for (int64_t i = 0; i < n; ++i) m_.embedding.row_to_f32(tokens[i], x_.data() + i * c_.hidden);
    for (int64_t i = 0; i < n; ++i) cpu::rope_table(s.pos + i, inv_freq_.data(), c_.head_dim / 2, rope_cs_.data() + i * c_.head_dim);
    for (int64_t l = 0; l < c_.n_layers; ++l) layer(s, l, n);
    s.pos += n;
    if (which == Logits::None) return;
    const int64_t first = which == Logits::All ? 0 : n - 1;
    lm_head(first, n, logits);
  }

  void resize(int64_t n) {
    const int64_t widest = std::max({c_.hidden, c_.q_dim(), c_.ffn});
    x_.resize(n * c_.hidden);
    norm_.resize(n * widest);
    q_.resize(n * c_.q_dim());
    k_.resize(n * c_.kv_dim());
    v_.resize(n * c_.kv_dim());
    att_.resize(n * c_.q_dim());
    gate_.resize(n * c_.ffn);
    up_.resize(n * c_.ffn);
    rope_cs_.resize(n * c_.head_dim);
  }

  void norm_rows(const float* in, const std::vector<float>& w, int64_t n, int64_t dim, float* out) {
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) cpu::rmsnorm(in + i * dim, w.data(), dim, c_.rms_eps, out + i * dim);
    });
  }

  void layer(Seq& s, int64_t li, int64_t n) {
    const int64_t pos = s.pos;
    const Layer& L = m_.layers[li];
    const int64_t H = c_.hidden, KV = c_.kv_dim(), QD = c_.q_dim(), F = c_.ffn, hd = c_.head_dim;
    // Attention block.
    norm_rows(x_.data(), L.attn_norm, n, H, norm_.data());
    acts_.quantize(norm_.data(), n, H, pool_);
    ternary_linears({{&L.q, q_.data()}, {&L.k, k_.data()}, {&L.v, v_.data()}}, acts_, false, pool_);
    add_loras(li, Proj::Q, norm_.data(), n, q_.data());  // before RoPE, as q_proj's output
    add_loras(li, Proj::K, norm_.data(), n, k_.data());
    add_loras(li, Proj::V, norm_.data(), n, v_.data());
    const int64_t at = li * ctx_ * KV;
    for (int64_t i = 0; i < n; ++i) {
      cpu::rope_neox_table(q_.data() + i * QD, c_.n_heads, hd, rope_cs_.data() + i * hd);
      cpu::rope_neox_table(k_.data() + i * KV, c_.n_kv_heads, hd, rope_cs_.data() + i * hd);
      for (int64_t g = 0; g < c_.n_kv_heads; ++g) {
        const int64_t row = at + g * ctx_ * hd + (pos + i) * hd, from = i * KV + g * hd;
        if (f16_cache_) {
          for (int64_t c = 0; c < hd; ++c) s.k16[row + c] = f32_to_f16(k_[from + c]), s.v16[row + c] = f32_to_f16(v_[from + c]);
        } else {
          std::copy_n(k_.data() + from, hd, s.k.get() + row);
          std::copy_n(v_.data() + from, hd, s.v.get() + row);
        }
      }
    }
    const int64_t group = c_.n_heads / c_.n_kv_heads;
    pool_.parallel_for(n * c_.n_heads, [&](int64_t b, int64_t e) {
      float* scores = scratch();
      for (int64_t j = b; j < e; ++j) {
        const int64_t i = j / c_.n_heads, h = j % c_.n_heads, g = h / group;
        float* out = att_.data() + i * QD + h * hd;
        const float* q = q_.data() + i * QD + h * hd;
        const int64_t head = at + g * ctx_ * hd;
        if (f16_cache_) {
          cpu::attention_head(q, s.k16.get() + head, s.v16.get() + head, hd, pos + i + 1, hd, scores, out);
        } else {
          cpu::attention_head(q, s.k.get() + head, s.v.get() + head, hd, pos + i + 1, hd, scores, out);
        }
      }
    });
    norm_rows(att_.data(), L.attn_sub_norm, n, QD, norm_.data());
    acts_.quantize(norm_.data(), n, QD, pool_);
    ternary_linears({{&L.o, x_.data()}}, acts_, true, pool_);
    // o_proj's output went straight into the residual; its LoRA branch follows it there.
    add_loras(li, Proj::O, norm_.data(), n, x_.data());
    // Feed-forward block.
    norm_rows(x_.data(), L.ffn_norm, n, H, norm_.data());
    acts_.quantize(norm_.data(), n, H, pool_);
    ternary_linears({{&L.gate, gate_.data()}, {&L.up, up_.data()}}, acts_, false, pool_);
    add_loras(li, Proj::Gate, norm_.data(), n, gate_.data());
    add_loras(li, Proj::Up, norm_.data(), n, up_.data());
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) cpu::gated_activation(gate_.data() + i * F, up_.data() + i * F, F, c_.act, gate_.data() + i * F);
    });
    norm_rows(gate_.data(), L.ffn_sub_norm, n, F, norm_.data());
    acts_.quantize(norm_.data(), n, F, pool_);
    ternary_linears({{&L.down, x_.data()}}, acts_, true, pool_);
    add_loras(li, Proj::Down, norm_.data(), n, x_.data());
  }

  // y[n, out] += scale * scaling * B(A x) for every adapter that adapts projection p of
  // layer li; x [n, in] is the linear's float input. Adapters apply in the given order.
  void add_loras(int64_t li, Proj p, const float* x, int64_t n, float* y) {
    for (const LoraRef& ref : loras_) {
      const std::optional<LoraWeights>& w = ref.adapter->layers[li][static_cast<int>(p)];
      if (!w) continue;
      const float s = ref.scale * ref.adapter->scaling();
      const int64_t r = ref.adapter->rank;
      lora_t_.resize(n * r);
      pool_.parallel_for(n, [&](int64_t b, int64_t e) { cpu::lora_down(*w, x + b * w->in, e - b, lora_t_.data() + b * r); });
      pool_.parallel_for(w->out, [&](int64_t b, int64_t e) { cpu::lora_up_add(*w, s, lora_t_.data(), n, y, b, e); }, 16);
    }
  }

  // logits[i - first] = embedding . final_norm(x_i) for tokens first..n-1.
  void lm_head(int64_t first, int64_t n, float* logits) {
    const int64_t H = c_.hidden, rows = n - first;
    norm_rows(x_.data() + first * H, m_.output_norm, rows, H, norm_.data());
    if (int8_head_) {
      lm_head_i8(rows, logits);
      return;
    }
    const FloatMatrix& E = m_.embedding;
    if (rows == 1) {
      // Decode: a 16-bit head (657 MB of the 2B model's 1.18 GB read per token) is converted
      // as it is read, inside the dot, the same floats as dot_f32 of the converted row. With
      // several rows (prefill logits) each head row is converted once, below, and reused.
      // 16-bit rows go four at a time from the four quarters of the vocabulary where the
      // four-row dot runs them together (four streams per thread: cpu::dot_half4_f32).
      const bool half = E.type == FloatType::F16 || E.type == FloatType::BF16, bf16 = E.type == FloatType::BF16;
      const uint16_t* E16 = static_cast<const uint16_t*>(E.data);
      const int64_t V = c_.vocab, quarter = half && cpu::decode_streams() == 4 ? V / 4 : 0;
      pool_.parallel_for(quarter, [&](int64_t b, int64_t e) {
        for (int64_t v = b; v < e; ++v) {
          const uint16_t* rows[4] = {E16 + v * H, E16 + (v + quarter) * H, E16 + (v + 2 * quarter) * H, E16 + (v + 3 * quarter) * H};
          float d[4];
          cpu::dot_half4_f32(rows, bf16, norm_.data(), H, d);
          for (int j = 0; j < 4; ++j) logits[v + j * quarter] = d[j];
        }
      }, 16);
      pool_.parallel_for(V - 4 * quarter, [&](int64_t b, int64_t e) {  // the rest, one row at a time
        for (int64_t v = 4 * quarter + b; v < 4 * quarter + e; ++v) {
          logits[v] = half ? cpu::dot_half_f32(E16 + v * H, bf16, norm_.data(), H)
                           : cpu::dot_f32(static_cast<const float*>(E.data) + v * H, norm_.data(), H);
        }
      }, 64);
      return;
    }
    pool_.parallel_for(c_.vocab, [&](int64_t b, int64_t e) {
      float* w = scratch();
      for (int64_t v = b; v < e; ++v) {
        E.row_to_f32(v, w);
        for (int64_t i = 0; i < rows; ++i) {
          const float* xn = norm_.data() + i * H;
          logits[i * c_.vocab + v] = cpu::dot_f32(w, xn, H);
        }
      }
    }, 64);
  }

  // The int8 head (model/head_i8.h) on the normed rows in norm_: each row quantized
  // like a ternary linear's input (no padding: the head has no 128-blocks), then exact
  // int32 dots with the int8 rows.
  void lm_head_i8(int64_t rows, float* logits) {
    const int64_t H = c_.hidden;
    head_x_.resize(rows * H);
    head_s_.resize(rows);
    for (int64_t i = 0; i < rows; ++i) {
      int32_t qsum;
      head_s_[i] = cpu::quantize_row_i8(norm_.data() + i * H, H, H, head_x_.data() + i * H, &qsum);
    }
    pool_.parallel_for(c_.vocab, [&](int64_t b, int64_t e) {
      for (int64_t v = b; v < e; ++v) {
        const int8_t* w = head_i8_.q.data() + v * H;
        for (int64_t i = 0; i < rows; ++i) {
          const int32_t d = cpu::dot_i8(w, head_x_.data() + i * H, H);
          logits[i * c_.vocab + v] = head_i8_logit(d, head_s_[i], head_i8_.scale[v]);
        }
      }
    }, 64);
  }

  const Model& m_;
  ModelConfig c_;
  ThreadPool pool_;
  int64_t ctx_;
  std::vector<Seq> seqs_;
  std::vector<float> inv_freq_;
  std::vector<float> scratch_;  // [pool thread][scratch_floats()]
  bool f16_cache_ = false;
  AlignedVector<float> x_, norm_, q_, k_, v_, att_, gate_, up_;
  std::vector<float> rope_cs_;  // [token][head_dim]: the chunk's cos and sin (cpu::rope_table)
  std::vector<float> row_;  // decode's logits row when only argmax is wanted
  QuantizedActs acts_;
  bool int8_head_ = false;
  HeadI8 head_i8_;
  std::vector<int8_t> head_x_;  // the int8 head's quantized input rows
  std::vector<float> head_s_;
  std::vector<LoraRef> loras_;  // checked against the model; the shared_ptrs keep them alive
  std::vector<float> lora_t_;   // A x for every token, [n, rank]
};

}  // namespace

std::unique_ptr<Engine> make_cpu_engine(const Model& model, const EngineOptions& opts) {
  return std::make_unique<CpuEngine>(model, opts);
}

}  // namespace tern
