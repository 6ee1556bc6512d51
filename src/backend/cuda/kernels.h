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
#include <cstring>
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
  // LoRA (lora.cu): y[row] += lora_B[row] . lora_t before the epilogue's store/add/gating.
  const float* lora_B = nullptr;
  const float* lora_t = nullptr;
  int lora_R = 0;
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
  // Split-K scratch (small M; null: no split): gemm_split_part_ints() ints, and
  // kMaxSplitPositions counters that start at 0 (the kernel leaves them at 0).
  int32_t* split_part = nullptr;
  int32_t* split_count = nullptr;
};
constexpr int kMaxSplits = 4, kMaxSplitPositions = 4096;
// K slices launch_gemm uses for these weights and M (1 = no split).
int gemm_k_splits(const TernDev& w, int M);
// Ints of split_part enough for any launch: every split launch has <= 2 * SMs + positions blocks.
inline size_t gemm_split_part_ints(int sms) { return static_cast<size_t>(4 * sms + 64) * 32 * 256; }
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
// Which position and which sequence's cache each of M rows belongs to: a prompt of one
// sequence (pos = pos0 + i, sequence 0 of the cache pointers passed) or one token of
// each of M sequences (batched decode: pos[i], seq[i], device arrays).
struct RowMap {
  int pos0 = 0;
  const int32_t* pos = nullptr;
  const int32_t* seq = nullptr;
  int64_t seq_stride = 0;  // floats between two sequences' caches
  __host__ __device__ int pos_of(int i) const { return pos != nullptr ? pos[i] : pos0 + i; }
  __host__ __device__ int64_t cache_offset(int i) const { return seq != nullptr ? seq[i] * seq_stride : 0; }
};
// Decode, one token at position *d_pos of sequence *d_seq (null: 0; caches seq_stride floats apart): ropes q and the new k (raw from qkv = [qd + 2 kv_dim]),
// writes k/v to the cache at *d_pos, attends over 0..*d_pos split in up to `splits` parts
// of >= 32 positions (flash-decoding; the last block of each head group merges). out = [qd].
// partial: (n_heads / gb) * splits * gb * (hd + 2) floats; counters: n_heads / gb ints, zeroed once.
void launch_attn_decode(const AttnShape& sh, const float* qkv, float* kc, float* vc, const float* rope, const int32_t* d_pos,
                        const int32_t* d_seq, int64_t seq_stride, int splits, float* partial, int32_t* counters, float* out,
                        cudaStream_t st, bool pdl = false);
// Prefill / batched decode: rope q in place and k, write k/v of rows 0..M-1 to the cache.
void launch_rope_kv(const AttnShape& sh, float* qkv, int ldq, int M, const RowMap& rows, const float* rope, float* kc, float* vc,
                    cudaStream_t st);
// Causal attention of M query rows, row i over its cache positions 0..rows.pos_of(i).
void launch_attn_prefill(const AttnShape& sh, const float* q, int ldq, const float* kc, const float* vc, int M,
                         const RowMap& rows, float* out, int ldo, cudaStream_t st);

// ---- lora.cu: LoRA adapters at inference (train/lora_adapter.h) ----
// One input group of linears ({q,k,v}, {o}, {gate,up}, {down}) with every adapter of its
// projections stacked: A [R][n], B [out][R] dense (zeros outside a row's own projection,
// each adapter's scale folded in), out rows in the group's output order.
struct LoraDev {
  const float* A = nullptr;
  const float* B = nullptr;
  int R = 0, n = 0, out = 0;
};
// t[m][j] = A[j] . (RMSNorm(input_m) * normw), input rows of length n at stride ldx, or
// with gated the FFN input act(gate) * up from rows [gate | up] of length 2n.
void launch_lora_a(const LoraDev& l, const float* x, int ldx, bool gated, int act_kind, const float* normw, float eps, int M,
                   float* t, cudaStream_t st, bool pdl = false);
// out[m][o] += B[o] . t[m] for m < M, o < out (row stride ldo).
void launch_lora_b(const LoraDev& l, const float* t, int M, float* out, int ldo, cudaStream_t st, bool pdl = false);

// ---- greedy argmax (lm_head.cu, head_gemm.cu) ----
// A device-side argmax result packs (order-preserving bits of the logit) << 32 |
// (0xffffffff - index), so the unsigned maximum (atomicMax) is the largest logit and,
// among equal logits, the lowest index (tern::argmax). NaN maps below every number.
// 0 = no candidate yet (the embedding kernel resets it at the start of a step).
__host__ __device__ inline unsigned long long argmax_key(float v, int idx) {
  uint32_t u;
  if (v == 0.0f) v = 0.0f;  // -0 == +0
  memcpy(&u, &v, 4);
  const uint32_t ord = v != v ? 0u : (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(ord) << 32) | (0xffffffffu - static_cast<uint32_t>(idx));
}
inline int32_t argmax_from_key(unsigned long long k) {
  return k == 0 ? 0 : static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(k & 0xffffffffu));
}

// ---- lm_head.cu ----
// Float type codes: 0 F32, 1 F16, 2 BF16.
// x[m][c] = embedding[tokens[m]][c] as float; best[m] = 0 when best is non-null.
void launch_embed(const void* emb, int type, int H, const int32_t* tokens, int M, float* x, cudaStream_t st,
                  unsigned long long* best = nullptr);
// logits[m][v] = dot(embedding[v], RMSNorm(x_m) * normw) for m < ntok (x rows of length H),
// on CUDA cores in passes of <= 4 tokens (decode: one). best[m]: fused argmax (atomicMax
// of argmax_key; must start at 0) when non-null.
void launch_lm_head(const void* emb, int type, int V, int H, const float* x, int ntok, const float* normw, float eps,
                    float* logits, cudaStream_t st, bool pdl = false, unsigned long long* best = nullptr);
// The int8 head (model/head_i8.h): q [V][H] int8, scale [V]; x quantized per token like a
// ternary linear input. One token (decode), fused argmax as above.
void launch_lm_head_i8(const int8_t* q, const float* scale, int V, int H, const float* x, const float* normw, float eps,
                       float* logits, cudaStream_t st, bool pdl = false, unsigned long long* best = nullptr);

// ---- head_gemm.cu: the LM head for M > 1 rows (batched decode, prefill logits) ----
// On cuBLAS tensor cores, exact to ~1e-6: the normed input is split into 2 (F16 head) or
// 3 (BF16 head) 16-bit terms whose sum is the float32 value, all terms in ONE GEMM
// (the head is read once), then summed per logit. F32 heads use SGEMM, the int8 head an
// int8 GEMM with the same epilogue as launch_lm_head_i8.
struct HeadWeights {
  const void* emb = nullptr;  // tied embedding [V][H] in its stored type
  int type = 1;               // 0 F32, 1 F16, 2 BF16
  int V = 0, H = 0;
  const int8_t* q8 = nullptr;  // int8 head (null: exact head)
  const float* scale8 = nullptr;
};
class HeadGemm {
 public:
  // max_rows: rows per GEMM (longer inputs run in chunks; each chunk reads the head once).
  // fast: fewer split terms (see head_gemm.cu; the training loss with --precision tf32).
  // argmax false: run() is never given `best` (the training loss), so with one term the GEMM
  // writes the logits itself and no accumulator [max_rows][V] is allocated.
  explicit HeadGemm(const HeadWeights& w, cudaStream_t st, int max_rows = 64, bool fast = false, bool argmax = true);
  ~HeadGemm();
  HeadGemm(const HeadGemm&) = delete;
  HeadGemm& operator=(const HeadGemm&) = delete;
  // logits [M][V] (device) for x [M][H]; best[m] = argmax_key of row m's maximum when non-null
  // (reset here: a memset node, fine inside a graph since no PDL edge crosses it).
  void run(const float* x, int M, const float* normw, float eps, float* logits, unsigned long long* best, cudaStream_t st);

 private:
  HeadWeights w_;
  void* handle_ = nullptr;  // cublasHandle_t
  void* workspace_ = nullptr;
  void* xs_ = nullptr;       // split / quantized inputs
  float* xscale_ = nullptr;  // int8: per-row activation scales
  void* acc_ = nullptr;      // GEMM output [terms * max_rows_][V] (float or int32)
  int max_rows_ = 64;
  int terms_ = 1;
};

}  // namespace tern::cuda
