// Single-kernel wrappers for tests/cuda (see testing.h).
#include <algorithm>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/train_kernels.h"
#include "backend/cuda/norm_quant.cuh"
#include "backend/cuda/testing.h"
#include "backend/cuda/weights.h"
#include "util/half.h"

namespace tern::cuda::testing {

namespace {

// Split-K scratch, so that small-M GEMMs in these tests take the split path like the
// engine's batched decode (launch_gemm decides the split from the shape).
struct SplitScratch {
  DevBuf part, count;
  explicit SplitScratch(GemmArgs& g) : part(gemm_split_part_ints(132 * 2) * sizeof(int32_t)), count(kMaxSplitPositions * sizeof(int32_t)) {
    TERN_CUDA_CHECK(cudaMemset(count.as<void>(), 0, count.size()));
    g.split_part = part.as<int32_t>();
    g.split_count = count.as<int32_t>();
  }
};

}  // namespace

namespace {

template <class T>
DevBuf poisoned(size_t n) {
  DevBuf b(std::max<size_t>(n, 1) * sizeof(T));
  TERN_CUDA_CHECK(cudaMemset(b.as<void>(), 0x7f, b.size()));  // floats: 3.4e38-ish; ints: 0x7f7f7f7f
  return b;
}

DevBuf nan_buf(size_t n) {
  DevBuf b(std::max<size_t>(n, 1) * sizeof(float));
  TERN_CUDA_CHECK(cudaMemset(b.as<void>(), 0xff, b.size()));  // 0xffffffff is a NaN
  return b;
}

template <class T>
std::vector<T> download(const DevBuf& b, size_t n) {
  std::vector<T> v(n);
  TERN_CUDA_CHECK(cudaDeviceSynchronize());
  if (n > 0) TERN_CUDA_CHECK(cudaMemcpy(v.data(), b.as<void>(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

// Natural-order int8 rows [M][padded] -> permuted words [M][padded/4].
std::vector<uint32_t> permute(const int8_t* q, int64_t M, int64_t padded) {
  const int64_t kw = padded / 4;
  std::vector<uint32_t> out(M * kw);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t i = 0; i < kw; ++i) {
      uint32_t w;
      std::memcpy(&w, q + m * padded + 4 * i, 4);
      out[m * kw + perm_word(static_cast<int>(i))] = w;
    }
  }
  return out;
}

std::vector<int8_t> unpermute(const std::vector<uint32_t>& words, int64_t M, int64_t padded) {
  const int64_t kw = padded / 4;
  std::vector<int8_t> q(M * padded);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t i = 0; i < kw; ++i) std::memcpy(q.data() + m * padded + 4 * i, &words[m * kw + perm_word(static_cast<int>(i))], 4);
  }
  return q;
}

int type_code(FloatType t) { return t == FloatType::F32 ? 0 : t == FloatType::F16 ? 1 : 2; }

}  // namespace

Quantized norm_quant(const float* x, const float* w, int64_t M, int64_t n, float eps) {
  Quantized r;
  r.padded = (n + 127) / 128 * 128;
  const int kw = static_cast<int>(r.padded / 4);
  DevBuf dx = upload_bytes(x, M * n * sizeof(float)), dw = upload_bytes(w, n * sizeof(float));
  DevBuf act = poisoned<uint32_t>(M * kw), s = nan_buf(M), qs = poisoned<int32_t>(M);
  launch_norm_quant(dx.as<float>(), static_cast<int>(n), dw.as<float>(), static_cast<int>(n), eps, static_cast<int>(M),
                    act.as<uint32_t>(), kw, s.as<float>(), qs.as<int32_t>(), nullptr);
  r.q = unpermute(download<uint32_t>(act, M * kw), M, r.padded);
  r.s = download<float>(s, M);
  r.qsum = download<int32_t>(qs, M);
  return r;
}

std::vector<int32_t> ternary_dots(const TernaryMatrix& w, const int8_t* q, int64_t M, bool use_gemm) {
  const int64_t padded = w.padded_cols();
  DevTernary dt = upload_ternary({&w}, {0}, false, nullptr);
  std::vector<uint32_t> perm = permute(q, M, padded);
  std::vector<int32_t> qsum(M, 0);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < padded; ++k) qsum[m] += q[m * padded + k];
  }
  DevBuf dact = upload_vec(perm), dqsum = upload_vec(qsum);
  DevBuf raw = poisoned<int32_t>(M * w.rows);
  if (M == 1 && !use_gemm) {
    GemvArgs a;
    a.w = dt.view;
    a.preq = dact.as<uint32_t>();
    a.pre_s = 1.0f;
    a.pre_qsum = qsum[0];
    a.raw = raw.as<int32_t>();
    launch_gemv(kEpiRaw, a, nullptr);
  } else {
    std::vector<float> ones(M, 1.0f);
    DevBuf ds = upload_vec(ones);
    GemmArgs g;
    g.w = dt.view;
    g.act = dact.as<uint32_t>();
    g.s = ds.as<float>();
    g.qsum = dqsum.as<int32_t>();
    g.M = static_cast<int>(M);
    g.raw = raw.as<int32_t>();
    g.ldo = static_cast<int>(w.rows);
    SplitScratch split(g);
    launch_gemm(kEpiRaw, g, nullptr);
    TERN_CUDA_CHECK(cudaDeviceSynchronize());
  }
  return download<int32_t>(raw, M * w.rows);
}

std::vector<float> ternary_linear(const TernaryMatrix& w, const float* x, const float* normw, int64_t M, float eps, bool add,
                                  const std::vector<float>& init) {
  const int64_t n = w.cols, rows = w.rows;
  DevTernary dt = upload_ternary({&w}, {0}, false, nullptr);
  DevBuf dx = upload_bytes(x, M * n * sizeof(float)), dw = upload_bytes(normw, n * sizeof(float));
  DevBuf out = add ? upload_vec(init) : nan_buf(M * rows);
  if (M == 1) {
    GemvArgs a;
    a.w = dt.view;
    a.in = dx.as<float>();
    a.normw = dw.as<float>();
    a.n = static_cast<int>(n);
    a.eps = eps;
    a.out = out.as<float>();
    launch_gemv(add ? kEpiAdd : kEpiStore, a, nullptr);
  } else {
    const int kw = dt.view.kwords();
    DevBuf act = poisoned<uint32_t>(M * kw), s = nan_buf(M), qs = poisoned<int32_t>(M);
    launch_norm_quant(dx.as<float>(), static_cast<int>(n), dw.as<float>(), static_cast<int>(n), eps, static_cast<int>(M),
                      act.as<uint32_t>(), kw, s.as<float>(), qs.as<int32_t>(), nullptr);
    GemmArgs g;
    g.w = dt.view;
    g.act = act.as<uint32_t>();
    g.s = s.as<float>();
    g.qsum = qs.as<int32_t>();
    g.M = static_cast<int>(M);
    g.out = out.as<float>();
    g.ldo = static_cast<int>(rows);
    SplitScratch split(g);
    launch_gemm(add ? kEpiAdd : kEpiStore, g, nullptr);
    TERN_CUDA_CHECK(cudaDeviceSynchronize());
  }
  return download<float>(out, M * rows);
}

std::vector<float> gate_up(const TernaryMatrix& gate, const TernaryMatrix& up, const float* x, const float* normw, float eps,
                           int act) {
  const int64_t n = gate.cols, F = gate.rows;
  DevTernary dt = upload_ternary({&gate, &up}, {0, static_cast<int>(F)}, true, nullptr);
  DevBuf dx = upload_bytes(x, n * sizeof(float)), dw = upload_bytes(normw, n * sizeof(float));
  DevBuf out = nan_buf(F);
  GemvArgs a;
  a.w = dt.view;
  a.in = dx.as<float>();
  a.normw = dw.as<float>();
  a.n = static_cast<int>(n);
  a.eps = eps;
  a.out = out.as<float>();
  a.act = act;
  launch_gemv(kEpiGateUp, a, nullptr);
  return download<float>(out, F);
}

std::vector<float> attention_prefill(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                     int n_heads, int n_kv, int hd, int M, int pos0) {
  AttnShape sh;
  sh.n_heads = n_heads, sh.n_kv = n_kv, sh.hd = hd, sh.qd = n_heads * hd, sh.kv_dim = n_kv * hd;
  sh.gb = attn_heads_per_block(n_heads, n_kv);
  DevBuf dq = upload_vec(q), dk = upload_vec(k), dv = upload_vec(v);
  DevBuf out = nan_buf(static_cast<size_t>(M) * sh.qd);
  RowMap rows;
  rows.pos0 = pos0;
  launch_attn_prefill(sh, dq.as<float>(), sh.qd, dk.as<float>(), dv.as<float>(), M, rows, out.as<float>(), sh.qd, nullptr);
  return download<float>(out, static_cast<size_t>(M) * sh.qd);
}

std::vector<float> attention_decode(const std::vector<float>& qkv_raw, const std::vector<float>& k_cache,
                                    const std::vector<float>& v_cache, int n_heads, int n_kv, int hd, int pos, float theta,
                                    int splits, std::vector<float>* k_row, std::vector<float>* v_row) {
  AttnShape sh;
  sh.n_heads = n_heads, sh.n_kv = n_kv, sh.hd = hd, sh.qd = n_heads * hd, sh.kv_dim = n_kv * hd;
  sh.gb = attn_heads_per_block(n_heads, n_kv);
  std::vector<float> rope = rope_table(theta, hd, pos + 1);
  const size_t rows = static_cast<size_t>(pos) + 1;
  std::vector<float> kc(rows * sh.kv_dim, NAN), vc(rows * sh.kv_dim, NAN);
  std::copy(k_cache.begin(), k_cache.begin() + static_cast<size_t>(pos) * sh.kv_dim, kc.begin());
  std::copy(v_cache.begin(), v_cache.begin() + static_cast<size_t>(pos) * sh.kv_dim, vc.begin());
  DevBuf dqkv = upload_vec(qkv_raw), dk = upload_vec(kc), dv = upload_vec(vc), drope = upload_vec(rope);
  std::vector<int32_t> p = {pos};
  DevBuf dpos = upload_vec(p);
  const int groups = n_heads / sh.gb;
  DevBuf partial(static_cast<size_t>(groups) * splits * sh.gb * (hd + 2) * sizeof(float));
  DevBuf counters(groups * sizeof(int32_t));
  TERN_CUDA_CHECK(cudaMemset(counters.as<void>(), 0, counters.size()));
  DevBuf out = nan_buf(sh.qd);
  // Twice: the second run checks that the split counters were reset.
  for (int rep = 0; rep < 2; ++rep) {
    launch_attn_decode(sh, dqkv.as<float>(), dk.as<float>(), dv.as<float>(), drope.as<float>(), dpos.as<int32_t>(), nullptr, 0, splits,
                       partial.as<float>(), counters.as<int32_t>(), out.as<float>(), nullptr);
  }
  std::vector<float> kall = download<float>(dk, rows * sh.kv_dim), vall = download<float>(dv, rows * sh.kv_dim);
  k_row->assign(kall.end() - sh.kv_dim, kall.end());
  v_row->assign(vall.end() - sh.kv_dim, vall.end());
  return download<float>(out, sh.qd);
}

HeadResult lm_head(const FloatMatrix& emb, const float* x, const float* normw, int64_t M, float eps, bool gemm, const HeadI8* i8) {
  const int V = static_cast<int>(emb.rows), H = static_cast<int>(emb.cols);
  DevBuf de = upload_bytes(emb.data, emb.nbytes());
  DevBuf dx = upload_bytes(x, M * H * sizeof(float)), dw = upload_bytes(normw, H * sizeof(float));
  DevBuf out = nan_buf(static_cast<size_t>(M) * V);
  DevBuf best(M * sizeof(unsigned long long));
  TERN_CUDA_CHECK(cudaMemset(best.as<void>(), 0, best.size()));
  DevBuf q8, s8;
  HeadWeights hw;
  hw.emb = de.as<void>(), hw.type = type_code(emb.type), hw.V = V, hw.H = H;
  if (i8 != nullptr) {
    q8 = upload_vec(i8->q);
    s8 = upload_vec(i8->scale);
    hw.q8 = q8.as<int8_t>(), hw.scale8 = s8.as<float>();
  }
  if (gemm) {
    HeadGemm hg(hw, nullptr);
    hg.run(dx.as<float>(), static_cast<int>(M), dw.as<float>(), eps, out.as<float>(), best.as<unsigned long long>(), nullptr);
    TERN_CUDA_CHECK(cudaDeviceSynchronize());
  } else if (i8 != nullptr) {
    for (int64_t m = 0; m < M; ++m) {
      launch_lm_head_i8(hw.q8, hw.scale8, V, H, dx.as<float>() + m * H, dw.as<float>(), eps, out.as<float>() + m * V, nullptr,
                        false, best.as<unsigned long long>() + m);
    }
  } else {
    launch_lm_head(de.as<void>(), type_code(emb.type), V, H, dx.as<float>(), static_cast<int>(M), dw.as<float>(), eps,
                   out.as<float>(), nullptr, false, best.as<unsigned long long>());
  }
  HeadResult r;
  r.logits = download<float>(out, static_cast<size_t>(M) * V);
  for (unsigned long long k : download<unsigned long long>(best, M)) r.argmax.push_back(argmax_from_key(k));
  return r;
}

HeadLossResult head_loss(const FloatMatrix& emb, const float* x, const float* normw, const int32_t* labels, int64_t M, int64_t n_norm,
                         float eps, bool fast) {
  const int V = static_cast<int>(emb.rows), H = static_cast<int>(emb.cols);
  DevBuf de = upload_bytes(emb.data, emb.nbytes());
  DevBuf dx_in = upload_bytes(x, M * H * sizeof(float)), dw = upload_bytes(normw, H * sizeof(float));
  DevBuf dl = upload_bytes(labels, M * sizeof(int32_t));
  DevBuf out = nan_buf(static_cast<size_t>(M) * H);
  HeadWeights hw;
  hw.emb = de.as<void>(), hw.type = type_code(emb.type), hw.V = V, hw.H = H;
  HeadGemm head(hw, nullptr, 64, fast);
  HeadLossResult r;
  r.loss = head_loss_fwd_bwd(head, hw, dx_in.as<float>(), dw.as<float>(), eps, dl.as<int32_t>(), static_cast<int>(M), n_norm,
                             out.as<float>(), nullptr, fast);
  r.dx = download<float>(out, static_cast<size_t>(M) * H);
  return r;
}

std::vector<float> ternary_linear_bwd(const TernaryMatrix& w, const float* dy, int64_t M) {
  DevBuf w16 = upload_ternary_f16(w);
  DevBuf ddy = upload_bytes(dy, M * w.rows * sizeof(float));
  DevBuf out = nan_buf(static_cast<size_t>(M) * w.cols);
  tern::cuda::split_gemm(ddy.as<float>(), static_cast<int>(M), static_cast<int>(w.rows), w16.as<void>(), 1, static_cast<int>(w.cols), w.scale,
             out.as<float>(), nullptr);
  return download<float>(out, static_cast<size_t>(M) * w.cols);
}

std::vector<float> split_gemm(const float* A, int64_t M, int64_t N, const FloatMatrix& W, float alpha) {
  DevBuf da = upload_bytes(A, M * N * sizeof(float)), dw = upload_bytes(W.data, W.nbytes());
  DevBuf out = nan_buf(static_cast<size_t>(M) * W.cols);
  tern::cuda::split_gemm(da.as<float>(), static_cast<int>(M), static_cast<int>(N), dw.as<void>(), type_code(W.type), static_cast<int>(W.cols), alpha,
             out.as<float>(), nullptr);
  TERN_CUDA_CHECK(cudaDeviceSynchronize());
  return download<float>(out, static_cast<size_t>(M) * W.cols);
}

std::vector<float> split_gemm_lora(const std::vector<float>& A, int M, int N, const std::vector<float>& W, int K, float alpha, int r,
                                   const std::vector<LoraDxPart>& parts, float keep, const std::vector<float>& c_in, bool accumulate,
                                   bool tf32) {
  std::vector<uint16_t> w16(W.size());
  for (size_t i = 0; i < W.size(); ++i) w16[i] = f32_to_f16(W[i]);
  DevBuf da = upload_vec(A), dw = upload_vec(w16), dc = upload_vec(c_in);
  std::vector<DevBuf> keep_alive;
  LoraDx lx;
  lx.r = r, lx.keep = keep, lx.tf32 = tf32;
  for (const LoraDxPart& p : parts) {
    keep_alive.push_back(upload_vec(p.du));
    lx.du[lx.n] = keep_alive.back().as<float>();
    keep_alive.push_back(upload_vec(p.A));
    lx.A[lx.n] = keep_alive.back().as<float>();
    if (!p.bits.empty()) {
      keep_alive.push_back(upload_vec(p.bits));
      lx.bits[lx.n] = keep_alive.back().as<uint32_t>();
    }
    ++lx.n;
  }
  TrainBlas blas(nullptr);
  blas.split_gemm(da.as<float>(), N, M, N, ColScales{}, dw.as<void>(), 1, K, alpha, dc.as<float>(), K, accumulate, tf32, &lx);
  TERN_CUDA_CHECK(cudaDeviceSynchronize());
  return download<float>(dc, c_in.size());
}

TrainQuantized train_norm_quant(const std::vector<float>& x, const std::vector<float>& w, int M, int n, bool gated, int act, float eps) {
  DevBuf dx_ = upload_vec(x), dw = upload_vec(w), h = nan_buf(static_cast<size_t>(M) * n), xn = nan_buf(static_cast<size_t>(M) * n);
  const int ldq = (n + 15) / 16 * 16 + 16;  // a pad that must come back as zeros
  DevBuf q(static_cast<size_t>(M) * ldq), s = nan_buf(M), rs = nan_buf(M);
  DevBuf x16 = nan_buf(static_cast<size_t>(M) * n), gu16 = nan_buf(static_cast<size_t>(M) * n);  // (F16: half the floats)
  TERN_CUDA_CHECK(cudaMemset(q.as<void>(), 0x55, q.size()));
  launch_train_norm_quant(dx_.as<float>(), gated ? 2 * n : n, gated, act, dw.as<float>(), n, eps, M, gated ? h.as<float>() : nullptr,
                          xn.as<float>(), q.as<int8_t>(), ldq, s.as<float>(), nullptr, rs.as<float>(), x16.as<void>(),
                          gated ? gu16.as<void>() : nullptr);
  TrainQuantized r;
  if (gated) r.h = download<float>(h, static_cast<size_t>(M) * n);
  if (gated) r.gu16 = download<uint16_t>(gu16, static_cast<size_t>(M) * 2 * n);
  r.x16 = download<uint16_t>(x16, static_cast<size_t>(M) * n);
  r.rs = download<float>(rs, M);
  r.xn = download<float>(xn, static_cast<size_t>(M) * n);
  r.s = download<float>(s, M);
  const auto q8 = download<int8_t>(q, static_cast<size_t>(M) * ldq);
  for (int m = 0; m < M; ++m) {
    for (int i = 0; i < ldq; ++i) (i < n ? r.q : r.pad).push_back(q8[static_cast<size_t>(m) * ldq + i]);
  }
  return r;
}

std::vector<float> linear_epilogue(const std::vector<int32_t>& y, int M, int N, const std::vector<float>& s, const std::vector<int>& seg_end,
                                   const std::vector<float>& seg_scale, int r, float scaling, const std::vector<std::vector<float>>& u,
                                   const std::vector<std::vector<float>>& B, const std::vector<float>& resid, bool tf32) {
  DevBuf dy = upload_vec(y), ds = upload_vec(s);
  ColScales cs;
  cs.n = static_cast<int>(seg_end.size());
  std::vector<DevBuf> keep;
  LoraEpilogue le;
  le.r = r, le.scaling = scaling, le.tf32 = tf32;
  for (int k = 0; k < cs.n; ++k) {
    cs.end[k] = seg_end[k], cs.scale[k] = seg_scale[k];
    if (r > 0 && !u[k].empty()) {
      keep.push_back(upload_vec(u[k]));
      le.u[k] = keep.back().as<float>();
      keep.push_back(upload_vec(B[k]));
      le.B[k] = keep.back().as<float>();
    }
  }
  if (resid.empty()) {
    launch_linear_epilogue(reinterpret_cast<float*>(dy.as<int32_t>()), N, M, N, ds.as<float>(), cs, le, nullptr, nullptr, nullptr);
    return download<float>(dy, static_cast<size_t>(M) * N);
  }
  DevBuf dr = upload_vec(resid), out = nan_buf(static_cast<size_t>(M) * N);
  launch_linear_epilogue(reinterpret_cast<float*>(dy.as<int32_t>()), N, M, N, ds.as<float>(), cs, le, dr.as<float>(), out.as<float>(), nullptr);
  return download<float>(out, static_cast<size_t>(M) * N);
}

std::vector<float> rmsnorm_bwd(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& dy, int M, int n,
                               float eps, const std::vector<float>& dx_in, bool accumulate, std::vector<float>* rscale) {
  DevBuf dx_ = upload_vec(x), dw = upload_vec(w), ddy = upload_vec(dy), out = upload_vec(dx_in), rs = nan_buf(M);
  launch_rmsnorm_bwd(dx_.as<float>(), dw.as<float>(), ddy.as<float>(), M, n, eps, out.as<float>(), accumulate, nullptr,
                     rscale != nullptr ? rs.as<float>() : nullptr);
  if (rscale != nullptr) *rscale = download<float>(rs, M);
  return download<float>(out, dx_in.size());
}

std::vector<float> gated_rmsnorm_bwd(const std::vector<float>& gu, const std::vector<float>& w, const std::vector<float>& dy, int M, int n,
                                     int act, float eps, std::vector<float>* rscale, float s_gate, float s_up, bool gu_f16,
                                     std::vector<uint16_t>* split) {
  std::vector<uint16_t> gu16;
  if (gu_f16) {
    for (float v : gu) gu16.push_back(f32_to_f16(v));
  }
  DevBuf dgu_in = gu_f16 ? upload_vec(gu16) : upload_vec(gu), dw = upload_vec(w), ddy = upload_vec(dy), out = nan_buf(gu.size()), rs = nan_buf(M);
  launch_gated_rmsnorm_bwd(dgu_in.as<float>(), 2 * n, act, dw.as<float>(), ddy.as<float>(), M, n, eps, out.as<float>(), 2 * n, nullptr,
                           rscale != nullptr ? rs.as<float>() : nullptr, s_gate, s_up, gu_f16, split != nullptr ? out.as<void>() : nullptr);
  if (rscale != nullptr) *rscale = download<float>(rs, M);
  if (split != nullptr) *split = download<uint16_t>(out, gu.size());
  return download<float>(out, gu.size());
}

std::vector<uint16_t> i8_to_f16_rows(const std::vector<int8_t>& src, int rows, int K, int lds) {
  DevBuf d = upload_vec(src), out = nan_buf((static_cast<size_t>(rows) * K + 1) / 2);
  launch_i8_to_f16_rows(d.as<int8_t>(), rows, K, lds, out.as<void>(), nullptr);
  return download<uint16_t>(out, static_cast<size_t>(rows) * K);
}

DyPassResult lora_dy_pass(const std::vector<float>& dy, int M, int N, int r, float scaling, const std::vector<DyPassPart>& parts,
                          const std::vector<float>& rscale, const std::vector<int>& seg_end, const std::vector<float>& seg_scale,
                          const std::vector<uint16_t>* dy16) {
  DevBuf ddy = dy16 != nullptr ? upload_vec(*dy16) : upload_vec(dy), drs = rscale.empty() ? DevBuf() : upload_vec(rscale);
  DevBuf split = nan_buf((static_cast<size_t>(M) * N + 1) / 2);  // unwritten halves read 0xffff (a NaN)
  std::vector<DevBuf> keep_alive;
  std::vector<int> at_du(parts.size(), -1);
  DyPass p;
  p.r = r, p.scaling = scaling;
  for (const DyPassPart& q : parts) {
    DyPart& d = p.part[p.n++];
    d.beg = q.beg, d.end = q.end;
    if (q.B.empty()) continue;
    keep_alive.push_back(upload_vec(q.B));
    d.B = keep_alive.back().as<float>();
    keep_alive.push_back(upload_vec(q.u));
    d.u = keep_alive.back().as<float>();
    keep_alive.push_back(nan_buf(static_cast<size_t>(M) * r));
    d.du = keep_alive.back().as<float>();
    at_du[p.n - 1] = static_cast<int>(keep_alive.size()) - 1;  // dB follows it
    keep_alive.push_back(upload_vec(q.dB_in));
    d.dB = keep_alive.back().as<float>();
  }
  if (!rscale.empty()) {
    p.rscale = drs.as<float>(), p.split = dy16 != nullptr ? nullptr : split.as<void>(), p.dy_f16 = dy16 != nullptr;
    p.cs.n = static_cast<int>(seg_end.size());
    for (int i = 0; i < p.cs.n; ++i) p.cs.end[i] = seg_end[i], p.cs.scale[i] = seg_scale[i];
  }
  TrainBlas blas(nullptr);
  DyPassResult res;
  res.applied = cuda::lora_dy_pass(blas, ddy.as<float>(), M, N, p);
  TERN_CUDA_CHECK(cudaDeviceSynchronize());
  for (int i = 0; i < p.n; ++i) {
    const int k = at_du[i];
    res.du.push_back(k >= 0 ? download<float>(keep_alive[k], static_cast<size_t>(M) * r) : std::vector<float>{});
    res.dB.push_back(k >= 0 ? download<float>(keep_alive[k + 1], parts[i].dB_in.size()) : std::vector<float>{});
  }
  if (!rscale.empty() && dy16 == nullptr) res.split = download<uint16_t>(split, static_cast<size_t>(M) * N);
  return res;
}

LoraGrads lora_round_trip(const std::vector<float>& x, const std::vector<float>& A, const std::vector<float>& B, int M, int in, int r,
                          int out, float scaling, uint64_t seed, float p, const std::vector<float>& y_in, const std::vector<float>& dy,
                          const std::vector<float>& dx_in, const std::vector<float>& dA_in, const std::vector<float>& dB_in, bool bits,
                          bool tf32, const std::vector<float>* norm_rs, const std::vector<float>* norm_w, bool x_f16) {
  std::vector<uint16_t> x16;
  if (x_f16) {
    for (float v : x) x16.push_back(f32_to_f16(v));
  }
  DevBuf dxx = x_f16 ? upload_vec(x16) : upload_vec(x), dA_ = upload_vec(A), dB_ = upload_vec(B), dseed = upload_vec(std::vector<uint64_t>{seed});
  DevBuf u = nan_buf(static_cast<size_t>(M) * r), y = upload_vec(y_in), ddy = upload_vec(dy), gx = upload_vec(dx_in);
  DevBuf gA = upload_vec(dA_in), gB = upload_vec(dB_in);
  TrainBlas blas(nullptr);
  DropoutSpec d;
  d.p = p, d.seq_seed = dseed.as<uint64_t>(), d.period = M;  // one sequence: train::dropout_mask(M * in, p, seed)
  DevBuf mask_bits;
  if (bits) {
    mask_bits = nan_buf(static_cast<size_t>(M) * dropout_words(in));  // every word must be written
    d.bits = mask_bits.as<uint32_t>(), d.write_bits = true;
  }
  DevBuf rs, w;
  if (norm_rs != nullptr) rs = upload_vec(*norm_rs), d.norm_rs = rs.as<float>();
  if (norm_w != nullptr) w = upload_vec(*norm_w), d.norm_w = w.as<float>();
  d.x_f16 = x_f16;
  lora_fwd_gpu(blas, dxx.as<float>(), dA_.as<float>(), dB_.as<float>(), M, in, r, out, scaling, d, u.as<float>(), y.as<float>(), out, true,
               tf32);
  lora_bwd_gpu(blas, dxx.as<float>(), dA_.as<float>(), dB_.as<float>(), u.as<float>(), ddy.as<float>(), out, M, in, r, out, scaling, d,
               gx.as<float>(), gA.as<float>(), gB.as<float>(), true, tf32);
  TERN_CUDA_CHECK(cudaDeviceSynchronize());
  LoraGrads g;
  g.u = download<float>(u, static_cast<size_t>(M) * r);
  g.y = download<float>(y, y_in.size());
  g.dx = download<float>(gx, dx_in.size());
  g.dA = download<float>(gA, dA_in.size());
  g.dB = download<float>(gB, dB_in.size());
  return g;
}

std::vector<float> rope_bwd(const std::vector<float>& dy, int M, int nh, int hd, int pos0, float theta) {
  DevBuf d = upload_vec(dy), rope = upload_vec(rope_table(theta, hd, pos0 + M));
  launch_rope_bwd(d.as<float>(), M, nh, hd, pos0, rope.as<float>(), nullptr);
  return download<float>(d, dy.size());
}

AttnGrads attention_train(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                          const std::vector<float>& dout, int B, int T, int nh, int nkv, int hd, bool tf32, float rope_theta) {
  // q, k, v side by side in one [B*T][qd + 2 kvd] buffer, as the training step keeps them.
  const int qd = nh * hd, kvd = nkv * hd, ld = qd + 2 * kvd, M = B * T;
  std::vector<float> qkv(static_cast<size_t>(M) * ld);
  for (int m = 0; m < M; ++m) {
    std::copy(q.begin() + static_cast<size_t>(m) * qd, q.begin() + static_cast<size_t>(m + 1) * qd, qkv.begin() + static_cast<size_t>(m) * ld);
    std::copy(k.begin() + static_cast<size_t>(m) * kvd, k.begin() + static_cast<size_t>(m + 1) * kvd,
              qkv.begin() + static_cast<size_t>(m) * ld + qd);
    std::copy(v.begin() + static_cast<size_t>(m) * kvd, v.begin() + static_cast<size_t>(m + 1) * kvd,
              qkv.begin() + static_cast<size_t>(m) * ld + qd + kvd);
  }
  DevBuf dqkv_in = upload_vec(qkv), ddo = upload_vec(dout);
  DevBuf out = nan_buf(q.size()), grads = nan_buf(qkv.size());
  TrainBlas blas(nullptr);
  TrainAttnShape sh;
  sh.B = B, sh.T = T, sh.nh = nh, sh.nkv = nkv, sh.hd = hd;
  float* p = dqkv_in.as<float>();
  float* g = grads.as<float>();
  DevBuf lse = nan_buf(static_cast<size_t>(M) * nh);
  DevBuf rope = rope_theta > 0.0f ? upload_vec(rope_table(rope_theta, hd, T)) : DevBuf();
  const float* rp = rope_theta > 0.0f ? rope.as<float>() : nullptr;
  train_attention_fwd(blas, sh, p, p + qd, p + qd + kvd, ld, out.as<float>(), qd, tf32, lse.as<float>(), rp);
  train_attention_bwd(blas, sh, p, p + qd, p + qd + kvd, ld, ddo.as<float>(), qd, g, g + qd, g + qd + kvd, ld, tf32, out.as<float>(),
                      lse.as<float>(), rp);
  TERN_CUDA_CHECK(cudaDeviceSynchronize());
  AttnGrads r;
  r.out = download<float>(out, q.size());
  const std::vector<float> all = download<float>(grads, qkv.size());
  for (int m = 0; m < M; ++m) {
    const float* row = all.data() + static_cast<size_t>(m) * ld;
    r.dq.insert(r.dq.end(), row, row + qd);
    r.dk.insert(r.dk.end(), row + qd, row + qd + kvd);
    r.dv.insert(r.dv.end(), row + qd + kvd, row + ld);
  }
  return r;
}

}  // namespace tern::cuda::testing
