// TrainBlas (train_blas.h): the training step's cuBLAS handle, scratch and GEMM shapes.
#include "backend/cuda/train_blas.h"

#include <cublas_v2.h>

#include <string>

#include "backend/cuda/cuda_check.h"

namespace tern::cuda {

namespace {

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_error(std::string("cuBLAS ") + what + " failed: " + cublasGetStatusString(s));
}

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

TrainBlas::TrainBlas(cudaStream_t st) : st_(st) {
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "create");
  handle_ = h;
  check_cublas(cublasSetStream(h, st), "set stream");
  // Float32 GEMMs stay float32 (TF32 only where a call asks for it) and 16-bit GEMMs
  // reduce in float32.
  check_cublas(cublasSetMathMode(h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
               "set math mode");
}

TrainBlas::~TrainBlas() {
  cudaStreamSynchronize(st_);  // the scratch may still be in use
  cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

void* TrainBlas::scratch(int slot, size_t bytes) {
  DevBuf& b = slots_.at(slot);
  if (b.size() < bytes) {
    TERN_CUDA_CHECK(cudaStreamSynchronize(st_));
    b = DevBuf();  // free first: the old and new buffers need not both fit
    b = DevBuf(bytes + bytes / 8);
  }
  return b.as<void>();
}

size_t TrainBlas::scratch_bytes() const {
  size_t n = 0;
  for (const DevBuf& b : slots_) n += b.size();
  return n;
}

// Row-major C [m][n] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
void TrainBlas::gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
                     float* C, int ldc, bool tf32) {
  if (m <= 0 || n <= 0) return;
  auto h = static_cast<cublasHandle_t>(handle_);
  check_cublas(cublasGemmEx(h, op(tb), op(ta), n, m, k, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
                            tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "gemm");
}

void TrainBlas::gemm_strided(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda, int64_t sa, const float* B,
                             int ldb, int64_t sb, float beta, float* C, int ldc, int64_t sc, int batch, bool tf32) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  auto h = static_cast<cublasHandle_t>(handle_);
  check_cublas(cublasGemmStridedBatchedEx(h, op(tb), op(ta), n, m, k, &alpha, B, CUDA_R_32F, ldb, sb, A, CUDA_R_32F, lda, sa, &beta, C,
                                          CUDA_R_32F, ldc, sc, batch, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT),
               "strided batched gemm");
}

void TrainBlas::gemm_i8_nt(const int8_t* A, int M, int K, const int8_t* W, int N, int32_t* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K % 4 != 0) throw_error("int8 GEMM: K = " + std::to_string(K) + " is not a multiple of 4");
  auto h = static_cast<cublasHandle_t>(handle_);
  const int32_t one = 1, zero = 0;
  // Column-major C^T [N][M] = W^T(as stored: [K][N], op T) . A^T ([K][M], op N): the "TN"
  // layout the int8 tensor-core kernels take.
  check_cublas(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_8I, K, A, CUDA_R_8I, K, &zero, C, CUDA_R_32I, ldc,
                            CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT),
               "int8 gemm");
}

}  // namespace tern::cuda
