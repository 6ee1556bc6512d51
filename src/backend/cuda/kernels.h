// Host-side launch API of the CUDA kernels (one .cu file per concern). The engine
// (cuda_engine.cu) and the kernel tests (testing.cu) call these; each launcher checks
// the launch and throws tern::Error on failure.
//
// Ternary weight layout on the GPU ("tern2-mma", made by repack.cu from tern2):
// rows are grouped in tiles of 16 (the last padded with zero weights), K in blocks of
// 128. Tile T, block b is 512 contiguous bytes: lane L (g = L/4, t = L%4) owns 16 bytes
// = four tern2 words {row 16T+g bytes 4t..4t+3, row 16T+g+8 bytes 4t.., row 16T+g bytes
// 16+4t.., row 16T+g+8 bytes 16+4t..} of block b. Shifting a word right by 6-2s and
// masking with 0x03030303 gives the codes (w+1) of 4 consecutive weights at k =
// 128b + 32s + byte: exactly the A fragment of mma.m16n8k32 for k-step s, and for the
// M=1 GEMV each lane's 16 bytes need only 8 activation words (which are stored
// permuted so that they are contiguous, see perm_word in norm_quant.cuh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace tern::cuda {

// Per 16-row tile: the matrix scale, where its rows go in the output, how many are real.
struct TileMeta {
  float scale;
  int32_t out_row0;
  int32_t valid;
  int32_t pad;
};

// One or more ternary matrices with the same K, concatenated tile by tile.
struct TernDev {
  const uint4* data = nullptr;
  const TileMeta* meta = nullptr;
  int ntiles = 0;
  int nblk = 0;  // 128-weight blocks per row (padded K / 128)
  int kwords() const { return nblk * 32; }
};

enum EpiMode : int {
  kEpiStore = 0,   // out[out_row0 + r] = y
  kEpiAdd = 1,     // out[out_row0 + r] += y (residual)
  kEpiGateUp = 2,  // GEMV only: tiles (2j, 2j+1) = (gate j, up j); out[16j + r] = act(g) * u
  kEpiRaw = 3,     // raw[out_row0 + r] = exact int32 dot (tests)
};

// ---- repack.cu ----
// src: rows x row_words tern2 words (row_words = padded_cols / 16) on the device.
// Writes its tiles to dst tiles tile_base, tile_base + tile_step, ...
void launch_repack(const uint32_t* src, int rows, int row_words, uint4* dst, int tile_base, int tile_step, cudaStream_t st);

// ---- norm_quant.cu ----
// Per row m < M: RMSNorm(x_m) * w then per-token absmax int8 (cpu::rmsnorm +
// cpu::quantize_row_i8). act is [M][kwords] in the permuted layout, zero padded.
void launch_norm_quant(const float* x, int ldx, const float* w, int n, float eps, int M, uint32_t* act, int kwords,
                       float* s, int32_t* qsum, cudaStream_t st);
// Same, with the input h = act(gate) * up computed on the fly from gu = [M][2F]
// (gate in columns 0..F-1, up in F..2F-1).
void launch_norm_quant_gated(const float* gu, int F, const float* w, float eps, int act_kind, int M, uint32_t* act,
                             int kwords, float* s, int32_t* qsum, cudaStream_t st);

// ---- ternary_gemv.cu (M = 1, decode) ----
struct GemvArgs {
  TernDev w;
  const float* in = nullptr;     // float input of length n, RMSNorm'ed and quantized per block
  const float* normw = nullptr;  // norm weight (length n)
  int n = 0;
  float eps = 1e-5f;
  const uint32_t* preq = nullptr;  // tests: pre-quantized permuted activations instead of in/normw
  float pre_s = 1.0f;
  int32_t pre_qsum = 0;
  float* out = nullptr;
  int32_t* raw = nullptr;
  int act = 0;  // kEpiGateUp activation: 0 relu2, 1 silu, 2 gelu
};
void launch_gemv(int epi, const GemvArgs& a, cudaStream_t st, bool pdl = false);

// ---- ternary_gemm.cu (M > 1, prefill; int8 tensor cores) ----
struct GemmArgs {
  TernDev w;
  const uint32_t* act = nullptr;  // [M][kwords] permuted int8 activations
  const float* s = nullptr;       // [M] activation scales
  const int32_t* qsum = nullptr;  // [M] sums of the int8 activations
  int M = 0;
  float* out = nullptr;  // [M][ldo]
  int ldo = 0;
  int32_t* raw = nullptr;  // kEpiRaw: [M][ldo]
};
void launch_gemm(int epi, const GemmArgs& a, cudaStream_t st);

// ---- attention.cu ----
struct AttnShape {
  int n_heads = 0, n_kv = 0, hd = 0, qd = 0, kv_dim = 0;
  int gb = 1;  // query heads per block (all of one KV head): power of two <= 8 dividing n_heads/n_kv
};
int attn_heads_per_block(int n_heads, int n_kv);
bool attn_head_dim_supported(int hd);  // 32, 64, 128, 256
// RoPE table [npos][hd/2] of (cos, sin) pairs, computed on the host exactly as
// cpu::rope_neox does (angle = float(pos) * inv_freq[i], std::cos / std::sin).
std::vector<float> rope_table(float theta, int hd, int npos);
// Decode, one token at position *d_pos: ropes q and the new k (raw from qkv = [qd + 2 kv_dim]),
// writes k/v to the cache at *d_pos, attends over 0..*d_pos split in up to `splits` parts
// of >= 32 positions (flash-decoding; the last block of each head group merges). out = [qd].
// partial: (n_heads / gb) * splits * gb * (hd + 2) floats; counters: n_heads / gb ints, zeroed once.
void launch_attn_decode(const AttnShape& sh, const float* qkv, float* kc, float* vc, const float* rope, const int32_t* d_pos,
                        int splits, float* partial, int32_t* counters, float* out, cudaStream_t st, bool pdl = false);
// Prefill: rope q in place and k, write k/v of tokens 0..M-1 (positions pos0..) to the cache.
void launch_rope_kv(const AttnShape& sh, float* qkv, int ldq, int M, int pos0, const float* rope, float* kc, float* vc,
                    cudaStream_t st);
// Prefill causal attention of M query tokens (positions pos0..pos0+M-1) over the cache.
void launch_attn_prefill(const AttnShape& sh, const float* q, int ldq, const float* kc, const float* vc, int M, int pos0,
                         float* out, int ldo, cudaStream_t st);

// ---- lm_head.cu ----
// Float type codes: 0 F32, 1 F16, 2 BF16.
// x[m][c] = embedding[tokens[m]][c] as float.
void launch_embed(const void* emb, int type, int H, const int32_t* tokens, int M, float* x, cudaStream_t st);
// logits[m][v] = dot(embedding[v], RMSNorm(x_m) * normw) for m < ntok (x rows of length H).
void launch_lm_head(const void* emb, int type, int V, int H, const float* x, int ntok, const float* normw, float eps,
                    float* logits, cudaStream_t st, bool pdl = false);

}  // namespace tern::cuda
