// Writes a file so that readers only ever see the old file or the complete new one:
// data goes to a temporary file beside the target, is flushed, and is renamed over
// the target by commit(). Destroying an uncommitted writer removes the temporary.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>

namespace tern {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();
  size_t bytes_written() const { return written_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  size_t written_ = 0;
};

// Whole-string convenience for small text files (JSON configs).
void write_file_atomic(const std::string& path, const std::string& contents);
std::string read_text_file(const std::string& path);

}  // namespace tern
