// Ternary weight formats: the engines' "tern2" layout, absmean ternarization, and the
// on-disk formats users bring (I2_S, TQ2_0, TQ1_0, HF packed). See ternary.h and
// docs/BITNET_FACTS.md ("Quantization math", "Checkpoint formats").
#include "model/ternary.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tern/error.h"
#include "util/half.h"

namespace tern {
namespace {

// ---------------------------------------------------------------------------------------
// Shape and content checks. Every format is checked before anything is read or written,
// so a bad file gives a tern::Error, never an out-of-bounds access.

// Inlined, with a redundant r < 0 test, so GCC -O1 sees r >= 0 where r sizes a vector
// (otherwise it warns -Walloc-size-larger-than).
[[gnu::always_inline]] inline int64_t checked_mul(int64_t a, int64_t b, const char* format) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r < 0) fail("{}: bad shape {} x {}", format, a, b);
  return r;
}

void check_count(std::span<const int8_t> w, int64_t rows, int64_t cols, const char* format) {
  int64_t n = checked_mul(rows, cols, format);
  if (static_cast<uint64_t>(n) != w.size())
    fail("{}: {} weights given for a {} x {} matrix ({} expected)", format, w.size(), rows, cols, n);
}

void check_nbytes(size_t got, int64_t want, const char* format, int64_t rows, int64_t cols) {
  if (got != static_cast<uint64_t>(want))
    fail("{}: {} bytes for a {} x {} tensor, expected {}", format, got, rows, cols, want);
}

// Packers take int8 weights; anything but -1, 0, +1 would silently become another code.
void check_ternary_values(std::span<const int8_t> w, const char* format) {
  bool bad = false;
  for (int8_t v : w) bad |= static_cast<uint8_t>(v + 1) > 2;  // vectorizes; locate only on failure
  if (!bad) return;
  for (size_t i = 0; i < w.size(); ++i)
    if (w[i] < -1 || w[i] > 1) fail("{}: weight {} is {}, not -1, 0 or +1", format, i, w[i]);
}

void put_f16(uint8_t* p, float f) {  // GGUF is little-endian
  uint16_t h = f32_to_f16(f);
  p[0] = static_cast<uint8_t>(h & 0xff);
  p[1] = static_cast<uint8_t>(h >> 8);
}

float get_f16(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// ---------------------------------------------------------------------------------------
// 128-weight groups of 32 bytes: weight 32*g + j lives in byte j at a lane shift set by g.
// tern2 / I2_S put lane 0 in the high bits (7:6), TQ2_0 (each half of its 256 block) in
// the low bits (1:0). Code = w + 1.

enum class Lanes { kHighFirst, kLowFirst };

constexpr int lane_shift(Lanes order, int g) { return order == Lanes::kHighFirst ? 6 - 2 * g : 2 * g; }

// Encodes `count` (<= 128) weights; the rest of the group is zero weights (code 1).
void encode_group128(const int8_t* w, int64_t count, Lanes order, uint8_t* out) {
  int8_t padded[kTernBlock];
  if (count < kTernBlock) {
    std::memset(padded, 0, sizeof padded);
    std::memcpy(padded, w, static_cast<size_t>(count));
    w = padded;
  }
  uint8_t bytes[32] = {};
  for (int g = 0; g < 4; ++g) {
    const int shift = lane_shift(order, g);
    for (int j = 0; j < 32; ++j) bytes[j] |= static_cast<uint8_t>((w[32 * g + j] + 1) << shift);
  }
  std::memcpy(out, bytes, 32);
}

// Decodes 128 weights; returns false if any code is 3 (corrupt data). The local copies
// tell the compiler `in` and `w` do not alias, so the loops vectorize.
template <Lanes order>
bool decode_group128(const uint8_t* in, int8_t* w) {
  uint8_t bytes[32];
  std::memcpy(bytes, in, 32);
  int8_t out[kTernBlock];
  uint8_t bad = 0;
  // A 2-bit field holds code 3 iff both of its bits are set.
  for (int j = 0; j < 32; ++j) bad |= bytes[j] & (bytes[j] >> 1) & 0x55;
  for (int g = 0; g < 4; ++g) {
    const int shift = lane_shift(order, g);
    for (int j = 0; j < 32; ++j) out[32 * g + j] = static_cast<int8_t>(((bytes[j] >> shift) & 3) - 1);
  }
  std::memcpy(w, out, sizeof out);
  return bad == 0;
}

// ---------------------------------------------------------------------------------------
// TQ1_0 base-3 helpers (llama.cpp ggml/src/ggml-quants.c, quantize_row_tq1_0_ref and
// dequantize_row_tq1_0). A byte holds 5 trits t0..t4 (t = w + 1), t0 most significant:
// q = t0*81 + t1*27 + t2*9 + t3*3 + t4 in [0, 242], stored as ceil(q * 256 / 243). That
// maps q to a fixed-point fraction q/243 of 256, so multiplying the byte by 3^k (mod 256)
// drops trits t0..t(k-1) off the top, and (byte * 3) >> 8 then reads the leading trit.

constexpr uint8_t kPow3[6] = {1, 3, 9, 27, 81, 243};

uint8_t pack_trits(const int8_t* w, int stride, int count) {  // count 5, or 4 for qh
  int q = 0;
  for (int k = 0; k < 5; ++k) q = q * 3 + (k < count ? w[k * stride] + 1 : 0);  // qh: t4 = 0
  return static_cast<uint8_t>((q * 256 + 242) / 243);
}

inline int8_t unpack_trit(uint8_t b, int k) {
  const uint8_t shifted = static_cast<uint8_t>(b * kPow3[k]);  // wraps mod 256 on purpose
  return static_cast<int8_t>(((shifted * 3) >> 8) - 1);
}

constexpr int64_t kQK = 256;         // TQ1_0 / TQ2_0 block (QK_K)
constexpr int64_t kTq1Bytes = 54;    // qs[48] qh[4] d
constexpr int64_t kTq2Bytes = 66;    // qs[64] d

// Block layout, element e of 256:
//   qs[m],      m < 32: e = m + 32*k,        k = 0..4  (elements   0..159)
//   qs[32 + m], m < 16: e = 160 + m + 16*k,  k = 0..4  (elements 160..239)
//   qh[j],      j < 4:  e = 240 + j + 4*k,   k = 0..3  (elements 240..255), t4 = 0
// where k is the trit index (0 = most significant).
void encode_tq1_block(const int8_t* w, float scale, uint8_t* out) {
  for (int m = 0; m < 32; ++m) out[m] = pack_trits(w + m, 32, 5);
  for (int m = 0; m < 16; ++m) out[32 + m] = pack_trits(w + 160 + m, 16, 5);
  for (int j = 0; j < 4; ++j) out[48 + j] = pack_trits(w + 240 + j, 4, 4);
  put_f16(out + 52, scale);
}

void decode_tq1_block(const uint8_t* in, int8_t* w) {
  for (int k = 0; k < 5; ++k)
    for (int m = 0; m < 32; ++m) w[m + 32 * k] = unpack_trit(in[m], k);
  for (int k = 0; k < 5; ++k)
    for (int m = 0; m < 16; ++m) w[160 + m + 16 * k] = unpack_trit(in[32 + m], k);
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 4; ++j) w[240 + j + 4 * k] = unpack_trit(in[48 + j], k);
}

// Block count of a TQ1_0 / TQ2_0 tensor: 256-weight blocks along each row, so rows are whole
// blocks and the tensor is one run of blocks.
int64_t tq_blocks(int64_t rows, int64_t cols, const char* format) {
  if (cols % kQK != 0) fail("{}: row length {} is not a multiple of {}", format, cols, kQK);
  return checked_mul(rows, cols / kQK, format);
}

void fill_block_scales(std::span<const uint8_t> data, int64_t nblocks, int64_t block_bytes,
                       std::vector<float>* block_scales) {
  if (!block_scales) return;
  block_scales->resize(static_cast<size_t>(nblocks));
  for (int64_t b = 0; b < nblocks; ++b)
    (*block_scales)[b] = get_f16(data.data() + b * block_bytes + block_bytes - 2);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// tern2

int TernaryMatrix::get(int64_t r, int64_t c) const {
  // c may run into the row's zero padding (c < padded_cols), which reads as 0.
  if (r < 0 || r >= rows || c < 0 || c >= padded_cols())
    fail("tern2: element ({}, {}) outside a {} x {} matrix", r, c, rows, cols);
  const uint8_t byte = data[r * row_bytes + (c / kTernBlock) * 32 + c % 32];
  const int shift = lane_shift(Lanes::kHighFirst, static_cast<int>((c % kTernBlock) / 32));
  return ((byte >> shift) & 3) - 1;
}

TernaryMatrix make_ternary(std::span<const int8_t> w, int64_t rows, int64_t cols, float scale) {
  check_count(w, rows, cols, "tern2");
  check_ternary_values(w, "tern2");
  const int64_t groups = (cols + kTernBlock - 1) / kTernBlock;
  TernaryMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = groups * 32;
  m.scale = scale;
  auto buf = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(checked_mul(rows, m.row_bytes, "tern2")));
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* src = w.data() + r * cols;
    uint8_t* dst = buf->data() + r * m.row_bytes;
    for (int64_t g = 0; g < groups; ++g)
      encode_group128(src + g * kTernBlock, std::min(kTernBlock, cols - g * kTernBlock), Lanes::kHighFirst,
                      dst + g * 32);
  }
  m.data = buf->data();
  m.owner = std::move(buf);
  return m;
}

std::vector<int8_t> unpack_ternary(const TernaryMatrix& m) {
  const int64_t n = checked_mul(m.rows, m.cols, "tern2");
  if (m.row_bytes != (m.cols + kTernBlock - 1) / kTernBlock * 32)
    fail("tern2: row_bytes {} does not fit {} columns", m.row_bytes, m.cols);
  if (n > 0 && !m.data) fail("tern2: matrix has no data");
  std::vector<int8_t> out(static_cast<size_t>(n));
  const int64_t groups = m.row_bytes / 32;
  int8_t tmp[kTernBlock];
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      if (!decode_group128<Lanes::kHighFirst>(m.data + r * m.row_bytes + g * 32, tmp))
        fail("tern2: invalid code 3 in row {}", r);
      const int64_t count = std::min(kTernBlock, m.cols - g * kTernBlock);
      std::memcpy(out.data() + r * m.cols + g * kTernBlock, tmp, static_cast<size_t>(count));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Absmean ternarization, bit-compatible with transformers' WeightQuant:
//   s = 1.0 / x.abs().mean().clamp_(min=1e-5);  (x * s).round().clamp(-1, 1)
// in float32, except the mean is accumulated in double (then rounded to float).

std::vector<int8_t> ternarize_absmean(std::span<const float> w, float* scale_out) {
  double sum = 0.0;
  for (float v : w) sum += std::fabs(static_cast<double>(v));
  const double mean = w.empty() ? 0.0 : sum / static_cast<double>(w.size());
  if (!std::isfinite(mean)) fail("ternarize: weights contain NaN or infinity");
  const float m = std::max(static_cast<float>(mean), 1e-5f);
  const float s = 1.0f / m;  // float32 reciprocal, as torch computes it
  std::vector<int8_t> q(w.size());
  // clamp(round_half_even(x), -1, 1) equals (x > 0.5) - (x < -0.5) for finite x: |x| < 0.5
  // rounds to 0, |x| == 0.5 ties to even 0, and anything above rounds to >= 1 and clamps.
  // Same result as nearbyintf(w * s) + clamp, but it vectorizes.
  for (size_t i = 0; i < w.size(); ++i) {
    const float x = w[i] * s;
    q[i] = static_cast<int8_t>((x > 0.5f) - (x < -0.5f));
  }
  if (scale_out) *scale_out = m;
  return q;
}

// ---------------------------------------------------------------------------------------
// I2_S

uint64_t i2s_nbytes(int64_t n) {
  if (n < 0 || n % kTernBlock != 0) fail("I2_S: {} weights is not a multiple of {}", n, kTernBlock);
  return static_cast<uint64_t>(n / 4 + 32);
}

std::vector<uint8_t> pack_i2s(std::span<const int8_t> w, float scale) {
  const int64_t n = static_cast<int64_t>(w.size());
  std::vector<uint8_t> out(i2s_nbytes(n), 0);
  check_ternary_values(w, "I2_S");
  for (int64_t g = 0; g < n / kTernBlock; ++g)
    encode_group128(w.data() + g * kTernBlock, kTernBlock, Lanes::kHighFirst, out.data() + g * 32);
  std::memcpy(out.data() + n / 4, &scale, sizeof scale);  // then 28 zero bytes of padding
  return out;
}

std::vector<int8_t> unpack_i2s(std::span<const uint8_t> data, int64_t n, float* scale_out) {
  const uint64_t want = i2s_nbytes(n);
  if (data.size() != want) fail("I2_S: {} bytes for {} weights, expected {}", data.size(), n, want);
  std::vector<int8_t> out(static_cast<size_t>(n));
  for (int64_t g = 0; g < n / kTernBlock; ++g)
    if (!decode_group128<Lanes::kHighFirst>(data.data() + g * 32, out.data() + g * kTernBlock))
      fail("I2_S: invalid code 3 in block {} (weights {}..{})", g, g * kTernBlock, g * kTernBlock + 127);
  if (scale_out) std::memcpy(scale_out, data.data() + n / 4, sizeof(float));
  return out;
}

// ---------------------------------------------------------------------------------------
// TQ2_0: qs[64] = two 128-weight groups with lane 0 in the low bits, then fp16 d.

std::vector<uint8_t> pack_tq2_0(std::span<const int8_t> w, int64_t rows, int64_t cols, float scale) {
  const int64_t nblocks = tq_blocks(rows, cols, "TQ2_0");
  check_count(w, rows, cols, "TQ2_0");
  check_ternary_values(w, "TQ2_0");
  std::vector<uint8_t> out(static_cast<size_t>(checked_mul(nblocks, kTq2Bytes, "TQ2_0")));
  // Rows are whole blocks, so the matrix is one run of blocks.
  for (int64_t b = 0; b < nblocks; ++b) {
    const int8_t* src = w.data() + b * kQK;
    uint8_t* dst = out.data() + b * kTq2Bytes;
    encode_group128(src, kTernBlock, Lanes::kLowFirst, dst);
    encode_group128(src + kTernBlock, kTernBlock, Lanes::kLowFirst, dst + 32);
    put_f16(dst + 64, scale);
  }
  return out;
}

std::vector<int8_t> unpack_tq2_0(std::span<const uint8_t> data, int64_t rows, int64_t cols,
                                 std::vector<float>* block_scales) {
  const int64_t nblocks = tq_blocks(rows, cols, "TQ2_0");
  check_nbytes(data.size(), checked_mul(nblocks, kTq2Bytes, "TQ2_0"), "TQ2_0", rows, cols);
  std::vector<int8_t> out(static_cast<size_t>(nblocks * kQK));
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* src = data.data() + b * kTq2Bytes;
    int8_t* dst = out.data() + b * kQK;
    // llama.cpp would read code 3 as +2; a ternary engine cannot, so it is an error.
    if (!decode_group128<Lanes::kLowFirst>(src, dst) ||
        !decode_group128<Lanes::kLowFirst>(src + 32, dst + kTernBlock))
      fail("TQ2_0: invalid code 3 in block {} (row {})", b, b / (cols / kQK));
  }
  fill_block_scales(data, nblocks, kTq2Bytes, block_scales);
  return out;
}

// ---------------------------------------------------------------------------------------
// TQ1_0

std::vector<uint8_t> pack_tq1_0(std::span<const int8_t> w, int64_t rows, int64_t cols, float scale) {
  const int64_t nblocks = tq_blocks(rows, cols, "TQ1_0");
  check_count(w, rows, cols, "TQ1_0");
  check_ternary_values(w, "TQ1_0");
  std::vector<uint8_t> out(static_cast<size_t>(checked_mul(nblocks, kTq1Bytes, "TQ1_0")));
  for (int64_t b = 0; b < nblocks; ++b) encode_tq1_block(w.data() + b * kQK, scale, out.data() + b * kTq1Bytes);
  return out;
}

std::vector<int8_t> unpack_tq1_0(std::span<const uint8_t> data, int64_t rows, int64_t cols,
                                 std::vector<float>* block_scales) {
  const int64_t nblocks = tq_blocks(rows, cols, "TQ1_0");
  check_nbytes(data.size(), checked_mul(nblocks, kTq1Bytes, "TQ1_0"), "TQ1_0", rows, cols);
  std::vector<int8_t> out(static_cast<size_t>(nblocks * kQK));
  // Every byte decodes to valid trits (the decoder's output is 0..2 by construction), so
  // there is nothing to reject; non-canonical bytes read exactly as llama.cpp reads them.
  for (int64_t b = 0; b < nblocks; ++b) decode_tq1_block(data.data() + b * kTq1Bytes, out.data() + b * kQK);
  fill_block_scales(data, nblocks, kTq1Bytes, block_scales);
  return out;
}

// ---------------------------------------------------------------------------------------
// HF packed (transformers integrations/bitnet.py pack_weights / unpack_weights): packed
// row count R = ceil(rows / 4); unpacked row r is packed row r % R at bits 2*(r / R).
// Slots past the last row stay 0 when packing and are ignored when unpacking.

std::vector<uint8_t> pack_hf(std::span<const int8_t> w, int64_t rows, int64_t cols) {
  check_count(w, rows, cols, "HF packed");
  check_ternary_values(w, "HF packed");
  const int64_t packed_rows = (rows + 3) / 4;
  std::vector<uint8_t> out(static_cast<size_t>(packed_rows * cols), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* src = w.data() + r * cols;
    uint8_t* dst = out.data() + (r % packed_rows) * cols;
    const int shift = static_cast<int>(2 * (r / packed_rows));
    for (int64_t c = 0; c < cols; ++c) dst[c] |= static_cast<uint8_t>((src[c] + 1) << shift);
  }
  return out;
}

std::vector<int8_t> unpack_hf(std::span<const uint8_t> data, int64_t rows, int64_t cols) {
  const int64_t n = checked_mul(rows, cols, "HF packed");
  const int64_t packed_rows = (rows + 3) / 4;
  check_nbytes(data.size(), packed_rows * cols, "HF packed", rows, cols);
  std::vector<int8_t> out(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = data.data() + (r % packed_rows) * cols;
    int8_t* dst = out.data() + r * cols;
    const int shift = static_cast<int>(2 * (r / packed_rows));
    uint8_t bad = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t code = (src[c] >> shift) & 3;
      bad |= code == 3;
      dst[c] = static_cast<int8_t>(code - 1);
    }
    if (bad) fail("HF packed: invalid code 3 in row {}", r);
  }
  return out;
}

// ---------------------------------------------------------------------------------------

float common_block_scale(std::span<const float> block_scales, std::span<const int8_t> w, int64_t block,
                         const std::string& what) {
  if (block <= 0 || w.size() != block_scales.size() * static_cast<uint64_t>(block))
    fail("{}: {} block scales do not cover {} weights in blocks of {}", what, block_scales.size(), w.size(),
         block);
  // All-zero blocks carry no information (llama.cpp writes d = 0 for them), so they are
  // skipped. The first block with a non-zero weight sets the scale; all others must match
  // it exactly, since they were written from one fp16 value.
  int64_t first = -1;
  for (size_t b = 0; b < block_scales.size(); ++b) {
    const int8_t* blk = w.data() + b * static_cast<size_t>(block);
    if (std::all_of(blk, blk + block, [](int8_t v) { return v == 0; })) continue;
    if (first < 0) {
      first = static_cast<int64_t>(b);
    } else if (block_scales[b] != block_scales[first]) {
      fail("{}: blocks have different scales ({} in block {}, {} in block {}); tern needs one scale per tensor",
           what, block_scales[first], first, block_scales[b], b);
    }
  }
  // A tensor of only zero weights contributes nothing whatever its scale; 1.0 keeps later
  // arithmetic (including a divide) finite.
  if (first < 0) return 1.0f;
  if (!std::isfinite(block_scales[first])) fail("{}: scale {} is not finite", what, block_scales[first]);
  return block_scales[first];
}

}  // namespace tern
