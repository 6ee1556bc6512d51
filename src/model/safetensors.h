// safetensors reader (single file or sharded via model.safetensors.index.json) and
// atomic writer. Format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, data.
// Every offset and shape is checked against the file before use.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "util/mapped_file.h"

namespace tern::st {

enum class DType { BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64 };

std::string dtype_name(DType d);  // "BF16", ...
size_t dtype_size(DType d);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<uint64_t> shape;  // row-major, as in torch
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  std::string file;  // the .safetensors file it lives in (for error messages)
  uint64_t n_elements() const;
};

class Reader {
 public:
  // A single .safetensors file.
  static Reader open_file(const std::string& path, FileAccess how = FileAccess::Map);
  // A model directory: model.safetensors, or model.safetensors.index.json naming shards.
  static Reader open_dir(const std::string& dir, FileAccess how = FileAccess::Map);
  // Bytes in memory (fuzzer); `name` is used in errors.
  static Reader parse(const uint8_t* data, size_t size, const std::string& name);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  // Throws "FILE: tensor NAME: missing" when absent.
  const TensorInfo& get(const std::string& name, const std::string& where) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<std::shared_ptr<MappedFile>>& files() const { return maps_; }

 private:
  void add_file(const uint8_t* data, size_t size, const std::string& name,
                const std::vector<std::string>* only);
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::shared_ptr<MappedFile>> maps_;
};

class Writer {
 public:
  void add(const std::string& name, DType dtype, std::vector<uint64_t> shape,
           std::vector<uint8_t> bytes);
  void set_metadata(const std::string& key, const std::string& value);
  void write(const std::string& path) const;  // atomic

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace tern::st
