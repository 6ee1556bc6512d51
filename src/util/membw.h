// Streaming read bandwidth of this machine's memory (bytes/s), the roofline for CPU
// decode: every weight is read once per token.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace tern {

// A buffer of `mib` MiB, touched once, read by `threads` threads per pass().
class ReadProbe {
 public:
  explicit ReadProbe(size_t mib);
  // One timed pass over the whole buffer: bytes/s.
  double pass(int threads);

 private:
  std::unique_ptr<uint64_t[]> buf_;  // (not a vector: no zero-fill before the touch)
  size_t n_ = 0;
  std::vector<uint64_t> sums_;  // one per thread, a cache line apart (keeps the loads alive)
};

// Best of `reps` passes over `mib` MiB split across `threads` threads.
double cpu_read_bandwidth(int threads, size_t mib = 512, int reps = 5);

}  // namespace tern
