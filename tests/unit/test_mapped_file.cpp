// MappedFile: the bytes of the file, at a 2 MB boundary (mapped_file.h says why), and no
// address space left behind by the aligned reservation.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <thread>
#include <string>
#include <vector>

#include "tern/error.h"
#include "test_util.h"
#include "util/mapped_file.h"

namespace tern {
namespace {

// piece > 0: written that many bytes at a time (small writes leave the page cache holding
// the file in small folios, where large ones may leave 2 MB folios).
std::string write_file(const test::TempDir& dir, const std::string& name, size_t n, size_t piece = 0) {
  const std::string path = dir.file(name);
  std::vector<char> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(i * 131 + (i >> 12));
  std::ofstream out(path, std::ios::binary);
  out.rdbuf()->pubsetbuf(nullptr, 0);
  for (size_t at = 0; at < n; at += piece > 0 ? piece : n) {
    out.write(bytes.data() + at, static_cast<std::streamsize>(std::min(n - at, piece > 0 ? piece : n)));
  }
  return path;
}

size_t mapping_count() {
  std::ifstream maps("/proc/self/maps");
  size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}

TEST(MappedFile, HoldsTheFileAtATwoMegabyteBoundary) {
  for (FileAccess how : {FileAccess::Map, FileAccess::Read}) {
    for (size_t n : {size_t{1}, size_t{4095}, size_t{4096}, (size_t{67} << 20) + 123}) {  // (reads go in 64 MB pieces)
      test::TempDir dir;
      const std::string path = write_file(dir, "mapped", n);
      auto f = MappedFile::open(path, how);
      SCOPED_TRACE(std::to_string(n) + (how == FileAccess::Map ? " bytes mapped" : " bytes read"));
      ASSERT_EQ(f->size(), n);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(f->data()) % (uintptr_t{2} << 20), 0u);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(f->data()[i], static_cast<uint8_t>(i * 131 + (i >> 12))) << "byte " << i;
    }
  }
}

TEST(MappedFile, LeavesNoAddressSpaceBehind) {
  test::TempDir dir;
  const std::string path = write_file(dir, "mapped", (size_t{5} << 20) + 7);
  for (FileAccess how : {FileAccess::Map, FileAccess::Read}) {
    { auto warm = MappedFile::open(path, how); }
    const size_t before = mapping_count();
    for (int i = 0; i < 50; ++i) {
      auto f = MappedFile::open(path, how);
      ASSERT_EQ(f->data()[5], static_cast<uint8_t>(5 * 131));
    }
    EXPECT_EQ(mapping_count(), before);
  }
}

// The share of a mapping in 2 MB pages depends on the kernel and file system; what holds
// everywhere: a fraction for a resident mapping, -1 for an address in none.
TEST(MappedFile, HugePageShareIsAFractionOrUnknown) {
  test::TempDir dir;
  auto f = MappedFile::open(write_file(dir, "mapped", size_t{6} << 20), FileAccess::Read);
  const double share = huge_page_share(f->data());
#ifdef __linux__
  EXPECT_GE(share, 0.0);
#endif
  EXPECT_LE(share, 1.0);
  EXPECT_EQ(huge_page_share(reinterpret_cast<const void*>(uintptr_t{16})), -1.0);
}

// settle_in_huge_pages: what it does depends on the kernel and file system (a file just
// written is usually cached in small folios, so on Linux 6.x with large folios it re-caches
// it); what holds everywhere: the bytes stay the file's, also for a thread reading them all
// the while, the report is consistent and given once, and no mapping is left behind.
TEST(MappedFile, SettlesInHugePagesKeepingTheBytes) {
  test::TempDir dir;
  const size_t n = (size_t{40} << 20) + 4321;  // (not a whole number of 2 MB pages)
  const std::string path = write_file(dir, "mapped", n, 4096);
  {  // written back, as a model file usually is by the time it is run (dirty pages cannot be dropped)
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    fdatasync(fd);
    ::close(fd);
  }
  std::thread([] {}).join();  // (glibc keeps a joined thread's stack mapped for the next one)
  const size_t before = mapping_count();
  {
    auto f = MappedFile::open(path, FileAccess::Map);
    auto expected = [](size_t i) { return static_cast<uint8_t>(i * 131 + (i >> 12)); };
    std::atomic<bool> done{false};
    std::atomic<size_t> bad{0}, passes{0};
    std::thread reader([&] {
      while (!done.load()) {
        for (size_t i = 0; i < n; i += 1024) {
          if (f->data()[i] != expected(i)) bad.fetch_add(1);
        }
        passes.fetch_add(1);
      }
    });
    const HugePageSettle s = f->settle_in_huge_pages();
    done.store(true);
    reader.join();
    std::printf("[info] settle: ran %d, 2 MB share %.2f -> %.2f, recached %d, %.3f s; reader passes %zu\n", s.ran, s.share_before,
                s.share_after, s.recached, s.seconds, passes.load());
    EXPECT_EQ(bad.load(), 0u);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(f->data()[i], expected(i)) << "byte " << i;
    if (s.ran) {
      EXPECT_GE(s.share_before, 0.0);
      EXPECT_LE(s.share_before, 1.0);
      EXPECT_GE(s.share_after, 0.0);
      EXPECT_LE(s.share_after, 1.0);
      EXPECT_GE(s.seconds, 0.0);
      // A re-cache happens only after its trial piece came back in 2 MB pages.
      if (s.recached) {
        EXPECT_GT(s.share_after, s.share_before);
      }
    } else {
      EXPECT_FALSE(s.recached);
    }
    const HugePageSettle again = f->settle_in_huge_pages();
    EXPECT_EQ(again.ran, s.ran);
    EXPECT_EQ(again.seconds, s.seconds);  // the first call's report, not a second run
  }
  EXPECT_EQ(mapping_count(), before);
  {  // A range of the file (what decode reads in place): the whole file still reads right.
    auto f = MappedFile::open(path, FileAccess::Map);
    const HugePageSettle s = f->settle_in_huge_pages((size_t{10} << 20) + 123, size_t{20} << 20);
    std::printf("[info] settle of 20 MB: ran %d, 2 MB share %.2f -> %.2f, recached %d\n", s.ran, s.share_before, s.share_after, s.recached);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(f->data()[i], static_cast<uint8_t>(i * 131 + (i >> 12))) << "byte " << i;
    auto g = MappedFile::open(path, FileAccess::Map);
    EXPECT_FALSE(g->settle_in_huge_pages(size_t{30} << 20, size_t{8} << 20).ran);  // (under two trial pieces)
  }
  EXPECT_EQ(mapping_count(), before);
  // A copy in memory and a small file are left alone.
  auto copy = MappedFile::open(path, FileAccess::Read);
  EXPECT_FALSE(copy->settle_in_huge_pages().ran);
  auto small = MappedFile::open(write_file(dir, "small", size_t{3} << 20), FileAccess::Map);
  EXPECT_FALSE(small->settle_in_huge_pages().ran);
}

// release gives back mapped pages (they read the file again) and leaves a read copy, and
// addresses outside the map, alone: every byte reads the same after it.
TEST(MappedFile, ReleaseKeepsTheBytes) {
  test::TempDir dir;
  const size_t n = (size_t{3} << 20) + 777;
  const std::string path = write_file(dir, "mapped", n);
  for (FileAccess how : {FileAccess::Map, FileAccess::Read}) {
    auto f = MappedFile::open(path, how);
    for (size_t i = 0; i < n; i += 4096) ASSERT_EQ(f->data()[i], static_cast<uint8_t>(i * 131 + (i >> 12)));  // (resident first)
    f->release(f->data() + 1000, n);  // partial first page, past the end
    f->release(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(f->data()) - 4096), 8192);  // starts outside: nothing
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(f->data()[i], static_cast<uint8_t>(i * 131 + (i >> 12))) << "byte " << i;
  }
}

TEST(MappedFile, ErrorsNameThePath) {
  for (FileAccess how : {FileAccess::Map, FileAccess::Read}) {
    for (const char* path : {"/nonexistent/tern/model.gguf", "/tmp"}) {  // missing; not a regular file
      try {
        MappedFile::open(path, how);
        FAIL() << "no error for " << path;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace tern
