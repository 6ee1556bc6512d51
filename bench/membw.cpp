// Multi-threaded streaming read bandwidth of an anonymous buffer (util/membw.h; `tern
// bench` reads the model's own weights instead): the roofline for CPU decode, which must
// read every weight (1.18 GB for the 2b-4t shape) once per token.
// Usage: membw [threads] [MiB]
#include <fmt/core.h>

#include <cstdlib>

#include "util/membw.h"

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const size_t mib = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1024;
  fmt::print("{:.2f} GB/s read ({} threads, {} MiB, best of 5)\n", tern::cpu_read_bandwidth(threads, mib) / 1e9, threads, mib);
  return 0;
}
