// CUDA error handling for the CUDA backend: every runtime call is checked and a
// failure becomes a tern::Error carrying the CUDA error string (never an abort).
// No fmt here (see cuda_error.h).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/cuda_error.h"

namespace tern::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  std::string f = file;
  const size_t slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  throw_error(std::string("CUDA error: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ") in " + what + " [" + f +
              ":" + std::to_string(line) + "]");
}

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) throw_cuda(e, what, file, line);
}

}  // namespace tern::cuda

#define TERN_CUDA_CHECK(call) ::tern::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at once.
#define TERN_CUDA_LAUNCHED(name) ::tern::cuda::check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
