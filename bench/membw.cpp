// Multi-threaded streaming read bandwidth: the roofline for CPU decode, which must
// read every weight (1.18 GB for the 2b-4t shape) once per token.
// Usage: membw [threads] [MiB]
#include <fmt/core.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const size_t mib = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1024;
  const size_t n = mib * (1u << 20) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = i * 0x9e3779b97f4a7c15ull;  // touch every page
  std::vector<uint64_t> sums(threads * 8);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t b = n * t / threads, e = n * (t + 1) / threads;
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (size_t i = b; i + 4 <= e; i += 4) a0 += buf[i], a1 += buf[i + 1], a2 += buf[i + 2], a3 += buf[i + 3];
        sums[t * 8] = a0 + a1 + a2 + a3;
      });
    }
    for (auto& th : ts) th.join();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  uint64_t check = 0;
  for (int t = 0; t < threads; ++t) check += sums[t * 8];
  fmt::print("{:.2f} GB/s read ({} threads, {} MiB, best of 5; checksum {:x})\n", n * 8 / best / 1e9, threads, mib, check & 0xffff);
  return 0;
}
