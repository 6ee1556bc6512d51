// CK(call): a standalone CUDA benchmark's error check (prints and returns 1 from main).
#pragma once
#include <cuda_runtime.h>

#include <cstdio>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e = (x);                                                                   \
    if (e != cudaSuccess) {                                                                \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)
