#include "util/membw.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace tern {

ReadProbe::ReadProbe(std::vector<std::span<const uint8_t>> ranges, int threads)
    : ranges_(std::move(ranges)), pool_(std::max(1, threads)), sums_(static_cast<size_t>(pool_.size()) * 8, 0) {
  for (const auto& r : ranges_) {
    first_word_.push_back(words_);
    words_ += r.size() / 8;
  }
}

ReadProbe::ReadProbe(size_t mib, int threads) : ReadProbe(std::vector<std::span<const uint8_t>>{}, threads) {
  const size_t n = mib * (size_t{1} << 20) / sizeof(uint64_t);
  own_.reset(new uint64_t[n]);
  for (size_t i = 0; i < n; ++i) own_[i] = i * 0x9e3779b97f4a7c15ull;  // touch every page
  ranges_.push_back({reinterpret_cast<const uint8_t*>(own_.get()), n * sizeof(uint64_t)});
  first_word_.push_back(0);
  words_ = n;
}

double ReadProbe::pass() {
  if (words_ == 0) return 0;
  std::fill(sums_.begin(), sums_.end(), 0);
  // 32-byte vectors, two lines an iteration (a GCC vector type: the build's widest loads):
  // ~7 % more than one 8-byte word at a time, and at least what the engine's head dot reads.
  typedef uint64_t v4 __attribute__((vector_size(32)));
  const auto t0 = std::chrono::steady_clock::now();
  pool_.parallel_for(static_cast<int64_t>(words_), [&](int64_t b, int64_t e) {
    v4 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    // The ranges this piece of the flattened word index covers.
    size_t r = std::upper_bound(first_word_.begin(), first_word_.end(), static_cast<size_t>(b)) - first_word_.begin() - 1;
    for (size_t w = b; w < static_cast<size_t>(e); ++r) {
      const size_t end = std::min<size_t>(e, first_word_[r] + ranges_[r].size() / 8);
      const uint8_t* p = ranges_[r].data() + 8 * (w - first_word_[r]);
      size_t i = 0, n = end - w;
      for (; i + 16 <= n; i += 16) {
        v4 v[4];
        std::memcpy(v, p + 8 * i, sizeof v);  // (ranges need not be aligned)
        a0 += v[0], a1 += v[1], a2 += v[2], a3 += v[3];
      }
      for (; i < n; ++i) {
        uint64_t v;
        std::memcpy(&v, p + 8 * i, 8);
        a0[0] += v;
      }
      w = end;
    }
    const v4 a = a0 + a1 + a2 + a3;
    sums_[static_cast<size_t>(ThreadPool::thread_index()) * 8] += a[0] + a[1] + a[2] + a[3];
  }, 8192);  // 64 KB pieces at least
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
