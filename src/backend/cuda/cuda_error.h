// Throwing tern::Error from .cu files: nvcc cannot compile fmt (which tern/error.h
// includes), so CUDA translation units throw through this function, defined in a
// plain C++ file (cuda_error.cpp).
#pragma once
#include <string>

namespace tern::cuda {

[[noreturn]] void throw_error(const std::string& message);

}  // namespace tern::cuda
