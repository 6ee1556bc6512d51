// cuBLAS, opened on first use. A binary linked against libcublas maps it and runs its
// initialisers before main: +213 MB resident and ~0.5 s at every start (an empty program
// linked with -lcublas, measured 2026-11-27), paid by `tern --version` and by the CPU
// engine on machines without a GPU as much as by the CUDA backend. So tern_core does not
// link cuBLAS: the few entry points it calls are defined here, forwarding to the library
// that the first call opens with dlopen (the CUDA backend's first cuBLAS handle).
// Compiled by the C++ compiler in every build; empty without CUDA.
#ifdef TERN_HAVE_CUDA
#include <cublas_v2.h>
#include <dlfcn.h>

#include <string>

#include "tern/error.h"

namespace {

void* cublas_library() {
  // A throwing initialiser leaves the static unset, so a later call tries again.
  static void* lib = [] {
    const std::string so = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    std::string why;
    for (const std::string& path : {so, std::string(TERN_CUDA_LIB_DIR) + "/" + so, "/usr/local/cuda/lib64/" + so, "/usr/local/cuda/lib/" + so}) {
      if (void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
      const char* e = dlerror();
      why += "\n  " + path + ": " + (e != nullptr ? e : "not found");
    }
    throw tern::Error("cannot load cuBLAS (the CUDA backend needs it; set LD_LIBRARY_PATH to the CUDA toolkit's lib directory):" + why);
  }();
  return lib;
}

template <class F>
F entry(const char* name) {
  void* p = dlsym(cublas_library(), name);
  if (p == nullptr) throw tern::Error(std::string("cuBLAS (libcublas.so.") + std::to_string(CUBLAS_VER_MAJOR) + ") has no " + name);
  return reinterpret_cast<F>(p);
}

}  // namespace

// Each forwarder resolves its symbol once; the signatures are the header's (spelled out:
// the C++ header overloads cublasGemmEx and cublasGemmStridedBatchedEx, so decltype of
// the name would be ambiguous).
#define TERN_CUBLAS_FORWARD(ret, name, params, args)         \
  ret CUBLASWINAPI name params {                             \
    static const auto f = entry<ret(*) params>(#name);       \
    return f args;                                           \
  }

extern "C" {
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasCreate_v2, (cublasHandle_t * handle), (handle))
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasDestroy_v2, (cublasHandle_t handle), (handle))
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasSetWorkspace_v2, (cublasHandle_t handle, void* workspace, size_t bytes), (handle, workspace, bytes))
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasSetMathMode, (cublasHandle_t handle, cublasMath_t mode), (handle, mode))
TERN_CUBLAS_FORWARD(const char*, cublasGetStatusString, (cublasStatus_t status), (status))
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasGemmEx,
                    (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void* alpha,
                     const void* A, cudaDataType Atype, int lda, const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                     cudaDataType Ctype, int ldc, cublasComputeType_t computeType, cublasGemmAlgo_t algo),
                    (handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, computeType, algo))
TERN_CUBLAS_FORWARD(cublasStatus_t, cublasGemmStridedBatchedEx,
                    (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void* alpha,
                     const void* A, cudaDataType Atype, int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                     long long int strideB, const void* beta, void* C, cudaDataType Ctype, int ldc, long long int strideC,
                     int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo),
                    (handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc,
                     strideC, batchCount, computeType, algo))
}
#endif
