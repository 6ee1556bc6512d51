#include "util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "tern/error.h"

namespace tern {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kTrial = size_t{8} << 20;   // settle_in_huge_pages' first piece
constexpr size_t kPiece = size_t{64} << 20;  // and the rest in these

// Maps size bytes of anonymous memory starting at a multiple of 2 MB (so a file mapped
// over it has offset and address equal modulo 2 MB, which a 2 MB page needs) and returns
// that start, or nullptr. writable: memory to read the file into (accounted as such);
// else address space only, for the file's mapping to replace. The rest is given back.
uint8_t* reserve_aligned(size_t size, bool writable) {
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_NONE;
  void* area = mmap(nullptr, size + kHugePage, prot, MAP_PRIVATE | MAP_ANONYMOUS | (writable ? 0 : MAP_NORESERVE), -1, 0);
  if (area == MAP_FAILED) return nullptr;
  const uintptr_t a = reinterpret_cast<uintptr_t>(area), at = (a + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t end = (at + size + page - 1) & ~(page - 1), area_end = a + size + kHugePage;
  if (at > a) munmap(area, at - a);
  if (area_end > end) munmap(reinterpret_cast<void*>(end), area_end - end);
  return reinterpret_cast<uint8_t*>(at);
}

// FileAccess::Read: the file's bytes in anonymous memory in 2 MB pages, read-only.
uint8_t* read_into_memory(int fd, size_t size, const std::string& path) {
  uint8_t* p = reserve_aligned(size, true);
  if (p == nullptr) fail("{}: cannot allocate {} bytes to read it into: {}", path, size, std::strerror(errno));
  madvise(p, size, MADV_HUGEPAGE);
  for (size_t done = 0; done < size;) {
    const ssize_t got = pread(fd, p + done, std::min<size_t>(size - done, size_t{64} << 20), static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int e = errno;
      munmap(p, size);
      if (got == 0) fail("{}: the file ended after {} of {} bytes (changed while reading?)", path, done, size);
      fail("{}: read error at byte {}: {}", path, done, std::strerror(e));
    }
    done += static_cast<size_t>(got);
  }
  mprotect(p, size, PROT_READ);  // (as the map: a stray write faults)
  return p;
}

// Resident kB and kB in 2 MB pages (/proc/self/smaps: Rss; FilePmdMapped + AnonHugePages) of
// the mappings overlapping [lo, hi); rss -1 where none is found or smaps cannot be read.
struct Residency {
  double rss = -1, huge = 0;
};
Residency residency(uintptr_t lo, uintptr_t hi) {
  std::ifstream smaps("/proc/self/smaps");
  Residency r;
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &a, &b) == 2 && line.find(':') > line.find(' ')) {
      inside = a < hi && b > lo;
      continue;
    }
    if (!inside) continue;
    std::istringstream in(line);
    std::string key;
    double kb = 0;
    in >> key >> kb;
    if (key == "Rss:") r.rss = std::max(r.rss, 0.0) + kb;
    if (key == "FilePmdMapped:" || key == "AnonHugePages:") r.huge += kb;
  }
  return r;
}

double share(const Residency& r) { return r.rss > 0 ? r.huge / r.rss : -1; }

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, FileAccess how) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0 && how == FileAccess::Read) {
    try {
      f->data_ = read_into_memory(fd, f->size_, path);
    } catch (...) {
      ::close(fd);
      throw;
    }
  } else if (f->size_ > 0) {
    uint8_t* at = reserve_aligned(f->size_, false);
    void* p = at != nullptr ? mmap(at, f->size_, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0)
                            : mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      if (at != nullptr) munmap(at, f->size_);
      ::close(fd);
      fail("{}: cannot mmap {} bytes: {}", path, f->size_, std::strerror(e));
    }
    f->data_ = static_cast<const uint8_t*>(p);
    // 2 MB pages where the kernel can (mapped_file.h says why); advice, so errors are ignored.
    madvise(p, f->size_, MADV_HUGEPAGE);
    f->fd_ = fd;
    return f;
  }
  ::close(fd);
  return f;
}

double huge_page_share(const void* addr) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  return share(residency(a, a + 1));
}

// Replaces [offset, offset + length) of the map by a fresh map of the same bytes (atomic:
// readers see the file throughout) with nothing faulted in yet: the old page tables go,
// and a 2 MB page can only be mapped where none is left. offset and length are multiples of
// 2 MB. false if the kernel refused (the old map then stays, or is put back).
bool MappedFile::remap(size_t offset, size_t length) {
  uint8_t* at = const_cast<uint8_t*>(data_) + offset;
  const auto map = [&] { return mmap(at, length, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd_, static_cast<off_t>(offset)) != MAP_FAILED; };
  if (map()) {
    madvise(at, length, MADV_HUGEPAGE);
    return true;
  }
  // Linux before 6.12 may have unmapped the old range when MAP_FIXED failed: map it again
  // (msync fails with ENOMEM on a range not wholly mapped).
  if (msync(at, length, MS_ASYNC) != 0 && !map()) fail("{}: lost part of its mapping while re-mapping it: {}", path_, std::strerror(errno));
  madvise(at, length, MADV_HUGEPAGE);
  return false;
}

// Drops [offset, offset + length) from the page cache where no one maps it (remapped first,
// so this process does not) and faults it in again through the MADV_HUGEPAGE map.
void MappedFile::refill(size_t offset, size_t length) {
  posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  madvise(const_cast<uint8_t*>(data_) + offset, length, MADV_POPULATE_READ);
}

HugePageSettle MappedFile::settle_in_huge_pages(size_t offset, size_t length) {
#ifdef MADV_POPULATE_READ
  std::lock_guard<std::mutex> lock(settle_mu_);
  if (settled_ || fd_ < 0 || reinterpret_cast<uintptr_t>(data_) % kHugePage != 0 || offset >= size_) return settle_;
  settled_ = true;
  length = std::min(length, size_ - offset);
  // The whole 2 MB pages that cover the range (a last partial one of the file stays as is).
  const size_t a0 = offset & ~(kHugePage - 1), a1 = std::min((offset + length + kHugePage - 1) & ~(kHugePage - 1), size_ & ~(kHugePage - 1));
  if (a1 < a0 + 2 * kTrial) return settle_;
  const auto t0 = std::chrono::steady_clock::now();
  uint8_t* base = const_cast<uint8_t*>(data_);
  // The rest of the file out of the range's mapping (smaps counts per mapping, and pages of
  // it read once by a loader that repacked them would otherwise count against the range).
  if (a0 > 0) madvise(base, a0, MADV_NOHUGEPAGE);
  if (a1 < size_) madvise(base + a1, size_ - a1, MADV_NOHUGEPAGE);
  // Linux < 5.14 has no MADV_POPULATE_READ: leave the pages to fault in as they are read.
  if (madvise(base + a0, a1 - a0, MADV_POPULATE_READ) != 0) return settle_;
  settle_.ran = true;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(base + a0), hi = reinterpret_cast<uintptr_t>(base + a1);
  settle_.share_before = settle_.share_after = share(residency(lo, hi));
  if (settle_.share_before >= 0 && settle_.share_before < 0.9) {
    // The trial piece, from the middle: its 2 MB pages after re-caching it, counted as
    // the range's total after minus the total with the piece not yet faulted back.
    const size_t off = (a0 + (a1 - a0) / 2) & ~(kHugePage - 1);
    if (remap(off, kTrial)) {
      const double without = residency(lo, hi).huge;
      refill(off, kTrial);
      if (residency(lo, hi).huge - without >= kTrial / 2 / 1024.0) {
        for (size_t o = a0; o < a1; o += kPiece) {
          if (remap(o, std::min(kPiece, a1 - o))) refill(o, std::min(kPiece, a1 - o));
        }
        settle_.recached = true;
      }
      settle_.share_after = share(residency(lo, hi));
    }
  }
  settle_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#else
  (void)offset, (void)length;
#endif
  return settle_;
}

void MappedFile::release(const void* p, size_t n) const {
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(data_);
  if (fd_ < 0 || b < lo || b >= lo + size_) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t from = (b + page - 1) & ~(page - 1), to = std::min(b + n, lo + size_) & ~(page - 1);
  if (from < to) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace tern
