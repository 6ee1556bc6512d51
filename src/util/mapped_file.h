// Read-only memory map of a whole file. Loaders keep the map alive (shared_ptr) for
// as long as any tensor points into it, so weights are never copied when the file
// layout is already the one the kernels want.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace tern {

class MappedFile {
 public:
  // Throws tern::Error naming the path if the file cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
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

}  // namespace tern
