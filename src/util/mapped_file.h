// Read-only memory map of a whole file. Loaders keep the map alive (shared_ptr) for
// as long as any tensor points into it, so weights are never copied when the file
// layout is already the one the kernels want.
// The map starts at a multiple of 2 MB and is advised MADV_HUGEPAGE: where the kernel and
// file system keep large folios in the page cache (Linux 6.x, ext4 since 6.16, xfs), pages
// faulted in through it are cached and mapped 2 MB at a time. CPU decode reads every
// weight once per token: on a 2-core VM (Linux 6.18, ext4) a streaming read of a 2B
// model's weights cached in 4 KB pages lost 20-30 % of its time to stalls of ~0.1 s every
// ~0.5 s (the host's page-table work), in 2 MB pages ~1 % (docs/PERFORMANCE.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace tern {

// Map: the file's pages themselves (shared with the page cache and other processes).
// Read (--no-mmap): a private copy in anonymous memory, also at a 2 MB boundary in 2 MB
// pages, which does not depend on how the page cache holds the file (on the VM above,
// pages cached in 4 KB pieces by an earlier reader stay so until evicted); peak RSS is
// the file's size either way.
enum class FileAccess { Map, Read };

class MappedFile {
 public:
  // Throws tern::Error naming the path if the file cannot be opened, mapped or read.
  static std::shared_ptr<MappedFile> open(const std::string& path, FileAccess how = FileAccess::Map);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// The share of the resident bytes of the mapping that contains `addr` held in 2 MB pages
// (FilePmdMapped + AnonHugePages over Rss in /proc/self/smaps), or -1 where that cannot be
// read (not Linux, no such mapping, nothing resident). tern bench notes a low share.
double huge_page_share(const void* addr);

}  // namespace tern
