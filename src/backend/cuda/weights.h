// Device memory ownership for the CUDA backend and the ternary weight upload
// (tern2 on the host -> tern2-mma on the device, see kernels.h).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "backend/cuda/kernels.h"
#include "model/ternary.h"

namespace tern::cuda {

// cudaMalloc'ed bytes, freed on destruction.
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t bytes);
  ~DevBuf();
  DevBuf(DevBuf&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DevBuf& operator=(DevBuf&& o) noexcept;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;

  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Uploads host data into a new device buffer (synchronously).
DevBuf upload_bytes(const void* src, size_t bytes);
template <class T>
DevBuf upload_vec(const std::vector<T>& v) { return upload_bytes(v.data(), v.size() * sizeof(T)); }

// One or more ternary matrices with the same columns as one tern2-mma matrix.
struct DevTernary {
  DevBuf data, meta;
  TernDev view;
};

// parts are concatenated tile by tile (part p's rows go to output rows out_offsets[p]+r),
// or, with interleave (exactly two parts of equal rows: gate and up), alternate
// tiles gate 0, up 0, gate 1, up 1, ... Throws tern::Error if the parts' columns differ.
DevTernary upload_ternary(const std::vector<const TernaryMatrix*>& parts, const std::vector<int>& out_offsets,
                          bool interleave, cudaStream_t st);

// The ternary values of w (-1, 0, 1, exact in F16) as a dense row-major F16 [rows][cols]
// matrix, for the training backward dx = scale * dy . Wq (split_gemm type 1).
DevBuf upload_ternary_f16(const TernaryMatrix& w);
// The same into dst (device, [w.rows][w.cols] F16): the packed rows are copied over and
// unpacked on the GPU.
void upload_ternary_f16_into(const TernaryMatrix& w, void* dst, cudaStream_t st);

}  // namespace tern::cuda
