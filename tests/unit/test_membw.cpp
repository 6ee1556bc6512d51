// util/membw: the probe reads every 8-byte word of every range once per pass (each range
// in four quarters read together, and the words past them), whatever the thread count,
// and reports a rate.
#include <gtest/gtest.h>

#include <cstring>
#include <span>
#include <vector>

#include "util/membw.h"

namespace tern {
namespace {

TEST(ReadProbe, ReadsEveryWordOfEveryRangeOnce) {
  // Ranges of odd sizes (tails under 8 bytes are not read), some far wider than one
  // 64 KB piece, some narrower than four lines, at odd offsets, from one buffer.
  std::vector<uint8_t> buf(3 << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 131 + (i >> 9));
  const std::vector<std::pair<size_t, size_t>> spans = {{3, 17}, {100, 1 << 20}, {(1 << 20) + 200, 5}, {(1 << 20) + 300, 1500001}, {2900000, 64}};
  std::vector<std::span<const uint8_t>> ranges;
  uint64_t want = 0;
  for (auto [off, len] : spans) {
    ranges.emplace_back(buf.data() + off, len);
    for (size_t w = 0; w + 8 <= len; w += 8) {
      uint64_t v;
      std::memcpy(&v, buf.data() + off + w, 8);
      want += v;
    }
  }
  for (int threads : {1, 2, 3}) {
    ReadProbe probe(ranges, threads);
    for (int pass = 0; pass < 2; ++pass) {
      EXPECT_GT(probe.pass(), 0.0) << threads << " threads";
      EXPECT_EQ(probe.last_sum(), want) << threads << " threads, pass " << pass;
    }
  }
  ReadProbe own(4, 2);  // an anonymous buffer of 4 MiB
  EXPECT_GT(own.best(2), 0.0);
}

}  // namespace
}  // namespace tern
