// Ternary formats: round trips, hand-written known answers, absmean ternarization.
#include "model/ternary.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tern/error.h"
#include "util/half.h"

namespace tern {
namespace {

std::vector<int8_t> random_ternary(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> w(static_cast<size_t>(n));
  for (auto& v : w) v = static_cast<int8_t>(d(rng));
  return w;
}

std::vector<float> random_normal(size_t n, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> w(n);
  for (auto& v : w) v = d(rng);
  return w;
}

// ---------------------------------------------------------------------------------------
// tern2 (engine layout)

TEST(Ternary, MakeTernaryRoundTripOddShapes) {
  for (int64_t rows : {1, 3, 7, 257}) {
    for (int64_t cols : {1, 31, 100, 128, 129, 256, 384, 2560}) {
      auto w = random_ternary(rows * cols, static_cast<uint32_t>(rows * 10007 + cols));
      TernaryMatrix m = make_ternary(w, rows, cols, 0.75f);
      EXPECT_EQ(m.rows, rows);
      EXPECT_EQ(m.cols, cols);
      EXPECT_EQ(m.padded_cols() % kTernBlock, 0);
      EXPECT_EQ(m.padded_cols(), (cols + 127) / 128 * 128);
      EXPECT_EQ(m.row_bytes, m.padded_cols() / 4);
      EXPECT_EQ(m.scale, 0.75f);
      ASSERT_NE(m.data, nullptr);
      EXPECT_EQ(unpack_ternary(m), w) << rows << " x " << cols;
    }
  }
}

TEST(Ternary, MakeTernaryGetAndPadding) {
  const int64_t rows = 3, cols = 200;  // padded to 256: 56 zero weights per row
  auto w = random_ternary(rows * cols, 42);
  TernaryMatrix m = make_ternary(w, rows, cols, 1.0f);
  EXPECT_EQ(m.row_bytes, 64);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(m.get(r, c), w[r * cols + c]) << r << "," << c;
    for (int64_t c = cols; c < m.padded_cols(); ++c) EXPECT_EQ(m.get(r, c), 0) << r << "," << c;
  }
  // The padding is stored as code 1 (weight 0): byte 31 of group 1 holds weights 159, 191
  // (real) and 223, 255 (padding) in bits 7:6, 5:4, 3:2, 1:0, so its low nibble is 01 01.
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t b = m.data[r * m.row_bytes + 32 + 31];
    EXPECT_EQ(b & 0x0f, 0x05);
  }
  EXPECT_THROW(m.get(rows, 0), Error);
  EXPECT_THROW(m.get(0, m.padded_cols()), Error);
  EXPECT_THROW(m.get(-1, 0), Error);
}

TEST(Ternary, MakeTernaryKnownBytes) {
  // One row of 130 weights: w[0] = +1, w[32] = -1, w[129] = -1, rest 0.
  std::vector<int8_t> w(130, 0);
  w[0] = 1;
  w[32] = -1;
  w[129] = -1;
  TernaryMatrix m = make_ternary(w, 1, 130, 1.0f);
  ASSERT_EQ(m.row_bytes, 64);
  // byte 0: w0 (code 2) << 6 | w32 (code 0) << 4 | w64 (1) << 2 | w96 (1) = 0x85
  EXPECT_EQ(m.data[0], 0x85);
  for (int j = 1; j < 32; ++j) EXPECT_EQ(m.data[j], 0x55) << j;
  // group 1: byte 1 holds w129 (code 0) in bits 7:6, padding elsewhere: 0x15
  EXPECT_EQ(m.data[32], 0x55);
  EXPECT_EQ(m.data[33], 0x15);
  for (int j = 34; j < 64; ++j) EXPECT_EQ(m.data[j], 0x55) << j;
}

TEST(Ternary, MakeTernaryRejectsBadInput) {
  std::vector<int8_t> w(10, 0);
  EXPECT_THROW(make_ternary(w, 3, 3, 1.0f), Error);
  EXPECT_THROW(make_ternary(w, -2, -5, 1.0f), Error);
  w[7] = 2;
  EXPECT_THROW(make_ternary(w, 2, 5, 1.0f), Error);
  w[7] = -2;
  EXPECT_THROW(make_ternary(w, 2, 5, 1.0f), Error);
}

TEST(Ternary, UnpackTernaryRejectsCode3) {
  std::vector<int8_t> w(128, 0);
  TernaryMatrix m = make_ternary(w, 1, 128, 1.0f);
  std::vector<uint8_t> bytes(m.data, m.data + 32);
  bytes[5] = 0xff;
  TernaryMatrix bad = m;
  bad.data = bytes.data();
  EXPECT_THROW(unpack_ternary(bad), Error);
}

// ---------------------------------------------------------------------------------------
// I2_S

TEST(Ternary, I2sRoundTrip) {
  for (int64_t rows : {1, 3, 7, 257}) {
    for (int64_t cols : {128, 256, 384, 2560}) {
      const int64_t n = rows * cols;
      auto w = random_ternary(n, static_cast<uint32_t>(n + 1));
      auto packed = pack_i2s(w, 1.8125f);
      ASSERT_EQ(packed.size(), i2s_nbytes(n));
      ASSERT_EQ(packed.size(), static_cast<size_t>(n / 4 + 32));
      float scale = 0;
      EXPECT_EQ(unpack_i2s(packed, n, &scale), w);
      EXPECT_EQ(scale, 1.8125f);
      // I2_S blocks are the tern2 groups: the same weights give the same code bytes.
      TernaryMatrix m = make_ternary(w, rows, cols, 1.0f);
      EXPECT_EQ(std::memcmp(m.data, packed.data(), static_cast<size_t>(n / 4)), 0);
    }
  }
}

TEST(Ternary, I2sKnownBytes) {
  std::vector<int8_t> w(128, 0);
  w[0] = 1;    // byte 0 bits 7:6 = 10
  w[32] = -1;  // byte 0 bits 5:4 = 00
  w[97] = -1;  // byte 1 bits 1:0 = 00
  w[66] = 1;   // byte 2 bits 3:2 = 10
  auto p = pack_i2s(w, 1.5f);
  ASSERT_EQ(p.size(), 64u);
  EXPECT_EQ(p[0], 0x85);  // 10 00 01 01
  EXPECT_EQ(p[1], 0x54);  // 01 01 01 00
  EXPECT_EQ(p[2], 0x59);  // 01 01 10 01
  for (int j = 3; j < 32; ++j) EXPECT_EQ(p[j], 0x55) << j;
  // float32 1.5 = 0x3fc00000, little-endian, then 28 zero bytes
  EXPECT_EQ(p[32], 0x00);
  EXPECT_EQ(p[33], 0x00);
  EXPECT_EQ(p[34], 0xc0);
  EXPECT_EQ(p[35], 0x3f);
  for (int j = 36; j < 64; ++j) EXPECT_EQ(p[j], 0) << j;
  // And decoding hand-written bytes.
  std::vector<uint8_t> raw(64, 0x55);
  raw[31] = 0x2a;  // 00 10 10 10: w31 = -1, w63 = w95 = w127 = +1
  std::memset(raw.data() + 32, 0, 32);
  float s = 2.0f;
  std::memcpy(raw.data() + 32, &s, 4);
  float got = 0;
  auto u = unpack_i2s(raw, 128, &got);
  EXPECT_EQ(got, 2.0f);
  for (int i = 0; i < 128; ++i) {
    int want = (i == 31) ? -1 : (i == 63 || i == 95 || i == 127) ? 1 : 0;
    EXPECT_EQ(u[i], want) << i;
  }
}

TEST(Ternary, I2sSizeErrors) {
  EXPECT_THROW(pack_i2s(std::vector<int8_t>(100, 0), 1.0f), Error);
  EXPECT_THROW(i2s_nbytes(130), Error);
  EXPECT_THROW(i2s_nbytes(-128), Error);
  std::vector<uint8_t> data(64, 0x55);
  EXPECT_THROW(unpack_i2s(data, 256, nullptr), Error);  // needs 96 bytes
  EXPECT_THROW(unpack_i2s(std::span<const uint8_t>(data).first(63), 128, nullptr), Error);
  EXPECT_THROW(unpack_i2s(data, 100, nullptr), Error);
  EXPECT_NO_THROW(unpack_i2s(data, 128, nullptr));
  data[3] = 0x57;  // code 3 in bits 1:0
  EXPECT_THROW(unpack_i2s(data, 128, nullptr), Error);
  std::vector<int8_t> w(128, 0);
  w[5] = 3;
  EXPECT_THROW(pack_i2s(w, 1.0f), Error);
}

// ---------------------------------------------------------------------------------------
// TQ2_0

TEST(Ternary, Tq2RoundTrip) {
  for (int64_t rows : {1, 3, 7, 257}) {
    for (int64_t cols : {256, 512, 2560}) {
      auto w = random_ternary(rows * cols, static_cast<uint32_t>(rows * 31 + cols));
      auto packed = pack_tq2_0(w, rows, cols, 1.25f);
      ASSERT_EQ(packed.size(), static_cast<size_t>(rows * cols / 256 * 66));
      std::vector<float> scales;
      EXPECT_EQ(unpack_tq2_0(packed, rows, cols, &scales), w);
      ASSERT_EQ(scales.size(), static_cast<size_t>(rows * cols / 256));
      for (float s : scales) EXPECT_EQ(s, 1.25f);
      EXPECT_EQ(unpack_tq2_0(packed, rows, cols, nullptr), w);
    }
  }
}

TEST(Ternary, Tq2KnownBytes) {
  // Element e is in byte 32*(e/128) + e%32 at shift 2*((e%128)/32), code = w + 1.
  std::vector<int8_t> w(256, 0);
  w[0] = 1;     // byte 0, bits 1:0 = 10
  w[32] = -1;   // byte 0, bits 3:2 = 00
  w[127] = 1;   // byte 31, bits 7:6 = 10
  w[128] = -1;  // byte 32, bits 1:0 = 00
  w[255] = -1;  // byte 63, bits 7:6 = 00
  auto p = pack_tq2_0(w, 1, 256, 1.0f);
  ASSERT_EQ(p.size(), 66u);
  EXPECT_EQ(p[0], 0x52);   // 01 01 00 10
  EXPECT_EQ(p[31], 0x95);  // 10 01 01 01
  EXPECT_EQ(p[32], 0x54);  // 01 01 01 00
  EXPECT_EQ(p[63], 0x15);  // 00 01 01 01
  for (int j : {1, 2, 30, 33, 62}) EXPECT_EQ(p[j], 0x55) << j;
  EXPECT_EQ(p[64], 0x00);  // fp16 1.0 = 0x3c00, little-endian
  EXPECT_EQ(p[65], 0x3c);
  std::vector<float> scales;
  EXPECT_EQ(unpack_tq2_0(p, 1, 256, &scales), w);
  ASSERT_EQ(scales.size(), 1u);
  EXPECT_EQ(scales[0], 1.0f);
}

// Independent transcription of the loop order of llama.cpp's dequantize_row_tq2_0:
// for each 32-byte half, for each shift l, for each byte m, output sequentially.
std::vector<int8_t> ref_decode_tq2(const std::vector<uint8_t>& data, int64_t nblocks) {
  std::vector<int8_t> y;
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* qs = data.data() + b * 66;
    for (int j = 0; j < 64; j += 32)
      for (int l = 0; l < 4; ++l)
        for (int m = 0; m < 32; ++m) y.push_back(static_cast<int8_t>(((qs[j + m] >> (2 * l)) & 3) - 1));
  }
  return y;
}

TEST(Ternary, Tq2MatchesLlamaLoopOrder) {
  auto w = random_ternary(3 * 512, 9);
  auto p = pack_tq2_0(w, 3, 512, 1.0f);
  EXPECT_EQ(ref_decode_tq2(p, 6), w);
}

TEST(Ternary, Tq2SizeErrors) {
  std::vector<int8_t> w(256, 0);
  EXPECT_THROW(pack_tq2_0(w, 2, 128, 1.0f), Error);  // cols % 256
  EXPECT_THROW(pack_tq2_0(w, 2, 256, 1.0f), Error);  // count
  std::vector<uint8_t> data(66, 0x55);
  EXPECT_THROW(unpack_tq2_0(data, 2, 256, nullptr), Error);
  EXPECT_THROW(unpack_tq2_0(std::span<const uint8_t>(data).first(65), 1, 256, nullptr), Error);
  EXPECT_THROW(unpack_tq2_0(data, 1, 128, nullptr), Error);
  EXPECT_NO_THROW(unpack_tq2_0(data, 1, 256, nullptr));
  data[40] = 0xd5;  // code 3 in bits 7:6
  EXPECT_THROW(unpack_tq2_0(data, 1, 256, nullptr), Error);
}

// ---------------------------------------------------------------------------------------
// TQ1_0 (layout from llama.cpp ggml/src/ggml-quants.c quantize_row_tq1_0_ref /
// dequantize_row_tq1_0; block_tq1_0 in ggml-common.h: qs[48], qh[4], fp16 d)

// Independent transcription of the dequantizer's loop order: qs[0..31] for trit n = 0..4,
// then qs[32..47] for n = 0..4, then qh[0..3] for n = 0..3, each read as
// ((uint8_t)(q * 3^n) * 3) >> 8, outputs written sequentially.
std::vector<int8_t> ref_decode_tq1(const std::vector<uint8_t>& data, int64_t nblocks) {
  static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
  auto trit = [](uint8_t q, int n) {
    uint8_t s = static_cast<uint8_t>(q * pow3[n]);
    return static_cast<int8_t>(((s * 3) >> 8) - 1);
  };
  std::vector<int8_t> y;
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* blk = data.data() + b * 54;
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 32; ++m) y.push_back(trit(blk[m], n));
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 16; ++m) y.push_back(trit(blk[32 + m], n));
    for (int n = 0; n < 4; ++n)
      for (int j = 0; j < 4; ++j) y.push_back(trit(blk[48 + j], n));
  }
  return y;
}

TEST(Ternary, Tq1RoundTrip) {
  for (int64_t rows : {1, 3, 7, 257}) {
    for (int64_t cols : {256, 512, 2560}) {
      auto w = random_ternary(rows * cols, static_cast<uint32_t>(rows * 17 + cols));
      auto packed = pack_tq1_0(w, rows, cols, 0.875f);
      ASSERT_EQ(packed.size(), static_cast<size_t>(rows * cols / 256 * 54));
      std::vector<float> scales;
      EXPECT_EQ(unpack_tq1_0(packed, rows, cols, &scales), w);
      EXPECT_EQ(ref_decode_tq1(packed, rows * cols / 256), w);
      ASSERT_EQ(scales.size(), static_cast<size_t>(rows * cols / 256));
      for (float s : scales) EXPECT_EQ(s, 0.875f);
    }
  }
}

TEST(Ternary, Tq1AllTritCombinations) {
  // Row i puts the 5 trits of i (i < 243) in the elements of qs[0] (0, 32, 64, 96, 128),
  // and the 4 trits of i % 81 in the elements of qh[0] (240, 244, 248, 252).
  const int64_t rows = 243, cols = 256;
  std::vector<int8_t> w(rows * cols, 0);
  for (int i = 0; i < rows; ++i) {
    int v = i;
    for (int k = 4; k >= 0; --k, v /= 3) w[i * cols + 32 * k] = static_cast<int8_t>(v % 3 - 1);
    v = i % 81;
    for (int k = 3; k >= 0; --k, v /= 3) w[i * cols + 240 + 4 * k] = static_cast<int8_t>(v % 3 - 1);
  }
  auto p = pack_tq1_0(w, rows, cols, 1.0f);
  EXPECT_EQ(unpack_tq1_0(p, rows, cols, nullptr), w);
  // Byte value = ceil(q * 256 / 243) with q the base-3 number, most significant trit first.
  for (int i = 0; i < rows; ++i) {
    EXPECT_EQ(p[i * 54 + 0], (i * 256 + 242) / 243) << i;
    EXPECT_EQ(p[i * 54 + 48], ((i % 81) * 3 * 256 + 242) / 243) << i;
  }
}

TEST(Ternary, Tq1KnownBytes) {
  // Worked by hand from dequantize_row_tq1_0 (trit k of byte b = ((uint8_t)(b*3^k)*3) >> 8):
  //  - all-zero 5-trit byte: q = 1*(81+27+9+3+1) = 121, ceil(121*256/243) = ceil(127.47) = 128.
  //    Check: 128*3 = 384 >> 8 = 1, and 128*3^k mod 256 = 128 for k >= 1, so every trit is 1.
  //  - all-zero qh byte: q = (27+9+3+1)*3 = 120, ceil(120*256/243) = ceil(126.42) = 127.
  //  - qs[0] holds w0 = +1, w32 = -1, w64 = w96 = w128 = 0: trits 2,0,1,1,1:
  //    q = 162 + 0 + 9 + 3 + 1 = 175, ceil(44800/243) = ceil(184.36) = 185.
  //    Check: 185*3 = 555 >> 8 = 2; 555 mod 256 = 43, 43*3 = 129 >> 8 = 0;
  //    185*9 mod 256 = 129 -> 387 >> 8 = 1; 185*27 mod 256 = 131 -> 1; 185*81 mod 256 = 137 -> 1.
  //  - qs[32] holds w160 = +1 (then w176, w192, w208, w224 = 0): trits 2,1,1,1,1:
  //    q = 162 + 40 = 202, ceil(51712/243) = ceil(212.81) = 213.
  //  - qh[1] holds w241 = +1 (w245, w249, w253 = 0): trits 2,1,1,1 then x3:
  //    q = (54 + 9 + 3 + 1) * 3 = 201, ceil(51456/243) = ceil(211.75) = 212.
  //  - qh[3] holds w243, w247, w251 = 0 and w255 = -1: trits 1,1,1,0 then x3:
  //    q = 39 * 3 = 117, ceil(29952/243) = ceil(123.26) = 124.
  //    Check trit 3: 124*27 mod 256 = 20 -> 60 >> 8 = 0 -> weight -1.
  //  - d = fp16(0.5) = 0x3800 -> bytes 00 38.
  std::vector<int8_t> w(256, 0);
  w[0] = 1;
  w[32] = -1;
  w[160] = 1;
  w[241] = 1;
  w[255] = -1;
  std::vector<uint8_t> want(54, 128);
  want[0] = 185;
  want[32] = 213;
  want[48] = 127;
  want[49] = 212;
  want[50] = 127;
  want[51] = 124;
  want[52] = 0x00;
  want[53] = 0x38;
  EXPECT_EQ(pack_tq1_0(w, 1, 256, 0.5f), want);
  std::vector<float> scales;
  EXPECT_EQ(unpack_tq1_0(want, 1, 256, &scales), w);
  ASSERT_EQ(scales.size(), 1u);
  EXPECT_EQ(scales[0], 0.5f);
}

TEST(Ternary, Tq1SizeErrors) {
  std::vector<int8_t> w(512, 0);
  EXPECT_THROW(pack_tq1_0(w, 4, 128, 1.0f), Error);
  EXPECT_THROW(pack_tq1_0(w, 1, 256, 1.0f), Error);
  std::vector<uint8_t> data(108, 128);
  EXPECT_THROW(unpack_tq1_0(data, 1, 256, nullptr), Error);
  EXPECT_THROW(unpack_tq1_0(data, 3, 256, nullptr), Error);
  EXPECT_THROW(unpack_tq1_0(data, 1, 300, nullptr), Error);
  EXPECT_NO_THROW(unpack_tq1_0(data, 2, 256, nullptr));
  EXPECT_NO_THROW(unpack_tq1_0(data, 1, 512, nullptr));
  w[9] = 5;
  EXPECT_THROW(pack_tq1_0(w, 2, 256, 1.0f), Error);
}

// ---------------------------------------------------------------------------------------
// HF packed

TEST(Ternary, HfRoundTrip) {
  for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 257}) {
    for (int64_t cols : {1, 3, 128, 2560}) {
      auto w = random_ternary(rows * cols, static_cast<uint32_t>(rows * 7 + cols));
      auto packed = pack_hf(w, rows, cols);
      ASSERT_EQ(packed.size(), static_cast<size_t>((rows + 3) / 4 * cols));
      EXPECT_EQ(unpack_hf(packed, rows, cols), w) << rows << " x " << cols;
    }
  }
}

TEST(Ternary, HfKnownAnswerFromTransformersDocstring) {
  // The example in transformers' unpack_weights docstring (integrations/bitnet.py).
  const std::vector<uint8_t> packed = {0b10100001, 0b00011000, 0b10010000, 0b00001010};
  const std::vector<int8_t> want = {0, -1, -1, 1, -1, 1, -1, 1, 1, 0, 0, -1, 1, -1, 1, -1};
  EXPECT_EQ(unpack_hf(packed, 8, 2), want);
  EXPECT_EQ(pack_hf(want, 8, 2), packed);
}

TEST(Ternary, HfKnownBytesRaggedRows) {
  // rows = 5 -> R = 2 packed rows: rows 0,1 in bits 1:0, rows 2,3 in bits 3:2, row 4 in
  // bits 5:4 of packed row 0; bits 7:6 and the row-5 slot stay 0 (as pack_weights leaves them).
  const std::vector<int8_t> w = {1, 0, -1, 1, 0};  // one column
  auto p = pack_hf(w, 5, 1);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0], 0x02 | (0x00 << 2) | (0x01 << 4));  // rows 0, 2, 4
  EXPECT_EQ(p[1], 0x01 | (0x02 << 2));                // rows 1, 3
  EXPECT_EQ(unpack_hf(p, 5, 1), w);
}

TEST(Ternary, HfSizeErrors) {
  std::vector<int8_t> w(12, 0);
  EXPECT_THROW(pack_hf(w, 5, 3), Error);
  std::vector<uint8_t> data(6, 0x55);
  EXPECT_NO_THROW(unpack_hf(data, 8, 3));
  EXPECT_NO_THROW(unpack_hf(data, 5, 3));
  EXPECT_THROW(unpack_hf(data, 9, 3), Error);
  EXPECT_THROW(unpack_hf(data, 8, 2), Error);
  data[4] = 0x5d;  // code 3 in bits 3:2 of packed row 1, column 1 -> unpacked row 3
  EXPECT_THROW(unpack_hf(data, 8, 3), Error);
}

// ---------------------------------------------------------------------------------------
// Absmean ternarization

// Straightforward reference: the mean in double, s = 1/m in float (as torch), the product
// in double (exact for two floats) and round-half-even on it.
std::vector<int8_t> ref_ternarize(const std::vector<float>& w, float* m_out) {
  double sum = 0;
  for (float v : w) sum += std::abs(static_cast<double>(v));
  float m = static_cast<float>(sum / static_cast<double>(w.size()));
  if (m < 1e-5f) m = 1e-5f;
  const float s = 1.0f / m;
  std::vector<int8_t> q;
  for (float v : w) {
    double r = std::nearbyint(static_cast<double>(v) * static_cast<double>(s));
    q.push_back(static_cast<int8_t>(std::min(1.0, std::max(-1.0, r))));
  }
  *m_out = m;
  return q;
}

TEST(Ternary, TernarizeMatchesReferenceOnNormalData) {
  for (float stddev : {0.02f, 1.0f, 3e-6f}) {
    for (size_t n : {1u, 7u, 1000u, 333333u}) {
      auto w = random_normal(n, static_cast<uint32_t>(n), stddev);
      float m = 0, mref = 0;
      auto q = ternarize_absmean(w, &m);
      auto qref = ref_ternarize(w, &mref);
      EXPECT_EQ(m, mref) << n << " " << stddev;
      EXPECT_EQ(q, qref) << n << " " << stddev;
      // And in torch's float arithmetic: nearbyintf(w * s).
      const float s = 1.0f / m;
      for (size_t i = 0; i < n; ++i) {
        float r = std::nearbyintf(w[i] * s);
        ASSERT_EQ(q[i], static_cast<int8_t>(std::fmin(1.0f, std::fmax(-1.0f, r)))) << i;
      }
    }
  }
}

TEST(Ternary, TernarizeAllZeros) {
  std::vector<float> w(1000, 0.0f);
  float m = 0;
  auto q = ternarize_absmean(w, &m);
  EXPECT_EQ(m, 1e-5f);
  for (int8_t v : q) EXPECT_EQ(v, 0);
}

TEST(Ternary, TernarizeTiesAndClamp) {
  // sum |w| = 8 over 8 weights: m = 1 exactly, s = 1.
  // +-0.5 m ties to even 0; +-1.5 m rounds to +-2 and clamps to +-1; 2.5 -> 2 -> 1.
  for (float unit : {1.0f, 0.25f, 4.0f}) {  // powers of two keep s = 1/m and w*s exact
    std::vector<float> w = {0.5f, -0.5f, 1.5f, -1.5f, 1.0f, -1.0f, 0.0f, 2.0f};
    for (auto& v : w) v *= unit;
    float m = 0;
    auto q = ternarize_absmean(w, &m);
    EXPECT_EQ(m, unit);
    EXPECT_EQ(q, (std::vector<int8_t>{0, 0, 1, -1, 1, -1, 0, 1}));
  }
  // Just above / below the tie.
  std::vector<float> w = {std::nextafter(0.5f, 1.0f), std::nextafter(-0.5f, -1.0f), 2.5f, 0.0f};
  // mean = (0.50000006 + 0.50000006 + 2.5) / 4 ~ 0.875: recompute against the reference.
  float m = 0, mref = 0;
  EXPECT_EQ(ternarize_absmean(w, &m), ref_ternarize(w, &mref));
  EXPECT_EQ(m, mref);
}

TEST(Ternary, TernarizeMeanClampedToMinimum) {
  std::vector<float> w = {1e-7f, -2e-7f, 0.0f, 3e-6f};
  float m = 0;
  auto q = ternarize_absmean(w, &m);
  EXPECT_EQ(m, 1e-5f);
  EXPECT_EQ(q, (std::vector<int8_t>{0, 0, 0, 0}));  // 3e-6 / 1e-5 = 0.3
}

TEST(Ternary, TernarizeRejectsNonFinite) {
  std::vector<float> w = {1.0f, NAN, 0.5f};
  float m = 0;
  EXPECT_THROW(ternarize_absmean(w, &m), Error);
  w[1] = INFINITY;
  EXPECT_THROW(ternarize_absmean(w, &m), Error);
}

// ---------------------------------------------------------------------------------------
// common_block_scale

TEST(Ternary, CommonBlockScaleAcceptsEqual) {
  std::vector<int8_t> w = {1, 0, 0, -1, 0, 1};
  std::vector<float> s = {0.5f, 0.5f, 0.5f};
  EXPECT_EQ(common_block_scale(s, w, 2, "blk.0.attn_q.weight"), 0.5f);
  // Round trip through TQ2_0: scales come back identical.
  auto tw = random_ternary(4 * 512, 3);
  std::vector<float> scales;
  auto p = pack_tq2_0(tw, 4, 512, 1.7f);
  auto u = unpack_tq2_0(p, 4, 512, &scales);
  EXPECT_EQ(common_block_scale(scales, u, 256, "x"), f16_to_f32(f32_to_f16(1.7f)));
}

TEST(Ternary, CommonBlockScaleIgnoresZeroBlocks) {
  std::vector<int8_t> w = {0, 0, 1, -1, 0, 0, 0, 1};
  std::vector<float> s = {0.0f, 2.0f, 7.0f, 2.0f};  // llama.cpp writes d = 0 for zero blocks
  EXPECT_EQ(common_block_scale(s, w, 2, "t"), 2.0f);
  // No non-zero weight at all: documented fallback 1.0.
  std::vector<int8_t> z(8, 0);
  EXPECT_EQ(common_block_scale(s, z, 2, "t"), 1.0f);
  EXPECT_EQ(common_block_scale({}, {}, 256, "t"), 1.0f);
}

TEST(Ternary, CommonBlockScaleRejectsUnequal) {
  std::vector<int8_t> w = {1, 0, 0, -1, 0, 1};
  std::vector<float> s = {0.5f, 0.5f, 0.75f};
  try {
    common_block_scale(s, w, 2, "blk.3.ffn_down.weight");
    FAIL() << "expected tern::Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("blk.3.ffn_down.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("0.5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("0.75"), std::string::npos) << msg;
  }
}

TEST(Ternary, CommonBlockScaleSizeErrors) {
  std::vector<int8_t> w(6, 1);
  std::vector<float> s = {1.0f, 1.0f};
  EXPECT_THROW(common_block_scale(s, w, 2, "t"), Error);
  EXPECT_THROW(common_block_scale(s, w, 0, "t"), Error);
  EXPECT_NO_THROW(common_block_scale(s, w, 3, "t"));
  std::vector<float> inf = {INFINITY, INFINITY};
  EXPECT_THROW(common_block_scale(inf, w, 3, "t"), Error);
}

}  // namespace
}  // namespace tern
