// Device buffers and the ternary weight upload (repack on the GPU, repack.cu).
#include <algorithm>
#include <string>

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

DevBuf upload_ternary_f16(const TernaryMatrix& w) {
  constexpr uint16_t kF16[3] = {0xBC00u, 0x0000u, 0x3C00u};  // -1, 0, +1
  std::vector<uint16_t> h(static_cast<size_t>(w.rows) * w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t c = 0; c < w.cols; ++c) h[r * w.cols + c] = kF16[w.get(r, c) + 1];
  }
  return upload_vec(h);
}

}  // namespace tern::cuda
