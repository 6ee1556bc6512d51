// GGUF container (v2 and v3): reader over an mmapped file and an atomic writer.
// Format reference: ggml's docs/gguf.md. Header: "GGUF", u32 version, u64 tensor
// count, u64 kv count; then key/values, tensor infos, padding to general.alignment
// (default 32) and the tensor data. Every count, size and offset read from a file
// is checked against the file size before use: a corrupt file gives a tern::Error
// naming the file and the field, never a crash or a huge allocation.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "util/mapped_file.h"

namespace tern::gguf {

// ggml tensor type ids (ggml.h); I2_S is bitnet.cpp's id.
enum class Type : uint32_t {
  F32 = 0,
  F16 = 1,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  I2_S = 36,
};

enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// Known type -> name ("f32", "i2_s", ...). Unknown ids give "type<N>".
std::string type_name(uint32_t type);
// True for the types tern can read.
bool type_supported(uint32_t type);
// Bytes of a tensor of n elements of this type (rows of ne0 elements). Throws for
// unsupported types or element counts the type's block size does not divide.
uint64_t type_nbytes(Type type, uint64_t ne0, uint64_t n_elements);

// "uint8", "string", "array", ... for error messages. Unknown ids give "value_type<N>".
std::string value_type_name(ValueType t);

// One metadata value. Scalars use one of u/i/f/b/str; arrays keep their element type
// and fill exactly one of ints/floats/strs (bools go to ints). Nested arrays are
// rejected by the reader: no BitNet file uses them.
struct Value {
  ValueType type = ValueType::UINT32;
  ValueType elem_type = ValueType::UINT8;  // ARRAY only
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string str;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strs;

  static Value of_u32(uint32_t v);
  static Value of_i32(int32_t v);
  static Value of_f32(float v);
  static Value of_bool(bool v);
  static Value of_str(std::string v);
  static Value of_strs(std::vector<std::string> v);
  static Value of_i32s(std::vector<int64_t> v);
  static Value of_f32s(std::vector<double> v);
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the contiguous (row) length
  uint32_t type = 0;
  uint64_t offset = 0;       // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping
  uint64_t n_elements() const;
};

class Reader {
 public:
  // Opens, maps (or reads: FileAccess::Read) and validates the whole file. Throws
  // tern::Error on any problem.
  static Reader open(const std::string& path, FileAccess how = FileAccess::Map);
  // Same over bytes already in memory (used by the fuzzer); `name` is used in errors.
  static Reader parse(const uint8_t* data, size_t size, const std::string& name);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::map<std::string, Value>& kv() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  std::shared_ptr<MappedFile> mapping() const { return map_; }

  const Value* find(const std::string& key) const;
  const TensorInfo* find_tensor(const std::string& name) const;
  // Typed getters; throw "PATH: metadata key KEY: missing / has type T, expected ..."
  uint64_t get_uint(const std::string& key) const;  // any integer type >= 0
  double get_float(const std::string& key) const;   // float or integer types
  std::string get_string(const std::string& key) const;
  bool get_bool(const std::string& key) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  std::shared_ptr<MappedFile> map_;
};

class Writer {
 public:
  void set(const std::string& key, Value v);
  // `data` must stay valid until write(); its size must equal type_nbytes(...).
  void add_tensor(const std::string& name, std::vector<uint64_t> ne, Type type,
                  std::span<const uint8_t> data);
  // Same, but the writer keeps the bytes.
  void add_tensor(const std::string& name, std::vector<uint64_t> ne, Type type,
                  std::vector<uint8_t> owned);
  // Writes GGUF v3 atomically (temp file + rename).
  void write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    std::vector<uint64_t> ne;
    Type type;
    std::span<const uint8_t> data;
    std::shared_ptr<std::vector<uint8_t>> owned;
  };
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<Pending> tensors_;
};

}  // namespace tern::gguf
