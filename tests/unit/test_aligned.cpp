// util/aligned.h: AlignedVector's storage starts on a 64-byte boundary at every size and
// after growth, and behaves as a vector otherwise.
#include <gtest/gtest.h>

#include <cstdint>

#include "util/aligned.h"

namespace tern {
namespace {

TEST(AlignedVector, StorageOn64ByteBoundaries) {
  AlignedVector<int8_t> v;
  for (size_t n : {1, 3, 64, 100, 2560, 4097, 327680, 1 << 21}) {
    v.resize(n, 7);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u) << "size " << n;
    EXPECT_EQ(v[n - 1], 7);
  }
  AlignedVector<float> f(1000, 1.5f), g = f;  // copies use the aligned allocator too
  EXPECT_EQ(reinterpret_cast<uintptr_t>(g.data()) % 64, 0u);
  EXPECT_EQ(g[999], 1.5f);
}

}  // namespace
}  // namespace tern
