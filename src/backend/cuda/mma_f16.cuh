// F16 tensor-core building blocks (flash_attention_bwd.cu): mma.sync.m16n8k16 with float32
// sums, ldmatrix fragment loads from shared memory, and a float pair packed as half2.
// Fragment layouts (PTX ISA, lane = 4 g + t; each register holds two consecutive k or n):
// A (16 x 16, row-major): a0 (g, 2t..), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..);
// B (16 x 8, k x n): b0 (k 2t.., n g), b1 (k 2t + 8.., n g);
// C (16 x 8): c0, c1 (g, 2t..), c2, c3 (g + 8, 2t..).
// So the accumulators of two adjacent 8-column tiles are, packed pairwise, exactly the A
// fragment of the 16 columns they cover: P and dS go from one product into the next with
// no shuffle.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace tern::cuda {

// d += a b.
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 matrices of 16-bit values; lanes 8i .. 8i + 7 give the row addresses of
// matrix i, register i receives it (row g, columns 2t, 2t + 1; with trans: rows 2t, 2t + 1
// of column g).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// (lo, hi) rounded to F16, lo in the low half (the lower column / k index).
__device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The A fragment of a 16 x 16 block from the accumulators of its two 8-column halves.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack_f16(lo[0], lo[1]), a[1] = pack_f16(lo[2], lo[3]), a[2] = pack_f16(hi[0], hi[1]), a[3] = pack_f16(hi[2], hi[3]);
}

}  // namespace tern::cuda
