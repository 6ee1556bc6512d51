// Device buffers and the ternary weight upload (repack on the GPU, repack.cu).
#include <algorithm>
#include <string>

#include <cuda_fp16.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/weights.h"

namespace tern::cuda {

DevBuf::DevBuf(size_t bytes) : n_(bytes) {
  if (bytes > 0) TERN_CUDA_CHECK(cudaMalloc(&p_, bytes));
}

DevBuf::~DevBuf() {
  if (p_ != nullptr) cudaFree(p_);
}

DevBuf& DevBuf::operator=(DevBuf&& o) noexcept {
  if (this != &o) {
    if (p_ != nullptr) cudaFree(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

DevBuf upload_bytes(const void* src, size_t bytes) {
  DevBuf b(bytes);
  if (bytes > 0) TERN_CUDA_CHECK(cudaMemcpy(b.as<void>(), src, bytes, cudaMemcpyHostToDevice));
  return b;
}

DevTernary upload_ternary(const std::vector<const TernaryMatrix*>& parts, const std::vector<int>& out_offsets,
                          bool interleave, cudaStream_t st) {
  if (parts.empty() || parts.size() != out_offsets.size()) throw_error("upload_ternary: bad arguments");
  const int64_t row_bytes = parts[0]->row_bytes;
  if (row_bytes <= 0 || row_bytes % 32 != 0) throw_error("upload_ternary: row bytes " + std::to_string(row_bytes) + " not a multiple of 32");
  for (const TernaryMatrix* m : parts) {
    if (m->row_bytes != row_bytes)
      throw_error("upload_ternary: matrices of one fused group have different widths (" + std::to_string(m->cols) + " vs " +
                  std::to_string(parts[0]->cols) + ")");
  }
  if (interleave && (parts.size() != 2 || parts[0]->rows != parts[1]->rows))
    throw_error("upload_ternary: interleaving needs two matrices of equal rows");
  const int nblk = static_cast<int>(row_bytes / 32);
  std::vector<int> tiles(parts.size()), base(parts.size());
  int ntiles = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    tiles[p] = static_cast<int>((parts[p]->rows + 15) / 16);
    base[p] = interleave ? static_cast<int>(p) : ntiles;
    ntiles += tiles[p];
  }
  std::vector<TileMeta> meta(ntiles);
  for (size_t p = 0; p < parts.size(); ++p) {
    const int step = interleave ? 2 : 1;
    for (int i = 0; i < tiles[p]; ++i) {
      TileMeta& m = meta[base[p] + i * step];
      m.scale = parts[p]->scale;
      m.out_row0 = out_offsets[p] + i * 16;
      m.valid = static_cast<int>(std::min<int64_t>(16, parts[p]->rows - i * 16));
      m.pad = 0;
    }
  }
  DevTernary d;
  d.data = DevBuf(static_cast<size_t>(ntiles) * nblk * 512);
  d.meta = upload_vec(meta);
  size_t biggest = 0;
  for (const TernaryMatrix* m : parts) biggest = std::max(biggest, static_cast<size_t>(m->rows * row_bytes));
  DevBuf staging(biggest);
  for (size_t p = 0; p < parts.size(); ++p) {
    const size_t bytes = static_cast<size_t>(parts[p]->rows * row_bytes);
    if (bytes == 0) continue;
    TERN_CUDA_CHECK(cudaMemcpyAsync(staging.as<void>(), parts[p]->data, bytes, cudaMemcpyHostToDevice, st));
    launch_repack(staging.as<uint32_t>(), static_cast<int>(parts[p]->rows), static_cast<int>(row_bytes / 4),
                  d.data.as<uint4>(), base[p], interleave ? 2 : 1, st);
  }
  // The staging buffer is freed on return: finish the repacks first.
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));
  d.view.data = d.data.as<const uint4>();
  d.view.meta = d.meta.as<const TileMeta>();
  d.view.ntiles = ntiles;
  d.view.nblk = nblk;
  return d;
}

int sm_count() {
  static const int n = [] {
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      return 132;
    }
    return sms;
  }();
  return n;
}

namespace {

// tern2 (model/ternary.h): per 128-weight block 32 bytes; byte j holds the codes (w + 1)
// of columns j, j+32, j+64, j+96 in bits 7-6, 5-4, 3-2, 1-0 (cpu::ternary_dot).
__global__ void unpack_f16_kernel(const uint8_t* __restrict__ src, int64_t row_bytes, int64_t rows, int64_t cols, __half* __restrict__ dst) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  const int64_t r = idx / cols, c = idx % cols, b = c / 128, k = c % 128;
  const int byte = src[r * row_bytes + b * 32 + (k & 31)];
  const int code = (byte >> (6 - 2 * (k >> 5))) & 3;
  dst[idx] = __int2half_rn(code - 1);
}

}  // namespace

void upload_ternary_f16_into(const TernaryMatrix& w, void* dst, cudaStream_t st) {
  const size_t bytes = static_cast<size_t>(w.rows * w.row_bytes);
  if (bytes == 0) return;
  DevBuf staging(bytes);
  TERN_CUDA_CHECK(cudaMemcpyAsync(staging.as<void>(), w.data, bytes, cudaMemcpyHostToDevice, st));
  const int64_t n = w.rows * w.cols;
  unpack_f16_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, st>>>(staging.as<uint8_t>(), w.row_bytes, w.rows, w.cols,
                                                                            static_cast<__half*>(dst));
  TERN_CUDA_LAUNCHED("unpack_f16_kernel");
  TERN_CUDA_CHECK(cudaStreamSynchronize(st));  // staging is freed on return
}

DevBuf upload_ternary_f16(const TernaryMatrix& w) {
  DevBuf d(static_cast<size_t>(w.rows) * w.cols * 2);
  upload_ternary_f16_into(w, d.as<void>(), nullptr);
  return d;
}

}  // namespace tern::cuda
