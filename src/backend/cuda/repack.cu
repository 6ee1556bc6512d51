// tern2 -> tern2-mma repack (layout described in kernels.h). Runs once per matrix at
// engine construction. CPU reference: TernaryMatrix::get / cpu::ternary_dot's indexing.
#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace tern::cuda {

namespace {

__global__ void repack_kernel(const uint32_t* __restrict__ src, int rows, int row_words, int ntiles, int nblk,
                              uint4* __restrict__ dst, int tile_base, int tile_step) {
  const int64_t total = static_cast<int64_t>(ntiles) * nblk * 32;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(idx & 31);
    const int b = static_cast<int>((idx >> 5) % nblk);
    const int tile = static_cast<int>(idx / (32 * static_cast<int64_t>(nblk)));
    const int g = lane >> 2, t = lane & 3;
    const int ra = tile * 16 + g, rb = ra + 8;
    // Rows past the end hold code 1 (weight 0) everywhere: their dot is exactly 0.
    auto word = [&](int r, int w) -> uint32_t {
      return r < rows ? src[static_cast<int64_t>(r) * row_words + b * 8 + w] : 0x55555555u;
    };
    dst[(static_cast<int64_t>(tile_base + tile * tile_step) * nblk + b) * 32 + lane] =
        make_uint4(word(ra, t), word(rb, t), word(ra, 4 + t), word(rb, 4 + t));
  }
}

}  // namespace

void launch_repack(const uint32_t* src, int rows, int row_words, uint4* dst, int tile_base, int tile_step, cudaStream_t st) {
  const int ntiles = (rows + 15) / 16, nblk = row_words / 8;
  const int64_t total = static_cast<int64_t>(ntiles) * nblk * 32;
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 4096));
  if (blocks == 0) return;
  repack_kernel<<<blocks, 256, 0, st>>>(src, rows, row_words, ntiles, nblk, dst, tile_base, tile_step);
  TERN_CUDA_LAUNCHED("repack_kernel");
}

}  // namespace tern::cuda
