#include "util/membw.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace tern {

namespace {
// (A hint: past the end of a range it reads nothing and faults nothing. 2 KB ahead, as
// the decode kernels prefetch: backend/cpu/simd.h.)
inline void prefetch(const uint8_t* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 3);
#endif
}
}  // namespace

ReadProbe::ReadProbe(std::vector<std::span<const uint8_t>> ranges, int threads)
    : ranges_(std::move(ranges)), pool_(std::max(1, threads)), sums_(static_cast<size_t>(pool_.size()) * 8, 0) {
  for (const auto& r : ranges_) words_ += r.size() / 8;
}

ReadProbe::ReadProbe(size_t mib, int threads) : ReadProbe(std::vector<std::span<const uint8_t>>{}, threads) {
  const size_t n = mib * (size_t{1} << 20) / sizeof(uint64_t);
  own_.reset(new uint64_t[n]);
  for (size_t i = 0; i < n; ++i) own_[i] = i * 0x9e3779b97f4a7c15ull;  // touch every page
  ranges_.push_back({reinterpret_cast<const uint8_t*>(own_.get()), n * sizeof(uint64_t)});
  words_ = n;
}

double ReadProbe::pass() {
  if (words_ == 0) return 0;
  std::fill(sums_.begin(), sums_.end(), 0);
  // 32-byte vectors (a GCC vector type: the build's widest loads), each thread reading four
  // streams at once: every range in four quarters, a unit = one 64-byte line from each.
  // One stream a thread read ~58 GB/s where two read ~66 and four ~68 (8: 61; 2B model's
  // weights, Zen 5 VM, 2 threads): the four-row decode kernels read four streams a thread,
  // so a one-stream probe was beaten by the engine's own LM head (~62). And each line is
  // prefetched 2 KB ahead, as those kernels do: four streams read 53-56 GB/s without, 60-62
  // with (same VM, a slower phase).
  typedef uint64_t v4 __attribute__((vector_size(32)));
  constexpr size_t kLine = 64, kStreams = 4, kPrefetchAhead = 2048;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& range : ranges_) {
    const size_t quarter = range.size() / kStreams / kLine * kLine;
    const uint8_t* p = range.data();
    pool_.parallel_for(static_cast<int64_t>(quarter / kLine), [&](int64_t b, int64_t e) {
      v4 a0 = {}, a1 = {};
      for (int64_t i = b; i < e; ++i) {
#pragma GCC unroll 4
        for (size_t j = 0; j < kStreams; ++j) {
          prefetch(p + j * quarter + static_cast<size_t>(i) * kLine + kPrefetchAhead);
          v4 v[2];
          std::memcpy(v, p + j * quarter + static_cast<size_t>(i) * kLine, sizeof v);  // (ranges need not be aligned)
          a0 += v[0], a1 += v[1];
        }
      }
      const v4 a = a0 + a1;
      sums_[static_cast<size_t>(ThreadPool::thread_index()) * 8] += a[0] + a[1] + a[2] + a[3];
    }, 1024);  // pieces of 64 KB of each stream at least
    uint64_t tail = 0;  // the words past the four quarters
    for (size_t w = kStreams * quarter; w + 8 <= range.size(); w += 8) {
      uint64_t v;
      std::memcpy(&v, p + w, 8);
      tail += v;
    }
    sums_[0] += tail;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(words_ * sizeof(uint64_t)) / s;
}

uint64_t ReadProbe::last_sum() const {
  uint64_t s = 0;
  for (uint64_t v : sums_) s += v;
  return s;
}

double ReadProbe::best(int passes) {
  double b = 0;
  for (int i = 0; i < passes; ++i) b = std::max(b, pass());
  return b;
}

double cpu_read_bandwidth(int threads, size_t mib, int reps) { return ReadProbe(mib, threads).best(reps); }

}  // namespace tern
