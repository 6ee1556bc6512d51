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
#include <mutex>
#include <string>

namespace tern {

// Map: the file's pages themselves (shared with the page cache and other processes).
// Read (--no-mmap): a private copy in anonymous memory, also at a 2 MB boundary in 2 MB
// pages, which does not depend on how the page cache holds the file (on the VM above,
// pages cached in 4 KB pieces by an earlier reader stay so until evicted); peak RSS is
// the file's size either way.
enum class FileAccess { Map, Read };

// What MappedFile::settle_in_huge_pages found and did.
struct HugePageSettle {
  bool ran = false;           // false: a read copy, a range under 16 MB, or no MADV_POPULATE_READ (Linux < 5.14)
  double share_before = -1;   // resident bytes in 2 MB pages once populated, 0..1 (-1 unknown)
  double share_after = -1;
  bool recached = false;      // the file was dropped from the page cache and read again
  double seconds = 0;
};

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

  // Map only, once per file (later calls return the first call's report), for the bytes
  // [offset, offset + length) (the whole 2 MB pages around them; the rest of the file is
  // advised MADV_NOHUGEPAGE, which keeps it a separate mapping): faults every page in
  // (MADV_POPULATE_READ, which a decode step would do anyway) and, where under 90 % of
  // them are then mapped in 2 MB pages, tries 8 MB: remaps it, drops it from the page
  // cache (POSIX_FADV_DONTNEED; pages other processes map stay) and faults it in again
  // through the MADV_HUGEPAGE map, which reads it back in 2 MB folios where the file
  // system can. If that piece comes back in 2 MB pages, the whole range is re-cached so
  // (0.5-1 s for 1.2 GB on the VM above, once: the page cache keeps the folios for the
  // next run). The data stays readable throughout (the remap is atomic, the pages re-read
  // are the file's): other threads may read it meanwhile (a page one of them faults in
  // between is mapped as the page cache then holds it). The CPU engine calls it for its
  // model's files. Why it is needed: a file just written (tern synth, cp, a download) is
  // cached in the pieces it was written in, and on the VM the kernel's reclaim (DAMON)
  // evicts parts of an idle file that later readers bring back in 4 KB pieces. Throws
  // tern::Error only if the kernel took part of the map away and would not give it back.
  HugePageSettle settle_in_huge_pages(size_t offset = 0, size_t length = SIZE_MAX);

  // Map only, and only for bytes inside this map (else nothing): gives back the pages wholly
  // inside [p, p + n) (MADV_DONTNEED; they read the file's bytes again if touched). Loaders
  // call it for a tensor they have repacked into memory, so its mapped pages do not add to
  // the peak RSS (TQ2_0: the file plus the repacked copy, ~0.5 GB over the file for 2B).
  void release(const void* p, size_t n) const;

 private:
  MappedFile() = default;
  bool remap(size_t offset, size_t length);
  void refill(size_t offset, size_t length);
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
  int fd_ = -1;  // kept open by a map, for settle_in_huge_pages
  std::mutex settle_mu_;
  bool settled_ = false;
  HugePageSettle settle_;
};

// The share of the resident bytes of the mapping that contains `addr` held in 2 MB pages
// (FilePmdMapped + AnonHugePages over Rss in /proc/self/smaps), or -1 where that cannot be
// read (not Linux, no such mapping, nothing resident). tern bench notes a low share.
double huge_page_share(const void* addr);

}  // namespace tern
