// CPU reference kernels against straightforward re-derivations on fresh random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"
#include "model/ternary.h"
#include "util/half.h"
#include "test_util.h"

namespace tern {
namespace {

std::mt19937 rng_for_test() { return std::mt19937(std::random_device{}()); }

TEST(CpuKernels, QuantizeMatchesDefinition) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 3);
  for (int64_t n : {1, 5, 128, 300, 2560}) {
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    const int64_t padded = (n + 127) / 128 * 128;
    std::vector<int8_t> q(padded, 99);
    int32_t sum = 0;
    float s = cpu::quantize_row_i8(x.data(), n, padded, q.data(), &sum);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    EXPECT_FLOAT_EQ(s, 127.0f / amax);
    int32_t want_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      float r = std::nearbyint(x[i] * s);
      EXPECT_EQ(q[i], static_cast<int8_t>(std::clamp(r, -128.0f, 127.0f)));
      want_sum += q[i];
    }
    for (int64_t i = n; i < padded; ++i) EXPECT_EQ(q[i], 0);
    EXPECT_EQ(sum, want_sum);
  }
}

TEST(CpuKernels, QuantizeRoundsHalfToEvenAndHandlesZeros) {
  // amax = 127 makes s = 1 exactly, so x*s is x: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
  std::vector<float> x = {127.0f, 2.5f, 3.5f, -2.5f, 0.5f};
  std::vector<int8_t> q(128);
  int32_t sum;
  cpu::quantize_row_i8(x.data(), 5, 128, q.data(), &sum);
  EXPECT_EQ(q[1], 2);
  EXPECT_EQ(q[2], 4);
  EXPECT_EQ(q[3], -2);
  EXPECT_EQ(q[4], 0);
  std::vector<float> z(7, 0.0f);
  float s = cpu::quantize_row_i8(z.data(), 7, 128, q.data(), &sum);
  EXPECT_FLOAT_EQ(s, 127.0f / 1e-5f);
  EXPECT_EQ(sum, 0);
}

// quantize_row_i8 runs in 16-float vectors (a rounding trick, lanes of max): it must give
// exactly clamp(nearbyint(x * s), -128, 127) and the sequential amax on every input,
// including ties, values past the clamp, NaN and infinity, at lengths around 16 and 64.
TEST(CpuKernels, QuantizeEqualsNearbyintOnEdgeCases) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 40);
  auto reference = [](const std::vector<float>& x, std::vector<int8_t>& q, int32_t& sum) {
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    const float s = 127.0f / std::max(amax, 1e-5f);
    sum = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      q[i] = static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, std::nearbyint(x[i] * s))));
      sum += q[i];
    }
    return s;
  };
  for (int64_t n : {1, 15, 16, 17, 63, 64, 65, 130, 2560, 6912}) {
    for (int kind = 0; kind < 4; ++kind) {
      std::vector<float> x(n);
      for (int64_t i = 0; i < n; ++i) {
        // kind 0: random; 1: amax 127 (s == 1) and exact halves, the ties; 2: with NaNs;
        // 3: an infinity (s == 0: every product is 0 or NaN).
        x[i] = kind == 1 ? static_cast<float>((i % 520) - 260) / 2.0f : nd(rng);
      }
      if (kind == 1) x[0] = 127.0f, x[n / 2] = -127.0f;
      if (kind == 2) x[n / 3] = NAN, x[n - 1] = -NAN;
      if (kind == 3) x[n / 2] = INFINITY;
      const int64_t padded = (n + 127) / 128 * 128;
      std::vector<int8_t> q(padded, 99), want(n);
      int32_t sum = 0, want_sum = 0;
      const float s = cpu::quantize_row_i8(x.data(), n, padded, q.data(), &sum);
      const float want_s = reference(x, want, want_sum);
      SCOPED_TRACE("n " + std::to_string(n) + " kind " + std::to_string(kind));
      EXPECT_EQ(std::memcmp(&s, &want_s, sizeof s), 0) << s << " vs " << want_s;
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(q[i], want[i]) << "at " << i << ", x " << x[i];
      for (int64_t i = n; i < padded; ++i) EXPECT_EQ(q[i], 0);
      EXPECT_EQ(sum, want_sum);
    }
  }
}

TEST(CpuKernels, TernaryDotIsExact) {
  auto rng = rng_for_test();
  for (int64_t cols : {128, 200, 256, 2560, 6912}) {
    const int64_t rows = 3;
    std::vector<int8_t> w(rows * cols);
    for (auto& v : w) v = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    TernaryMatrix m = make_ternary(w, rows, cols, 1.0f);
    std::vector<int8_t> x(m.padded_cols(), 0);
    int32_t sum = 0;
    for (int64_t i = 0; i < cols; ++i) {
      x[i] = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
      sum += x[i];
    }
    for (int64_t r = 0; r < rows; ++r) {
      int32_t want = 0;
      for (int64_t c = 0; c < cols; ++c) want += w[r * cols + c] * x[c];
      EXPECT_EQ(cpu::ternary_dot(m.data + r * m.row_bytes, x.data(), m.padded_cols(), sum), want) << cols;
    }
  }
}

// Every SIMD variant of the ternary dot equals the scalar one bit for bit, on random
// codes and extreme activations (-128 and 127 everywhere: the int16 pair sums' worst
// case), for widths of one block up to 6912 and odd multiples of 128.
TEST(CpuKernels, TernaryDotSimdMatchesScalar) {
  auto rng = rng_for_test();
  std::printf("[info] SIMD level: %s (avx2 %s, avx-vnni %s, avx512-vnni %s, avx512 %s)\n", cpu::simd_level(), cpu::has_avx2() ? "yes" : "no",
              cpu::has_avxvnni() ? "yes" : "no", cpu::has_avx512vnni() ? "yes" : "no", cpu::has_avx512() ? "yes" : "no");
  if (!cpu::has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU: only the scalar path runs";
  for (int64_t cols : {128, 384, 2560, 6912, 128 * 37}) {
    for (int fill : {0, 1, 2}) {  // random, all -128, all 127
      std::vector<uint8_t> row(cols / 4);
      for (auto& b : row) {  // codes 0..2 only (3 is not a tern2 code)
        uint8_t v = 0;
        for (int k = 0; k < 4; ++k) v = static_cast<uint8_t>(v << 2 | (rng() % 3));
        b = v;
      }
      std::vector<int8_t> x(cols);
      int32_t sum = 0;
      for (auto& v : x) {
        v = fill == 0 ? static_cast<int8_t>(static_cast<int>(rng() % 256) - 128) : fill == 1 ? int8_t{-128} : int8_t{127};
        sum += v;
      }
      const int32_t want = cpu::ternary_dot_scalar(row.data(), x.data(), cols, sum);
      EXPECT_EQ(cpu::ternary_dot_avx2(row.data(), x.data(), cols, sum), want) << cols << " fill " << fill;
      if (cpu::has_avxvnni()) {
        EXPECT_EQ(cpu::ternary_dot_vnni(row.data(), x.data(), cols, sum), want) << "vnni " << cols << " fill " << fill;
      }
      if (cpu::has_avx512vnni()) {
        EXPECT_EQ(cpu::ternary_dot_vnni512(row.data(), x.data(), cols, sum), want) << "vnni512 " << cols << " fill " << fill;
      }
      std::vector<int8_t> pairs(cols), scratch(cols);
      cpu::interleave_block_pairs(x.data(), cols, pairs.data());
      if (cpu::has_avx512()) {
        EXPECT_EQ(cpu::ternary_dot_decode_avx512(row.data(), pairs.data(), cols, sum), want) << "avx512 " << cols << " fill " << fill;
      }
      // The dispatched single-token pair, whatever order this CPU's level reads, and the
      // four-row form (the other rows: the first reversed, rotated, and reversed again).
      const int8_t* acts = cpu::decode_acts(x.data(), cols, scratch.data());
      EXPECT_EQ(cpu::ternary_dot_decode(row.data(), acts, cols, sum), want) << "decode " << cols << " fill " << fill;
      std::vector<std::vector<uint8_t>> four = {row, {row.rbegin(), row.rend()}, row, row};
      std::rotate(four[2].begin(), four[2].begin() + cols / 8, four[2].end());
      four[3].assign(four[2].rbegin(), four[2].rend());
      const uint8_t* rows[4];
      int32_t want4[4], got4[4];
      for (int r = 0; r < 4; ++r) rows[r] = four[r].data(), want4[r] = cpu::ternary_dot_scalar(rows[r], x.data(), cols, sum);
      cpu::ternary_dot4_decode(rows, acts, cols, sum, got4);
      for (int r = 0; r < 4; ++r) EXPECT_EQ(got4[r], want4[r]) << "decode4 row " << r << " cols " << cols << " fill " << fill;
      if (cpu::has_avx512()) {
        cpu::ternary_dot4_decode_avx512(rows, pairs.data(), cols, sum, got4);
        for (int r = 0; r < 4; ++r) EXPECT_EQ(got4[r], want4[r]) << "avx512 decode4 row " << r << " cols " << cols << " fill " << fill;
      }
      using Decode4 = void (*)(const uint8_t* const*, const int8_t*, int64_t, int32_t, int32_t*);
      for (auto [name, has, kernel] : {std::tuple<const char*, bool, Decode4>{"avx2", cpu::has_avx2(), cpu::ternary_dot4_decode_avx2},
                                       {"vnni", cpu::has_avxvnni(), cpu::ternary_dot4_decode_vnni},
                                       {"vnni512", cpu::has_avx512vnni(), cpu::ternary_dot4_decode_vnni512}}) {
        if (!has) continue;
        kernel(rows, x.data(), cols, sum, got4);
        for (int r = 0; r < 4; ++r) EXPECT_EQ(got4[r], want4[r]) << name << " decode4 row " << r << " cols " << cols << " fill " << fill;
      }
    }
  }
}

// The 512-bit decode dot's activation order: group g of both blocks of each 256 columns
// side by side, a last odd block left in place, nothing lost or repeated.
TEST(CpuKernels, BlockPairInterleaving) {
  for (int64_t cols : {128, 256, 384, 2560}) {
    std::vector<int8_t> x(cols), out(cols, 0);
    for (int64_t i = 0; i < cols; ++i) x[i] = static_cast<int8_t>(i % 251 - 125);
    cpu::interleave_block_pairs(x.data(), cols, out.data());
    for (int64_t i = 0; i < cols; ++i) {
      const int64_t k = i / 256, g = i % 256 / 64, h = i % 64 / 32, j = i % 32;
      const int64_t src = k < cols / 256 ? 256 * k + 128 * h + 32 * g + j : i;
      ASSERT_EQ(out[i], x[src]) << "cols " << cols << " at " << i;
    }
  }
}

// The prefill tile (1 weight row x 4 tokens) equals four single dots, on every path.
// check(path name, kernel) for each token-tile kernel this CPU can run (scalar always).
using TileKernel = void (*)(const uint8_t*, const int8_t*, int64_t, int64_t, const int32_t*, int32_t*);
template <class Check>
void for_each_tile_kernel(TileKernel scalar, TileKernel avx2, TileKernel vnni, TileKernel vnni512, Check check) {
  check("scalar", scalar);
  if (cpu::has_avx2()) check("avx2", avx2);
  if (cpu::has_avxvnni()) check("avx-vnni", vnni);
  if (cpu::has_avx512vnni()) check("avx512-vnni", vnni512);
}

TEST(CpuKernels, TernaryDot4MatchesSingleDots) {
  auto rng = rng_for_test();
  for (int64_t cols : {128, 384, 2560, 128 * 37}) {
    std::vector<uint8_t> row(cols / 4);
    for (auto& b : row) {
      uint8_t v = 0;
      for (int k = 0; k < 4; ++k) v = static_cast<uint8_t>(v << 2 | (rng() % 3));
      b = v;
    }
    const int64_t ldq = cols + 128;  // rows of a wider buffer, as the engine's
    std::vector<int8_t> x(4 * ldq);
    std::vector<int32_t> sums(4, 0);
    for (int t = 0; t < 4; ++t) {
      for (int64_t i = 0; i < cols; ++i) {
        const int8_t v = t == 3 ? int8_t{-128} : static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
        x[t * ldq + i] = v, sums[t] += v;
      }
    }
    int32_t want[4];
    for (int t = 0; t < 4; ++t) want[t] = cpu::ternary_dot_scalar(row.data(), x.data() + t * ldq, cols, sums[t]);
    auto check = [&](const char* path, auto kernel) {
      int32_t got[4];
      kernel(row.data(), x.data(), ldq, cols, sums.data(), got);
      for (int t = 0; t < 4; ++t) EXPECT_EQ(got[t], want[t]) << path << " cols " << cols << " token " << t;
    };
    for_each_tile_kernel(cpu::ternary_dot4_scalar, cpu::ternary_dot4_avx2, cpu::ternary_dot4_vnni, cpu::ternary_dot4_vnni512, check);
  }
}

// The 8-token tile: every path equals the single dots, including rows of -128 and +127
// activations against all-2 codes over 16+ blocks (the int16 partial sums' bounds).
TEST(CpuKernels, TernaryDot8MatchesSingleDots) {
  auto rng = rng_for_test();
  for (int64_t cols : {128, 2048, 2560, 128 * 37, 6912}) {
    for (int pattern = 0; pattern < 2; ++pattern) {
      std::vector<uint8_t> row(cols / 4);
      for (auto& b : row) {
        uint8_t v = 0;
        for (int k = 0; k < 4; ++k) v = static_cast<uint8_t>(v << 2 | (pattern == 1 ? 2 : rng() % 3));
        b = v;
      }
      const int64_t ldq = cols + 64;
      std::vector<int8_t> x(8 * ldq);
      std::vector<int32_t> sums(8, 0);
      for (int t = 0; t < 8; ++t) {
        for (int64_t i = 0; i < cols; ++i) {
          const int8_t v = pattern == 1 ? (t % 2 == 0 ? int8_t{-128} : int8_t{127}) : static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
          x[t * ldq + i] = v, sums[t] += v;
        }
      }
      int32_t want[8], got[8];
      for (int t = 0; t < 8; ++t) want[t] = cpu::ternary_dot_scalar(row.data(), x.data() + t * ldq, cols, sums[t]);
      const std::string what = "cols " + std::to_string(cols) + " pattern " + std::to_string(pattern);
      cpu::ternary_dot8(row.data(), x.data(), ldq, cols, sums.data(), got);
      for (int t = 0; t < 8; ++t) EXPECT_EQ(got[t], want[t]) << "dispatched " << what << " token " << t;
      auto check = [&](const char* path, auto kernel) {
        kernel(row.data(), x.data(), ldq, cols, sums.data(), got);
        for (int t = 0; t < 8; ++t) EXPECT_EQ(got[t], want[t]) << path << " " << what << " token " << t;
      };
      for_each_tile_kernel(cpu::ternary_dot8_scalar, cpu::ternary_dot8_avx2, cpu::ternary_dot8_vnni, cpu::ternary_dot8_vnni512, check);
    }
  }
}

// The float dots: the SIMD variants give the scalar ones' float exactly (same fused
// operations in the same order), the 16-bit one equals dot_f32 of the converted row, and
// all are within float rounding of a double reference.
TEST(CpuKernels, FloatDotsSameOnEveryPath) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 1);
  auto same = [](float a, float b) { return std::memcmp(&a, &b, 4) == 0; };
  for (bool bf16 : {false, true}) {
    for (int64_t n : {1, 15, 16, 17, 31, 32, 33, 64, 2560, 2567}) {
      std::vector<uint16_t> w(n);
      std::vector<float> wf(n), x(n);
      double want = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float v = nd(rng) * 0.05f;
        w[i] = bf16 ? f32_to_bf16(v) : f32_to_f16(v);
        wf[i] = bf16 ? bf16_to_f32(w[i]) : f16_to_f32(w[i]);
        x[i] = nd(rng);
        want += static_cast<double>(wf[i]) * x[i], mag += std::fabs(static_cast<double>(wf[i]) * x[i]);
      }
      const std::string what = "n " + std::to_string(n) + (bf16 ? " bf16" : " f16");
      const float s = cpu::dot_half_f32_scalar(w.data(), bf16, x.data(), n);
      EXPECT_NEAR(s, want, 1e-6 * mag + 1e-30) << what;
      EXPECT_TRUE(same(cpu::dot_f32_scalar(wf.data(), x.data(), n), s)) << what;
      EXPECT_TRUE(same(cpu::dot_f32(wf.data(), x.data(), n), cpu::dot_half_f32(w.data(), bf16, x.data(), n))) << what;
      if (cpu::has_avx2()) {
        EXPECT_TRUE(same(cpu::dot_half_f32_avx2(w.data(), bf16, x.data(), n), s)) << what;
        EXPECT_TRUE(same(cpu::dot_f32_avx2(wf.data(), x.data(), n), s)) << what;
      }
      if (cpu::has_avx512()) {
        EXPECT_TRUE(same(cpu::dot_half_f32_avx512(w.data(), bf16, x.data(), n), s)) << what;
        EXPECT_TRUE(same(cpu::dot_f32_avx512(wf.data(), x.data(), n), s)) << what;
      }
      // The four-row head dot: each row the single dot's float (rows: w, w reversed, w, w reversed).
      std::vector<uint16_t> wr(w.rbegin(), w.rend());
      const uint16_t* rows[4] = {w.data(), wr.data(), w.data(), wr.data()};
      const float sr = cpu::dot_half_f32_scalar(wr.data(), bf16, x.data(), n);
      float four[4];
      cpu::dot_half4_f32(rows, bf16, x.data(), n, four);
      for (int r = 0; r < 4; ++r) EXPECT_TRUE(same(four[r], r % 2 ? sr : s)) << what << " four-row " << r;
      if (cpu::has_avx512()) {
        cpu::dot_half4_f32_avx512(rows, bf16, x.data(), n, four);
        for (int r = 0; r < 4; ++r) EXPECT_TRUE(same(four[r], r % 2 ? sr : s)) << what << " avx512 four-row " << r;
      }
      if (cpu::has_avx2()) {
        cpu::dot_half4_f32_avx2(rows, bf16, x.data(), n, four);
        for (int r = 0; r < 4; ++r) EXPECT_TRUE(same(four[r], r % 2 ? sr : s)) << what << " avx2 four-row " << r;
      }
    }
  }
}

TEST(CpuKernels, RmsnormMatchesDouble) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 2);
  const int64_t n = 777;
  std::vector<float> x(n), w(n), out(n), want(n);
  for (int64_t i = 0; i < n; ++i) x[i] = nd(rng), w[i] = nd(rng);
  cpu::rmsnorm(x.data(), w.data(), n, 1e-5f, out.data());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  double r = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int64_t i = 0; i < n; ++i) want[i] = static_cast<float>(w[i] * x[i] * r);
  EXPECT_LT(test::rel_l2(out.data(), want.data(), n), 1e-6);
}

TEST(CpuKernels, RopeRotatesHalfPairs) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 1);
  const int64_t heads = 3, hd = 64, pos = 1234;
  std::vector<float> x(heads * hd), orig;
  for (auto& v : x) v = nd(rng);
  orig = x;
  std::vector<float> inv(hd / 2);
  cpu::rope_inv_freq(500000.0f, hd, inv.data());
  cpu::rope_neox(x.data(), heads, hd, pos, inv.data());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      double f = std::pow(500000.0, -2.0 * i / hd) * pos;
      double a = orig[h * hd + i], b = orig[h * hd + i + hd / 2];
      EXPECT_NEAR(x[h * hd + i], a * std::cos(f) - b * std::sin(f), 2e-3);
      EXPECT_NEAR(x[h * hd + i + hd / 2], b * std::cos(f) + a * std::sin(f), 2e-3);
    }
  }
  // Position 0 is the identity.
  std::vector<float> y = orig;
  cpu::rope_neox(y.data(), heads, hd, 0, inv.data());
  EXPECT_EQ(y, orig);
  // The engine's split form: the table holds float(pos) * inv_freq's cos and sin, and
  // rotating with it is the one-call rotation bit for bit.
  std::vector<float> cs(hd), z = orig;
  cpu::rope_table(pos, inv.data(), hd / 2, cs.data());
  for (int64_t i = 0; i < hd / 2; ++i) {
    EXPECT_EQ(cs[i], std::cos(static_cast<float>(pos) * inv[i])) << i;
    EXPECT_EQ(cs[hd / 2 + i], std::sin(static_cast<float>(pos) * inv[i])) << i;
  }
  cpu::rope_neox_table(z.data(), heads, hd, cs.data());
  EXPECT_EQ(z, x);
}

TEST(CpuKernels, AttentionMatchesSoftmaxDefinition) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 1);
  const int64_t hd = 32, n = 17, stride = 96;
  std::vector<float> q(hd), k(n * stride), v(n * stride), scores(n), out(hd);
  for (auto& x : q) x = nd(rng);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  cpu::attention_head(q.data(), k.data(), v.data(), stride, n, hd, scores.data(), out.data());
  std::vector<double> p(n);
  double mx = -1e30, sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    double d = 0;
    for (int64_t i = 0; i < hd; ++i) d += double(q[i]) * k[t * stride + i];
    p[t] = d / std::sqrt(double(hd));
    mx = std::max(mx, p[t]);
  }
  for (auto& x : p) sum += (x = std::exp(x - mx));
  std::vector<float> want(hd, 0);
  for (int64_t i = 0; i < hd; ++i) {
    double acc = 0;
    for (int64_t t = 0; t < n; ++t) acc += p[t] / sum * v[t * stride + i];
    want[i] = static_cast<float>(acc);
  }
  EXPECT_LT(test::rel_l2(out.data(), want.data(), hd), 1e-5);
}

// The F16-cache attention (--cache-type f16) is the F32 one on the widened values, bit
// for bit: the only difference a F16 cache makes is the rounding of what is stored.
TEST(CpuKernels, AttentionOverF16CacheEqualsWidenedF32) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 1);
  const int64_t hd = 64, n = 29, stride = 160;
  std::vector<float> q(hd), kf(n * stride), vf(n * stride), s1(n), s2(n), o1(hd), o2(hd);
  std::vector<uint16_t> kh(n * stride), vh(n * stride);
  for (auto& x : q) x = nd(rng);
  for (size_t i = 0; i < kh.size(); ++i) {
    kh[i] = f32_to_f16(nd(rng)), vh[i] = f32_to_f16(nd(rng));
    kf[i] = f16_to_f32(kh[i]), vf[i] = f16_to_f32(vh[i]);
  }
  cpu::attention_head(q.data(), kh.data(), vh.data(), stride, n, hd, s1.data(), o1.data());
  cpu::attention_head(q.data(), kf.data(), vf.data(), stride, n, hd, s2.data(), o2.data());
  EXPECT_EQ(o1, o2);
}

TEST(CpuKernels, GatedActivations) {
  std::vector<float> g = {-2, -0.5f, 0, 0.5f, 3}, u = {1, 2, 3, 4, 5}, h(5);
  cpu::gated_activation(g.data(), u.data(), 5, Activation::Relu2, h.data());
  EXPECT_EQ(h, (std::vector<float>{0, 0, 0, 1.0f, 45}));
  cpu::gated_activation(g.data(), u.data(), 5, Activation::Silu, h.data());
  EXPECT_NEAR(h[4], 3 / (1 + std::exp(-3.0)) * 5, 1e-5);
}

TEST(CpuKernels, DotF32) {
  auto rng = rng_for_test();
  std::normal_distribution<float> nd(0, 1);
  for (int64_t n : {1, 15, 16, 17, 2560}) {
    std::vector<float> a(n), b(n);
    double want = 0;
    for (int64_t i = 0; i < n; ++i) a[i] = nd(rng), b[i] = nd(rng), want += double(a[i]) * b[i];
    EXPECT_NEAR(cpu::dot_f32(a.data(), b.data(), n), want, 1e-4 * std::sqrt(double(n)));
  }
}

// Exact, including the extremes: -128 * -128 summed over a 2560-wide row.
TEST(CpuKernels, DotI8IsExact) {
  auto rng = rng_for_test();
  std::uniform_int_distribution<int> d(-128, 127);
  for (int64_t n : {0, 1, 31, 32, 33, 2560}) {
    std::vector<int8_t> a(n), b(n);
    int64_t want = 0;
    for (int64_t i = 0; i < n; ++i) a[i] = static_cast<int8_t>(d(rng)), b[i] = static_cast<int8_t>(d(rng)), want += a[i] * b[i];
    EXPECT_EQ(cpu::dot_i8(a.data(), b.data(), n), want) << n;
  }
  std::vector<int8_t> lo(2560, -128);
  EXPECT_EQ(cpu::dot_i8(lo.data(), lo.data(), 2560), 2560 * 128 * 128);
}

}  // namespace
}  // namespace tern
