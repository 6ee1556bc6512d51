#include "util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "tern/error.h"

namespace tern {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;

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
  }
  ::close(fd);
  return f;
}

double huge_page_share(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  bool inside = false;
  double rss = -1, huge = 0;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      if (inside) break;  // past the mapping's fields
      inside = a >= lo && a < hi;
      continue;
    }
    if (!inside) continue;
    std::istringstream in(line);
    std::string key;
    double kb = 0;
    in >> key >> kb;
    if (key == "Rss:") rss = kb;
    if (key == "FilePmdMapped:" || key == "AnonHugePages:") huge += kb;
  }
  return rss > 0 ? huge / rss : -1;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace tern
