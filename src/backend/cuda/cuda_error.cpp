// See cuda_error.h. Compiled by the C++ compiler in every build; empty without CUDA.
#ifdef TERN_HAVE_CUDA
#include "backend/cuda/cuda_error.h"

#include "tern/error.h"

namespace tern::cuda {

void throw_error(const std::string& message) { throw Error(message); }

}  // namespace tern::cuda
#endif
