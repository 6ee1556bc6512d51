// Ternary weight formats and the in-memory layout the engines use.
//
// All packers/unpackers work on a dense int8 matrix W[rows][cols] with values in
// {-1, 0, +1} (row-major, rows = output features, cols = input features) and one
// float scale m (the per-tensor absmean), so that the real weight is W * m.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace tern {

// The engines' layout ("tern2"): row-major, every row padded with zero weights to a
// multiple of 128, each 128-weight block stored as 32 bytes where byte j holds
// weights j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 with code = w + 1.
// This is exactly I2_S's block layout, so an I2_S tensor whose rows are a multiple of
// 128 long is used straight from the mmapped file. The layout is also what AVX2 wants:
// one 32-byte load, four shift+mask steps, four runs of 32 consecutive activations.
struct TernaryMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;  // padded_cols / 4
  float scale = 1.0f;     // multiply: y = (sum Wq * xq) / act_scale * scale
  const uint8_t* data = nullptr;
  std::shared_ptr<const void> owner;  // keeps `data` alive (vector or mapping)

  int64_t padded_cols() const { return row_bytes * 4; }
  int get(int64_t r, int64_t c) const;  // -1, 0 or +1; c < padded_cols() (padding reads 0)
};

constexpr int64_t kTernBlock = 128;

// Dense int8 <-> engine layout.
TernaryMatrix make_ternary(std::span<const int8_t> w, int64_t rows, int64_t cols, float scale);
std::vector<int8_t> unpack_ternary(const TernaryMatrix& m);

// Absmean ternarization (BitNet b1.58): m = max(mean|W|, 1e-5), Wq = clamp(round(W/m), -1, 1),
// round half to even, mean accumulated in double. Returns Wq, writes m.
std::vector<int8_t> ternarize_absmean(std::span<const float> w, float* scale_out);

// --- I2_S (bitnet.cpp, ggml type 36) ---
// The [rows, cols] matrix flattened row-major, 128-weight blocks of 32 bytes (layout
// above, n % 128 == 0 over the whole tensor), then one float32 scale and 28 bytes of
// padding. Size: n/4 + 32.
std::vector<uint8_t> pack_i2s(std::span<const int8_t> w, float scale);
std::vector<int8_t> unpack_i2s(std::span<const uint8_t> data, int64_t n, float* scale_out);
uint64_t i2s_nbytes(int64_t n);

// --- TQ2_0 (llama.cpp, ggml type 35) ---
// Per row, 256-weight blocks of 66 bytes: qs[64] then fp16 d. Element e of a block is
// in byte 32*(e/128) + e%32 at bit shift 2*((e%128)/32); code = w + 1. cols % 256 == 0.
// Packing writes d = scale for every block. Unpacking returns the per-block d values.
std::vector<uint8_t> pack_tq2_0(std::span<const int8_t> w, int64_t rows, int64_t cols, float scale);
std::vector<int8_t> unpack_tq2_0(std::span<const uint8_t> data, int64_t rows, int64_t cols,
                                 std::vector<float>* block_scales);

// --- TQ1_0 (llama.cpp, ggml type 34) ---
// Per row, 256-weight blocks of 54 bytes: qs[48], qh[4], fp16 d, base-3 packed as in
// llama.cpp's quantize_row_tq1_0_ref / dequantize_row_tq1_0 (ggml/src/ggml-quants.c).
// A byte holds trits t0..t4 (t = w + 1, t0 most significant) as ceil(q * 256 / 243),
// q = sum t_k * 3^(4-k); trit k decodes as ((uint8_t)(byte * 3^k) * 3) >> 8.
// qs[m] (m < 32) holds elements m + 32k (k = 0..4); qs[32 + m] (m < 16) holds
// 160 + m + 16k; qh[j] (j < 4) holds 240 + j + 4k (k = 0..3, t4 = 0). cols % 256 == 0.
// Packing writes d = scale for every block. Unpacking returns the per-block d values.
std::vector<uint8_t> pack_tq1_0(std::span<const int8_t> w, int64_t rows, int64_t cols, float scale);
std::vector<int8_t> unpack_tq1_0(std::span<const uint8_t> data, int64_t rows, int64_t cols,
                                 std::vector<float>* block_scales);

// --- HF packed (transformers' BitNet integration) ---
// uint8 [R, cols] with R = ceil(rows/4); unpacked row r is packed row r % R, bits 2*(r / R),
// code = w + 1 (transformers' pack_weights / unpack_weights). Unused slots pack as 0.
std::vector<uint8_t> pack_hf(std::span<const int8_t> w, int64_t rows, int64_t cols);
std::vector<int8_t> unpack_hf(std::span<const uint8_t> data, int64_t rows, int64_t cols);

// Collapses per-block scales of a ternary tensor to one per-tensor scale: every block
// holding a non-zero weight must share one scale (llama.cpp writes d = the tensor's
// absmean for BitNet models). Throws tern::Error naming `what` otherwise.
float common_block_scale(std::span<const float> block_scales, std::span<const int8_t> w,
                         int64_t block, const std::string& what);

}  // namespace tern
