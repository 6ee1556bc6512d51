// What a dependency between two phases of a decode step costs on this GPU: a kernel
// boundary inside a CUDA graph (with and without programmatic dependent launch) versus
// a grid-wide barrier inside one persistent kernel. Each phase does a token amount of
// dependent work (every block reads what another block wrote in the previous phase).
// Built as build/cuda_sync_cost with the CUDA backend; standalone:
//   nvcc -O3 -arch=sm_90 -std=c++17 bench/cuda_sync_cost.cu -o cuda_sync_cost && ./cuda_sync_cost
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "bench_cuda_check.h"

constexpr int kPhases = 150;

__device__ __forceinline__ void phase_work(float* buf, int phase) {
  // Read a value another block wrote in the previous phase, write one for the next.
  const int n = gridDim.x;
  if (threadIdx.x == 0) {
    const float v = buf[((blockIdx.x + 1) % n) + (phase & 1) * n];
    buf[blockIdx.x + ((phase + 1) & 1) * n] = v + 1.0f;
  }
}

__global__ void phase_kernel(float* buf, int phase, int pdl) {
  if (pdl) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  if (pdl) asm volatile("griddepcontrol.wait;\n" ::: "memory");
  phase_work(buf, phase);
}

__device__ void grid_barrier(unsigned* count, volatile unsigned* gen) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned g = *gen;
    __threadfence();
    if (atomicAdd(count, 1) == gridDim.x - 1) {
      *count = 0;
      __threadfence();
      atomicAdd(const_cast<unsigned*>(gen), 1);
    } else {
      while (*gen == g) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

__global__ void persistent_kernel(float* buf, unsigned* bar) {
  for (int p = 0; p < kPhases; ++p) {
    phase_work(buf, p);
    grid_barrier(bar, bar + 1);
  }
}

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  float* buf = nullptr;
  unsigned* bar = nullptr;
  CK(cudaMalloc(&buf, 4096 * sizeof(float)));
  CK(cudaMalloc(&bar, 2 * sizeof(unsigned)));
  CK(cudaMemset(buf, 0, 4096 * sizeof(float)));
  CK(cudaMemset(bar, 0, 2 * sizeof(unsigned)));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int blocks : {sms, 2 * sms}) {
    for (int pdl = 0; pdl < 2; ++pdl) {
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
      for (int p = 0; p < kPhases; ++p) {
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = dim3(blocks);
        cfg.blockDim = dim3(256);
        cfg.stream = st;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = pdl && p > 0 ? 1 : 0;
        CK(cudaLaunchKernelEx(&cfg, phase_kernel, buf, p, pdl));
      }
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
      for (int w = 0; w < 5; ++w) CK(cudaGraphLaunch(ge, st));
      CK(cudaEventRecord(e0, st));
      for (int r = 0; r < 50; ++r) CK(cudaGraphLaunch(ge, st));
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      std::printf("graph of %d kernels, %d blocks, PDL %s: %.2f us per boundary\n", kPhases, blocks, pdl ? "on " : "off",
                  ms * 1e3 / 50 / kPhases);
      cudaGraphExecDestroy(ge);
      cudaGraphDestroy(g);
    }
    for (int w = 0; w < 5; ++w) persistent_kernel<<<blocks, 256, 0, st>>>(buf, bar);
    CK(cudaEventRecord(e0, st));
    for (int r = 0; r < 50; ++r) persistent_kernel<<<blocks, 256, 0, st>>>(buf, bar);
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    std::printf("persistent kernel, %d blocks, %d grid barriers: %.2f us per barrier\n", blocks, kPhases, ms * 1e3 / 50 / kPhases);
  }
  return 0;
}
