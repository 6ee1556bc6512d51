// GGUF reader and writer. The reader trusts nothing in the file: every length, count,
// shape and offset is checked against the bytes that are actually there before it is
// used, so a truncated or hostile file gives a tern::Error, never a crash or a huge
// allocation. Value conventions: unsigned integer scalars live in Value::u, signed in
// Value::i, floats in Value::f; integer and bool arrays in ints (UINT64 elements are
// stored bit for bit, so values above INT64_MAX read back negative), float arrays in
// floats, string arrays in strs.
#include "model/gguf.h"

#include <bit>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include "tern/error.h"
#include "util/atomic_file.h"

namespace tern::gguf {

static_assert(std::endian::native == std::endian::little,
              "the GGUF code reads and writes little-endian values in place");

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr size_t kHeaderBytes = 4 + 4 + 8 + 8;  // magic, version, tensor count, kv count
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr uint64_t kMaxElements = uint64_t{1} << 62;
// Smallest possible encodings, used to reject counts the file cannot hold before any
// allocation: a kv is at least a u64 key length + u32 value type; a tensor info is at
// least a u64 name length + u32 n_dims + u64 ne0 + u32 type (+ u64 offset).
constexpr uint64_t kMinKvBytes = 12;
constexpr uint64_t kMinTensorInfoBytes = 24;
constexpr const char* kAlignmentKey = "general.alignment";

// Bounds-checked little-endian reader over the file bytes. `what` names the field
// being read so the error says what was cut off.
struct Cursor {
  const uint8_t* data;
  size_t size;
  const std::string& path;
  size_t pos = 0;

  size_t remaining() const { return size - pos; }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      fail("{}: {}: needs {} bytes at offset {} but the file ends at {}", path, what, n, pos, size);
    }
  }

  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what) {
    uint64_t n = read<uint64_t>(what);
    if (n > remaining()) {
      fail("{}: {}: string length {} at offset {} runs past the end of the file ({} bytes)", path,
           what, n, pos - 8, size);
    }
    std::string s(reinterpret_cast<const char*>(data + pos), static_cast<size_t>(n));
    pos += static_cast<size_t>(n);
    return s;
  }
};

// Keys and tensor names come from the file: escape control bytes and cut long ones
// so that an error message stays one readable line.
std::string printable(std::string_view s) {
  constexpr size_t kMaxShown = 120;
  std::string out;
  for (size_t k = 0; k < s.size() && k < kMaxShown; ++k) {
    unsigned char ch = static_cast<unsigned char>(s[k]);
    if (ch < 0x20 || ch == 0x7f) {
      out += fmt::format("\\x{:02x}", ch);
    } else {
      out += static_cast<char>(ch);
    }
  }
  if (s.size() > kMaxShown) out += fmt::format("...({} bytes)", s.size());
  return out;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

// Bytes one element of this type takes in the file; strings count their length
// prefix only, which is the minimum. Used to bound array counts.
size_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL: return 1;
    case ValueType::UINT16:
    case ValueType::INT16: return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32: return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
    case ValueType::STRING: return 8;
    case ValueType::ARRAY: return 12;  // element type + count
  }
  return 1;
}

bool is_unsigned(ValueType t) {
  return t == ValueType::UINT8 || t == ValueType::UINT16 || t == ValueType::UINT32 ||
         t == ValueType::UINT64;
}
bool is_signed(ValueType t) {
  return t == ValueType::INT8 || t == ValueType::INT16 || t == ValueType::INT32 ||
         t == ValueType::INT64;
}
bool is_float(ValueType t) { return t == ValueType::FLOAT32 || t == ValueType::FLOAT64; }

bool read_bool(Cursor& c, std::string_view what) {
  uint8_t b = c.read<uint8_t>(what);
  // The spec calls anything but 0 and 1 invalid; accepting it would hide corruption.
  if (b > 1) fail("{}: {}: invalid bool byte {}", c.path, what, b);
  return b == 1;
}

// Reads one integer of type t (signed or unsigned, or bool) widened to 64 bits.
void read_integer(Cursor& c, ValueType t, std::string_view what, uint64_t& u, int64_t& i) {
  switch (t) {
    case ValueType::UINT8: u = c.read<uint8_t>(what); return;
    case ValueType::UINT16: u = c.read<uint16_t>(what); return;
    case ValueType::UINT32: u = c.read<uint32_t>(what); return;
    case ValueType::UINT64: u = c.read<uint64_t>(what); return;
    case ValueType::INT8: i = c.read<int8_t>(what); return;
    case ValueType::INT16: i = c.read<int16_t>(what); return;
    case ValueType::INT32: i = c.read<int32_t>(what); return;
    case ValueType::INT64: i = c.read<int64_t>(what); return;
    case ValueType::BOOL: u = read_bool(c, what) ? 1 : 0; return;
    default:
      fail("{}: {}: internal error: {} is not an integer type", c.path, what, value_type_name(t));
  }
}

double read_float(Cursor& c, ValueType t, std::string_view what) {
  if (t == ValueType::FLOAT32) return c.read<float>(what);
  return c.read<double>(what);
}

Value read_array(Cursor& c, std::string_view what) {
  Value v;
  v.type = ValueType::ARRAY;
  uint32_t et = c.read<uint32_t>(what);
  if (!valid_value_type(et)) fail("{}: {}: unknown array element type {}", c.path, what, et);
  v.elem_type = static_cast<ValueType>(et);
  if (v.elem_type == ValueType::ARRAY) {
    fail("{}: {}: nested arrays are not supported", c.path, what);
  }
  uint64_t n = c.read<uint64_t>(what);
  // Check the count against the bytes left before reserving anything.
  size_t es = min_encoded_size(v.elem_type);
  if (n > c.remaining() / es) {
    fail("{}: {}: array of {} {} elements runs past the end of the file ({} bytes left)", c.path,
         what, n, value_type_name(v.elem_type), c.remaining());
  }
  if (v.elem_type == ValueType::STRING) {
    v.strs.reserve(n);
    for (uint64_t k = 0; k < n; ++k) v.strs.push_back(c.read_string(what));
  } else if (is_float(v.elem_type)) {
    v.floats.reserve(n);
    for (uint64_t k = 0; k < n; ++k) v.floats.push_back(read_float(c, v.elem_type, what));
  } else {
    v.ints.reserve(n);
    for (uint64_t k = 0; k < n; ++k) {
      uint64_t u = 0;
      int64_t i = 0;
      read_integer(c, v.elem_type, what, u, i);
      v.ints.push_back(is_signed(v.elem_type) ? i : static_cast<int64_t>(u));
    }
  }
  return v;
}

Value read_value(Cursor& c, ValueType t, std::string_view what) {
  if (t == ValueType::ARRAY) return read_array(c, what);
  Value v;
  v.type = t;
  if (t == ValueType::STRING) {
    v.str = c.read_string(what);
  } else if (t == ValueType::BOOL) {
    v.b = read_bool(c, what);
  } else if (is_float(t)) {
    v.f = read_float(c, t, what);
  } else {
    read_integer(c, t, what, v.u, v.i);
  }
  return v;
}

std::map<std::string, Value> read_kvs(Cursor& c, uint64_t n_kv) {
  std::map<std::string, Value> kv;
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string(fmt::format("metadata key #{}", k));
    std::string what = fmt::format("metadata key {}", printable(key));
    uint32_t t = c.read<uint32_t>(what);
    if (!valid_value_type(t)) fail("{}: {}: unknown value type {}", c.path, what, t);
    Value v = read_value(c, static_cast<ValueType>(t), what);
    if (!kv.emplace(std::move(key), std::move(v)).second) {
      fail("{}: {}: duplicate key", c.path, what);
    }
  }
  return kv;
}

uint32_t alignment_from(const std::map<std::string, Value>& kv, const std::string& path) {
  auto it = kv.find(kAlignmentKey);
  if (it == kv.end()) return kDefaultAlignment;
  const Value& v = it->second;
  if (v.type != ValueType::UINT32) {
    fail("{}: metadata key {}: has type {}, expected uint32", path, kAlignmentKey,
         value_type_name(v.type));
  }
  // Offsets are rounded up with a mask, which needs a power of two.
  if (v.u == 0 || !std::has_single_bit(v.u)) {
    fail("{}: metadata key {}: {} is not a nonzero power of two", path, kAlignmentKey, v.u);
  }
  return static_cast<uint32_t>(v.u);
}

TensorInfo read_tensor_info(Cursor& c, uint64_t index) {
  TensorInfo t;
  t.name = c.read_string(fmt::format("tensor #{}: name", index));
  std::string what = fmt::format("tensor {}", printable(t.name));
  uint32_t n_dims = c.read<uint32_t>(what);
  if (n_dims < 1 || n_dims > kMaxDims) {
    fail("{}: {}: n_dims {} out of range 1..{}", c.path, what, n_dims, kMaxDims);
  }
  uint64_t n = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t ne = c.read<uint64_t>(what);
    if (ne == 0) fail("{}: {}: ne[{}] is 0", c.path, what, d);
    if (ne > kMaxElements / n) {
      fail("{}: {}: ne[{}] = {}: element count overflows 2^62", c.path, what, d, ne);
    }
    n *= ne;
    t.ne.push_back(ne);
  }
  t.type = c.read<uint32_t>(what);
  t.offset = c.read<uint64_t>(what);
  if (!type_supported(t.type)) {
    fail("{}: {}: unsupported tensor type {} ({})", c.path, what, t.type, type_name(t.type));
  }
  try {
    t.nbytes = type_nbytes(static_cast<Type>(t.type), t.ne[0], n);
  } catch (const Error& e) {
    fail("{}: {}: {}", c.path, what, e.what());
  }
  return t;
}

// Checks each tensor's byte range against the data section and points it there.
void place_tensors(std::vector<TensorInfo>& tensors, const uint8_t* data, size_t size,
                   uint64_t data_start, uint64_t alignment, const std::string& path) {
  if (tensors.empty()) return;  // a tensorless file may end before the padding
  if (data_start > size) {
    fail("{}: data section starts at {}, past the end of the file ({} bytes)", path, data_start,
         size);
  }
  uint64_t data_size = size - data_start;
  for (TensorInfo& t : tensors) {
    if (t.offset % alignment != 0) {
      fail("{}: tensor {}: offset {} is not a multiple of the alignment {}", path,
           printable(t.name), t.offset, alignment);
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      fail("{}: tensor {}: offset {} + {} bytes runs past the end of the data section ({} bytes)",
           path, printable(t.name), t.offset, t.nbytes, data_size);
    }
    t.data = data + data_start + t.offset;
  }
}

uint64_t checked_mul(uint64_t a, uint64_t b, Type type) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) {
    fail("type {}: byte size of {} elements overflows", type_name(static_cast<uint32_t>(type)), a);
  }
  return a * b;
}

void require_row_multiple(Type type, uint64_t ne0, uint64_t block) {
  if (ne0 % block != 0) {
    fail("type {}: row length ne[0] = {} is not a multiple of the block size {}",
         type_name(static_cast<uint32_t>(type)), ne0, block);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Types

std::string type_name(uint32_t type) {
  switch (type) {
    case 0: return "f32";
    case 1: return "f16";
    case 2: return "q4_0";
    case 3: return "q4_1";
    case 6: return "q5_0";
    case 7: return "q5_1";
    case 8: return "q8_0";
    case 9: return "q8_1";
    case 10: return "q2_k";
    case 11: return "q3_k";
    case 12: return "q4_k";
    case 13: return "q5_k";
    case 14: return "q6_k";
    case 15: return "q8_k";
    case 24: return "i8";
    case 25: return "i16";
    case 26: return "i32";
    case 27: return "i64";
    case 28: return "f64";
    case 30: return "bf16";
    case 34: return "tq1_0";
    case 35: return "tq2_0";
    case 36: return "i2_s";
    default: return fmt::format("type{}", type);
  }
}

bool type_supported(uint32_t type) {
  switch (static_cast<Type>(type)) {
    case Type::F32:
    case Type::F16:
    case Type::BF16:
    case Type::TQ1_0:
    case Type::TQ2_0:
    case Type::I2_S: return true;
  }
  return false;
}

uint64_t type_nbytes(Type type, uint64_t ne0, uint64_t n_elements) {
  if (ne0 == 0 || n_elements % ne0 != 0) {
    fail("type {}: element count {} is not a whole number of rows of {}",
         type_name(static_cast<uint32_t>(type)), n_elements, ne0);
  }
  switch (type) {
    case Type::F32: return checked_mul(n_elements, 4, type);
    case Type::F16:
    case Type::BF16: return checked_mul(n_elements, 2, type);
    case Type::TQ2_0:  // 64 bytes of 2-bit codes + fp16 scale per 256 weights of a row
      require_row_multiple(type, ne0, 256);
      return n_elements / 256 * 66;
    case Type::TQ1_0:  // 48 + 4 bytes of base-3 codes + fp16 scale per 256 weights
      require_row_multiple(type, ne0, 256);
      return n_elements / 256 * 54;
    case Type::I2_S:  // 2 bits per weight in 128-weight blocks, then one f32 scale + pad
      if (n_elements % 128 != 0) {
        fail("type i2_s: element count {} is not a multiple of 128", n_elements);
      }
      return n_elements / 4 + 32;
  }
  fail("unsupported tensor type {} ({})", static_cast<uint32_t>(type),
       type_name(static_cast<uint32_t>(type)));
}

std::string value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8: return "uint8";
    case ValueType::INT8: return "int8";
    case ValueType::UINT16: return "uint16";
    case ValueType::INT16: return "int16";
    case ValueType::UINT32: return "uint32";
    case ValueType::INT32: return "int32";
    case ValueType::FLOAT32: return "float32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::UINT64: return "uint64";
    case ValueType::INT64: return "int64";
    case ValueType::FLOAT64: return "float64";
  }
  return fmt::format("value_type{}", static_cast<uint32_t>(t));
}

// ---------------------------------------------------------------------------------------
// Values

Value Value::of_u32(uint32_t v) {
  Value x;
  x.type = ValueType::UINT32;
  x.u = v;
  return x;
}
Value Value::of_i32(int32_t v) {
  Value x;
  x.type = ValueType::INT32;
  x.i = v;
  return x;
}
Value Value::of_f32(float v) {
  Value x;
  x.type = ValueType::FLOAT32;
  x.f = v;
  return x;
}
Value Value::of_bool(bool v) {
  Value x;
  x.type = ValueType::BOOL;
  x.b = v;
  return x;
}
Value Value::of_str(std::string v) {
  Value x;
  x.type = ValueType::STRING;
  x.str = std::move(v);
  return x;
}
Value Value::of_strs(std::vector<std::string> v) {
  Value x;
  x.type = ValueType::ARRAY;
  x.elem_type = ValueType::STRING;
  x.strs = std::move(v);
  return x;
}
Value Value::of_i32s(std::vector<int64_t> v) {
  Value x;
  x.type = ValueType::ARRAY;
  x.elem_type = ValueType::INT32;
  x.ints = std::move(v);
  return x;
}
Value Value::of_f32s(std::vector<double> v) {
  Value x;
  x.type = ValueType::ARRAY;
  x.elem_type = ValueType::FLOAT32;
  x.floats = std::move(v);
  return x;
}

uint64_t TensorInfo::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------
// Reader

Reader Reader::open(const std::string& path, FileAccess how) {
  auto map = MappedFile::open(path, how);
  Reader r = parse(map->data(), map->size(), path);
  r.map_ = std::move(map);  // tensors point into the mapping; keep it alive with them
  return r;
}

Reader Reader::parse(const uint8_t* data, size_t size, const std::string& name) {
  if (size < kHeaderBytes) {
    fail("{}: file is {} bytes, shorter than the {}-byte GGUF header", name, size, kHeaderBytes);
  }
  Cursor c{data, size, name};
  if (std::memcmp(data, kMagic, 4) != 0) {
    fail("{}: magic: not a GGUF file (first bytes {:02x} {:02x} {:02x} {:02x})", name, data[0],
         data[1], data[2], data[3]);
  }
  c.pos = 4;
  Reader r;
  r.path_ = name;
  r.version_ = c.read<uint32_t>("version");
  if (r.version_ != 2 && r.version_ != 3) {
    // v1 used 32-bit counts and lengths; a byte-swapped 2 or 3 is a big-endian file.
    bool big_endian = r.version_ == 0x02000000u || r.version_ == 0x03000000u;
    fail("{}: unsupported GGUF version {}{}", name, r.version_,
         big_endian ? " (big-endian files are not supported)" : "");
  }
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata kv count");
  if (n_kv > size / kMinKvBytes) {
    fail("{}: metadata kv count {} is impossible for a file of {} bytes", name, n_kv, size);
  }
  if (n_tensors > size / kMinTensorInfoBytes) {
    fail("{}: tensor count {} is impossible for a file of {} bytes", name, n_tensors, size);
  }

  r.kv_ = read_kvs(c, n_kv);
  r.alignment_ = alignment_from(r.kv_, name);

  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t = read_tensor_info(c, k);
    if (!r.tensor_index_.emplace(t.name, r.tensors_.size()).second) {
      fail("{}: tensor {}: duplicate tensor name", name, printable(t.name));
    }
    r.tensors_.push_back(std::move(t));
  }

  // The data section starts at the end of the tensor infos, rounded up to the alignment.
  uint64_t data_start = (uint64_t{c.pos} + r.alignment_ - 1) & ~(r.alignment_ - 1);
  place_tensors(r.tensors_, data, size, data_start, r.alignment_, name);
  return r;
}

const Value* Reader::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const TensorInfo* Reader::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
const Value& require_key(const Reader& r, const std::string& key) {
  const Value* v = r.find(key);
  if (v == nullptr) fail("{}: metadata key {}: missing", r.path(), key);
  return *v;
}
[[noreturn]] void wrong_type(const Reader& r, const std::string& key, const Value& v,
                             std::string_view expected) {
  fail("{}: metadata key {}: has type {}, expected {}", r.path(), key, value_type_name(v.type),
       expected);
}
}  // namespace

uint64_t Reader::get_uint(const std::string& key) const {
  const Value& v = require_key(*this, key);
  if (is_unsigned(v.type)) return v.u;
  if (is_signed(v.type)) {
    if (v.i < 0) fail("{}: metadata key {}: value {} is negative", path_, key, v.i);
    return static_cast<uint64_t>(v.i);
  }
  wrong_type(*this, key, v, "an integer");
}

double Reader::get_float(const std::string& key) const {
  const Value& v = require_key(*this, key);
  if (is_float(v.type)) return v.f;
  if (is_unsigned(v.type)) return static_cast<double>(v.u);
  if (is_signed(v.type)) return static_cast<double>(v.i);
  wrong_type(*this, key, v, "a number");
}

std::string Reader::get_string(const std::string& key) const {
  const Value& v = require_key(*this, key);
  if (v.type != ValueType::STRING) wrong_type(*this, key, v, "a string");
  return v.str;
}

bool Reader::get_bool(const std::string& key) const {
  const Value& v = require_key(*this, key);
  if (v.type != ValueType::BOOL) wrong_type(*this, key, v, "a bool");
  return v.b;
}

// ---------------------------------------------------------------------------------------
// Writer

namespace {

// Appends the little-endian bytes of v to out.
template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

// Range-checked narrowing: a value that does not fit its declared type is a caller bug
// that would otherwise silently write a different number.
template <class T>
void put_unsigned(std::string& out, uint64_t v, const std::string& key) {
  if (v > std::numeric_limits<T>::max()) {
    fail("gguf writer: metadata key {}: value {} does not fit its type", key, v);
  }
  put<T>(out, static_cast<T>(v));
}

template <class T>
void put_signed(std::string& out, int64_t v, const std::string& key) {
  if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
    fail("gguf writer: metadata key {}: value {} does not fit its type", key, v);
  }
  put<T>(out, static_cast<T>(v));
}

// Writes one integer-like element (scalar or array element) of type t.
void put_integer(std::string& out, ValueType t, uint64_t u, int64_t i, const std::string& key) {
  switch (t) {
    case ValueType::UINT8: put_unsigned<uint8_t>(out, u, key); return;
    case ValueType::UINT16: put_unsigned<uint16_t>(out, u, key); return;
    case ValueType::UINT32: put_unsigned<uint32_t>(out, u, key); return;
    case ValueType::UINT64: put<uint64_t>(out, u); return;
    case ValueType::INT8: put_signed<int8_t>(out, i, key); return;
    case ValueType::INT16: put_signed<int16_t>(out, i, key); return;
    case ValueType::INT32: put_signed<int32_t>(out, i, key); return;
    case ValueType::INT64: put<int64_t>(out, i); return;
    case ValueType::BOOL:
      if (u > 1) fail("gguf writer: metadata key {}: bool value {} is not 0 or 1", key, u);
      put<uint8_t>(out, static_cast<uint8_t>(u));
      return;
    default:
      fail("gguf writer: metadata key {}: {} is not an integer type", key, value_type_name(t));
  }
}

void put_float(std::string& out, ValueType t, double f) {
  if (t == ValueType::FLOAT32) {
    put<float>(out, static_cast<float>(f));
  } else {
    put<double>(out, f);
  }
}

void put_array(std::string& out, const Value& v, const std::string& key) {
  ValueType et = v.elem_type;
  if (!valid_value_type(static_cast<uint32_t>(et)) || et == ValueType::ARRAY) {
    fail("gguf writer: metadata key {}: unsupported array element type {}", key,
         value_type_name(et));
  }
  put<uint32_t>(out, static_cast<uint32_t>(et));
  if (et == ValueType::STRING) {
    put<uint64_t>(out, v.strs.size());
    for (const std::string& s : v.strs) put_string(out, s);
  } else if (is_float(et)) {
    put<uint64_t>(out, v.floats.size());
    for (double f : v.floats) put_float(out, et, f);
  } else {
    put<uint64_t>(out, v.ints.size());
    for (int64_t x : v.ints) {
      // Unsigned (and bool) elements: negative values are rejected, except for UINT64
      // whose elements are stored bit for bit (see the top of this file).
      if ((is_unsigned(et) || et == ValueType::BOOL) && et != ValueType::UINT64 && x < 0) {
        fail("gguf writer: metadata key {}: value {} does not fit its type", key, x);
      }
      put_integer(out, et, static_cast<uint64_t>(x), x, key);
    }
  }
}

void put_value(std::string& out, const Value& v, const std::string& key) {
  if (!valid_value_type(static_cast<uint32_t>(v.type))) {
    fail("gguf writer: metadata key {}: unknown value type {}", key, static_cast<uint32_t>(v.type));
  }
  put<uint32_t>(out, static_cast<uint32_t>(v.type));
  switch (v.type) {
    case ValueType::STRING: put_string(out, v.str); return;
    case ValueType::ARRAY: put_array(out, v, key); return;
    case ValueType::BOOL: put<uint8_t>(out, v.b ? 1 : 0); return;
    case ValueType::FLOAT32:
    case ValueType::FLOAT64: put_float(out, v.type, v.f); return;
    default: put_integer(out, v.type, v.u, v.i, key); return;
  }
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

void Writer::set(const std::string& key, Value v) {
  for (auto& [k, old] : kv_) {
    if (k == key) {  // replace in place: keys keep their first insertion position
      old = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

void Writer::add_tensor(const std::string& name, std::vector<uint64_t> ne, Type type,
                        std::span<const uint8_t> data) {
  for (const Pending& p : tensors_) {
    if (p.name == name) fail("gguf writer: tensor {}: duplicate tensor name", name);
  }
  if (ne.empty() || ne.size() > kMaxDims) {
    fail("gguf writer: tensor {}: n_dims {} out of range 1..{}", name, ne.size(), kMaxDims);
  }
  uint64_t n = 1;
  for (size_t d = 0; d < ne.size(); ++d) {
    if (ne[d] == 0 || ne[d] > kMaxElements / n) {
      fail("gguf writer: tensor {}: ne[{}] = {} is zero or overflows", name, d, ne[d]);
    }
    n *= ne[d];
  }
  if (!type_supported(static_cast<uint32_t>(type))) {
    fail("gguf writer: tensor {}: unsupported tensor type {}", name, static_cast<uint32_t>(type));
  }
  uint64_t want;
  try {
    want = type_nbytes(type, ne[0], n);
  } catch (const Error& e) {
    fail("gguf writer: tensor {}: {}", name, e.what());
  }
  if (data.size() != want) {
    fail("gguf writer: tensor {}: data has {} bytes, expected {} for type {}", name, data.size(),
         want, type_name(static_cast<uint32_t>(type)));
  }
  tensors_.push_back(Pending{name, std::move(ne), type, data, nullptr});
}

void Writer::add_tensor(const std::string& name, std::vector<uint64_t> ne, Type type,
                        std::vector<uint8_t> owned) {
  auto keep = std::make_shared<std::vector<uint8_t>>(std::move(owned));
  add_tensor(name, std::move(ne), type, std::span<const uint8_t>(*keep));
  tensors_.back().owned = std::move(keep);  // the span above points into it
}

void Writer::write(const std::string& path) const {
  // The caller may choose the alignment through the key; otherwise the spec's default
  // of 32 applies without writing the key.
  uint64_t alignment = kDefaultAlignment;
  for (const auto& [k, v] : kv_) {
    if (k != kAlignmentKey) continue;
    if (v.type != ValueType::UINT32 || v.u == 0 || v.u > 0xffffffffu || !std::has_single_bit(v.u)) {
      fail("gguf writer: metadata key {}: must be a uint32 nonzero power of two", kAlignmentKey);
    }
    alignment = v.u;
  }

  std::string head;
  head.append(kMagic, 4);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_string(head, k);
    put_value(head, v, k);
  }
  uint64_t offset = 0;
  for (const Pending& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) put<uint64_t>(head, d);
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    offset = align_up(offset + t.data.size(), alignment);
  }
  head.resize(align_up(head.size(), alignment), '\0');

  AtomicFile f(path);
  f.write(head);
  const std::string zeros(alignment, '\0');
  for (const Pending& t : tensors_) {
    f.write(t.data.data(), t.data.size());
    f.write(zeros.data(), align_up(t.data.size(), alignment) - t.data.size());
  }
  f.commit();
}

}  // namespace tern::gguf
