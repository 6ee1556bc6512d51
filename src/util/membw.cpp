#include "util/membw.h"

#include <algorithm>
#include <chrono>
#include <thread>

namespace tern {

ReadProbe::ReadProbe(size_t mib) : n_(mib * (size_t{1} << 20) / sizeof(uint64_t)) {
  buf_.reset(new uint64_t[n_]);
  for (size_t i = 0; i < n_; ++i) buf_[i] = i * 0x9e3779b97f4a7c15ull;  // touch every page
}

double ReadProbe::pass(int threads) {
  threads = std::max(1, threads);
  sums_.assign(static_cast<size_t>(threads) * 8, 0);
  const size_t n = n_;
  const uint64_t* buf = buf_.get();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      const size_t b = n * t / threads, e = n * (t + 1) / threads;
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (size_t i = b; i + 4 <= e; i += 4) a0 += buf[i], a1 += buf[i + 1], a2 += buf[i + 2], a3 += buf[i + 3];
      sums_[t * 8] = a0 + a1 + a2 + a3;
    });
  }
  for (auto& th : ts) th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(n * sizeof(uint64_t)) / s;
}

double cpu_read_bandwidth(int threads, size_t mib, int reps) {
  ReadProbe probe(mib);
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) best = std::max(best, probe.pass(threads));
  return best;
}

}  // namespace tern
