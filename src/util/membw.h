// Streaming read bandwidth of this machine's memory (bytes/s), the roofline for CPU
// decode: every weight is read once per token. Best of `reps` passes over `mib` MiB
// split across `threads` threads.
#pragma once
#include <cstddef>

namespace tern {

double cpu_read_bandwidth(int threads, size_t mib = 512, int reps = 5);

}  // namespace tern
