// Minimal NumPy .npy (format 1.0) for float32 C-order arrays: how `tern logits`
// hands results to Python and how tests read fixtures back.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tern {

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// Reads '<f4' C-order arrays; throws tern::Error naming the file otherwise.
NpyArray read_npy_f32(const std::string& path);

}  // namespace tern
