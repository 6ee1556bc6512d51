// Shared helpers for tests: temporary directories and logits comparison.
#pragma once
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "tern/error.h"

namespace tern::test {

// A fresh directory removed when the object dies.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("tern_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// Runs f and returns the tern::Error message it throws ("" if it throws nothing).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// ||a - b|| / ||b||; NaN anywhere gives +inf so it never passes a threshold.
inline double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den == 0 ? (num == 0 ? 0 : INFINITY) : std::sqrt(num / den);
}

inline size_t argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

// Relative L2 below `tol` over everything, and the same argmax in every row of `vocab`.
inline void expect_logits_match(const std::vector<float>& got, const std::vector<float>& want, size_t vocab, double tol,
                                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double err = rel_l2(got.data(), want.data(), got.size());
  EXPECT_LT(err, tol) << what << ": relative L2 error " << err;
  for (size_t r = 0; r < got.size() / vocab; ++r) {
    EXPECT_EQ(argmax(got.data() + r * vocab, vocab), argmax(want.data() + r * vocab, vocab)) << what << ": argmax differs at position " << r;
  }
}

// Bad forwards on an engine with a 4-token context (ids outside the vocabulary, context
// overflow) throw tern::Error and leave the cache as it was (CPU and CUDA engines).
inline void expect_errors_leave_cache_intact(Engine& e) {
  std::vector<float> lg(e.config().vocab);
  std::vector<int32_t> bad = {1, static_cast<int32_t>(e.config().vocab)};
  EXPECT_THROW(e.forward(bad, lg.data(), Logits::Last), Error);
  std::vector<int32_t> neg = {-1};
  EXPECT_THROW(e.forward(neg, lg.data(), Logits::Last), Error);
  EXPECT_EQ(e.position(), 0);
  std::vector<int32_t> three = {1, 2, 3};
  e.forward(three, lg.data(), Logits::Last);
  EXPECT_THROW(e.forward(three, lg.data(), Logits::Last), Error);
  EXPECT_EQ(e.position(), 3);
  std::vector<int32_t> one = {4};
  EXPECT_NO_THROW(e.forward(one, lg.data(), Logits::Last));
  EXPECT_EQ(e.position(), 4);
}

}  // namespace tern::test
