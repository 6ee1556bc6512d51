// MappedFile: the bytes of the file, at a 2 MB boundary (mapped_file.h says why), and no
// address space left behind by the aligned reservation.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "tern/error.h"
#include "test_util.h"
#include "util/mapped_file.h"

namespace tern {
namespace {

std::string write_file(const test::TempDir& dir, const std::string& name, size_t n) {
  const std::string path = dir.file(name);
  std::vector<char> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(i * 131 + (i >> 12));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(n));
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
