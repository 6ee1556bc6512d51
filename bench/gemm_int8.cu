// The training forward's ternary products (issue 5), [M][K] activations x [N][K] ternary
// weights, as cuBLAS does them in F16 (what lora_train.cu uses: int8 values and {-1, 0, 1}
// stored as F16, float32 accumulation, exact) against int8 inputs with int32 accumulation
// (also exact, half the bytes, twice the tensor-core rate on paper), through cublasGemmEx
// and through cublasLt. Prints TFLOP/s per shape of the 2b-4t model at 8 x 512 tokens.
// Built as build/gemm_int8 with the CUDA backend.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "bench_cuda_check.h"
#define CB(x)                                                                                 \
  do {                                                                                        \
    cublasStatus_t st_ = (x);                                                                   \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      std::printf("cuBLAS error %s at %s:%d\n", cublasGetStatusString(st_), __FILE__, __LINE__); \
      ok = false;                                                                             \
    }                                                                                         \
  } while (0)

namespace {

__global__ void fill(int8_t* a, __half* h, size_t n, int mod, uint32_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint32_t z = static_cast<uint32_t>(i) * 2654435761u + seed;
    z ^= z >> 15, z *= 2246822519u, z ^= z >> 13;
    const int v = static_cast<int>(z % mod) - mod / 2;
    a[i] = static_cast<int8_t>(v), h[i] = __int2half_rn(v);
  }
}

__global__ void compare(const float* f, const int32_t* i, size_t n, int* bad) {
  for (size_t k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += gridDim.x * blockDim.x) {
    if (f[k] != static_cast<float>(i[k])) atomicAdd(bad, 1);
  }
}

template <class F>
float time_ms(F f, int reps) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  f();  // warm-up (and algorithm selection)
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) f();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a), cudaEventDestroy(b);
  return ms / reps;
}

}  // namespace

int main() {
  bool ok = true;
  const int M = 4096;
  struct Shape {
    const char* name;
    int K, N;
  };
  const std::vector<Shape> shapes = {{"qkv", 2560, 3840}, {"o", 2560, 2560}, {"gate|up", 2560, 13824}, {"down", 6912, 2560}};
  cublasHandle_t h;
  cublasLtHandle_t lt;
  cublasCreate(&h), cublasLtCreate(&lt);
  void* ws = nullptr;
  const size_t ws_bytes = size_t{64} << 20;
  CK(cudaMalloc(&ws, ws_bytes));
  std::printf("%-8s %6s %6s %6s | %10s %10s %10s | exact\n", "shape", "M", "K", "N", "f16 TF/s", "i8 TF/s", "i8Lt TF/s");
  for (const Shape& s : shapes) {
    const size_t na = size_t{1} * M * s.K, nw = size_t{1} * s.N * s.K, nc = size_t{1} * M * s.N;
    int8_t *a8, *w8;
    __half *a16, *w16;
    float* c32;
    int32_t *ci, *cl;
    int* bad;
    CK(cudaMalloc(&a8, na));
    CK(cudaMalloc(&w8, nw));
    CK(cudaMalloc(&a16, na * 2));
    CK(cudaMalloc(&w16, nw * 2));
    CK(cudaMalloc(&c32, nc * 4));
    CK(cudaMalloc(&ci, nc * 4));
    CK(cudaMalloc(&cl, nc * 4));
    CK(cudaMalloc(&bad, 8));
    fill<<<1024, 256>>>(a8, a16, na, 255, 1);
    fill<<<1024, 256>>>(w8, w16, nw, 3, 2);
    const float one = 1, zero = 0;
    const int32_t ione = 1, izero = 0;
    // Row-major C [M][N] = A [M][K] W [N][K]^T is column-major C^T = W^T(op T) A^T(op N).
    auto f16 = [&] {
      CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &one, w16, CUDA_R_16F, s.K, a16, CUDA_R_16F, s.K, &zero, c32, CUDA_R_32F,
                      s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    auto i8 = [&] {
      CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &ione, w8, CUDA_R_8I, s.K, a8, CUDA_R_8I, s.K, &izero, ci, CUDA_R_32I, s.N,
                      CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT));
    };
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32I, CUDA_R_32I);
    cublasOperation_t tr = CUBLAS_OP_T;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof(tr));
    cublasLtMatrixLayoutCreate(&la, CUDA_R_8I, s.K, s.N, s.K);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_8I, s.K, M, s.K);
    cublasLtMatrixLayoutCreate(&lc, CUDA_R_32I, s.N, M, s.N);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes));
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0;
    CB(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 8, res, &found));
    auto i8lt = [&] {
      CB(cublasLtMatmul(lt, op, &ione, w8, la, a8, lb, &izero, cl, lc, cl, lc, found > 0 ? &res[0].algo : nullptr, ws, ws_bytes, 0));
    };
    const double flop = 2.0 * M * s.K * s.N;
    const float t16 = time_ms(f16, 20), t8 = time_ms(i8, 20), tl = found > 0 ? time_ms(i8lt, 20) : 0.0f;
    CK(cudaMemset(bad, 0, 8));
    compare<<<1024, 256>>>(c32, ci, nc, bad);
    if (found > 0) compare<<<1024, 256>>>(c32, cl, nc, bad + 1);
    int nbad[2] = {0, 0};
    CK(cudaMemcpy(nbad, bad, 8, cudaMemcpyDeviceToHost));
    std::printf("%-8s %6d %6d %6d | %10.0f %10.0f %10.0f | %s (%d heuristics)\n", s.name, M, s.K, s.N, flop / t16 / 1e9, flop / t8 / 1e9,
                tl > 0 ? flop / tl / 1e9 : 0.0, nbad[0] == 0 && nbad[1] == 0 ? "yes" : "NO", found);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
    cudaFree(a8), cudaFree(w8), cudaFree(a16), cudaFree(w16), cudaFree(c32), cudaFree(ci), cudaFree(cl), cudaFree(bad);
  }
  cudaFree(ws);
  cublasLtDestroy(lt), cublasDestroy(h);
  return ok ? 0 : 1;
}
