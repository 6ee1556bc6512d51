// Streaming read bandwidth (bytes/s): the roofline for CPU decode, which reads every
// weight once per token. The probe reads with a pool of persistent threads in the
// engine's loop shape (util/thread_pool.h), as decode's loops do: passes with fresh
// threads per pass measured ~10 % lower (their start is in the timing, and now and then
// two land on one core), so decode could read "faster than the bandwidth". Each thread
// reads four streams at once (membw.cpp says why), as the decode kernels do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "util/thread_pool.h"

namespace tern {

class ReadProbe {
 public:
  // Reads these ranges (tern bench: the model's weights, the very pages decode reads;
  // on a VM a fresh anonymous buffer's pages streamed anywhere from 5 to 70 GB/s).
  ReadProbe(std::vector<std::span<const uint8_t>> ranges, int threads);
  // Reads an anonymous buffer of `mib` MiB, written once here.
  ReadProbe(size_t mib, int threads);
  double pass();            // one timed pass over every range: bytes/s
  double best(int passes);  // the best of `passes` passes
  // The wrapping sum of every 8-byte word the last pass read (a test checks the pieces
  // covered each range once; it also keeps the loads from being optimised away).
  uint64_t last_sum() const;

 private:
  std::unique_ptr<uint64_t[]> own_;  // (not a vector: no zero-fill before the touch)
  std::vector<std::span<const uint8_t>> ranges_;
  size_t words_ = 0;
  ThreadPool pool_;
  std::vector<uint64_t> sums_;  // one per thread, a cache line apart (keeps the loads alive)
};

// The best of `reps` passes over an anonymous buffer of `mib` MiB with `threads` threads.
double cpu_read_bandwidth(int threads, size_t mib = 512, int reps = 5);

}  // namespace tern
