// safetensors reader and writer. The JSON header is untrusted: every entry's dtype,
// shape and offsets are checked against the data that is actually in the file before
// a TensorInfo points at it.
#include "model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "tern/error.h"
#include "util/atomic_file.h"

namespace tern::st {

static_assert(std::endian::native == std::endian::little,
              "the header length is read and written as a native u64");

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// The reference implementation refuses larger headers; so do we, which also bounds
// the memory the JSON parser can be made to use.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},   {DType::I8, "I8", 1},
    {DType::U16, "U16", 2},   {DType::I16, "I16", 2}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::U32, "U32", 4}, {DType::I32, "I32", 4},
    {DType::F32, "F32", 4},   {DType::U64, "U64", 8}, {DType::I64, "I64", 8},
    {DType::F64, "F64", 8},
};

const DTypeEntry* find_dtype(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return &e;
  }
  return nullptr;
}

// Product of the dims times the element size, or an error if it cannot be a real size.
uint64_t checked_nbytes(const std::vector<uint64_t>& shape, size_t elem_size,
                        const std::string& file, const std::string& name) {
  uint64_t n = elem_size;
  for (uint64_t d : shape) {
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / d) {
      fail("{}: tensor {}: shape: byte size overflows", file, name);
    }
    n *= d;
  }
  return n;
}

// JSON integers that are non-negative (floats and negatives are rejected).
uint64_t json_uint(const json& j, const std::string& file, const std::string& name,
                   std::string_view field) {
  if (!j.is_number_unsigned()) {
    // Print numbers, but only the type of anything else: dumping a hostile, deeply
    // nested value would recurse without bound and could fill the message.
    fail("{}: tensor {}: {}: expected a non-negative integer, got {}", file, name, field,
         j.is_number() ? j.dump() : std::string(j.type_name()));
  }
  return j.get<uint64_t>();
}

struct Entry {
  TensorInfo info;
  uint64_t begin = 0;
};

Entry parse_entry(const std::string& name, const json& j, const uint8_t* data, uint64_t data_size,
                  const std::string& file) {
  if (!j.is_object()) fail("{}: tensor {}: entry is not a JSON object", file, name);
  Entry e;
  e.info.name = name;
  e.info.file = file;

  auto dt = j.find("dtype");
  if (dt == j.end() || !dt->is_string())
    fail("{}: tensor {}: dtype: missing or not a string", file, name);
  const DTypeEntry* d = find_dtype(dt->get_ref<const std::string&>());
  if (d == nullptr) {
    fail("{}: tensor {}: unsupported dtype {}", file, name, dt->get_ref<const std::string&>());
  }
  e.info.dtype = d->dtype;

  auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array())
    fail("{}: tensor {}: shape: missing or not an array", file, name);
  for (const json& x : *sh) e.info.shape.push_back(json_uint(x, file, name, "shape"));
  e.info.nbytes = checked_nbytes(e.info.shape, d->size, file, name);

  auto off = j.find("data_offsets");
  if (off == j.end() || !off->is_array() || off->size() != 2) {
    fail("{}: tensor {}: data_offsets: missing or not a [begin, end] pair", file, name);
  }
  uint64_t begin = json_uint((*off)[0], file, name, "data_offsets");
  uint64_t end = json_uint((*off)[1], file, name, "data_offsets");
  if (begin > end || end > data_size) {
    fail("{}: tensor {}: data_offsets [{}, {}] out of range of the {}-byte data section", file,
         name, begin, end, data_size);
  }
  if (end - begin != e.info.nbytes) {
    fail("{}: tensor {}: data_offsets span {} bytes, but dtype {} and shape need {}", file, name,
         end - begin, d->name, e.info.nbytes);
  }
  e.begin = begin;
  e.info.data = data + begin;
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& j, const std::string& file) {
  if (!j.is_object()) fail("{}: {}: not a JSON object", file, kMetadataKey);
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : j.items()) {
    if (!v.is_string()) fail("{}: {}: value of {} is not a string", file, kMetadataKey, k);
    m[k] = v.get<std::string>();
  }
  return m;
}

json parse_json(const uint8_t* begin, const uint8_t* end, const std::string& file,
                std::string_view what) {
  try {
    return json::parse(begin, end);
  } catch (const json::exception& e) {
    fail("{}: invalid {} JSON: {}", file, what, e.what());
  }
}

// Shard names come from a file we do not trust: keep them inside the model directory.
void check_shard_name(const std::string& shard, const std::string& index,
                      const std::string& tensor) {
  if (shard.empty() || shard.find('/') != std::string::npos ||
      shard.find('\\') != std::string::npos || shard.find("..") != std::string::npos) {
    fail("{}: weight_map: tensor {}: invalid shard file name \"{}\"", index, tensor, shard);
  }
}

}  // namespace

std::string dtype_name(DType d) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == d) return e.name;
  }
  return "?";
}

size_t dtype_size(DType d) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == d) return e.size;
  }
  return 0;
}

uint64_t TensorInfo::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------
// Reader

void Reader::add_file(const uint8_t* data, size_t size, const std::string& name,
                      const std::vector<std::string>* only) {
  if (size < 8) fail("{}: file is {} bytes, too short for a safetensors header", name, size);
  uint64_t n;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeaderBytes) {
    fail("{}: header length {} exceeds the {} byte limit", name, n, kMaxHeaderBytes);
  }
  if (n > size - 8) {
    fail("{}: header length {} runs past the end of the file ({} bytes)", name, n, size);
  }
  const uint8_t* body = data + 8 + n;
  uint64_t data_size = size - 8 - n;
  json header = parse_json(data + 8, body, name, "safetensors header");
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", name);

  std::vector<Entry> entries;
  for (const auto& [key, val] : header.items()) {
    if (key == kMetadataKey) {
      for (auto& [k, v] : parse_metadata(val, name)) metadata_.emplace(k, std::move(v));
      continue;
    }
    entries.push_back(parse_entry(key, val, body, data_size, name));
  }
  // File order, so walking the tensors reads the file front to back.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin; });

  std::set<std::string> wanted;
  if (only != nullptr) {
    wanted.insert(only->begin(), only->end());
    for (const std::string& t : wanted) {
      if (header.find(t) == header.end() || t == kMetadataKey) {
        fail("{}: tensor {}: missing, but {} maps it to this file", name, t, kIndexFile);
      }
    }
  }
  for (Entry& e : entries) {
    if (only != nullptr && wanted.count(e.info.name) == 0) {
      continue;  // the index puts this one elsewhere (or nowhere); trust the index
    }
    auto [it, fresh] = index_.emplace(e.info.name, tensors_.size());
    if (!fresh) {
      fail("{}: tensor {}: also in {}", name, e.info.name, tensors_[it->second].file);
    }
    tensors_.push_back(std::move(e.info));
  }
}

Reader Reader::parse(const uint8_t* data, size_t size, const std::string& name) {
  Reader r;
  r.add_file(data, size, name, nullptr);
  return r;
}

Reader Reader::open_file(const std::string& path, FileAccess how) {
  Reader r;
  auto map = MappedFile::open(path, how);
  r.add_file(map->data(), map->size(), path, nullptr);
  r.maps_.push_back(std::move(map));  // tensors point into it
  return r;
}

Reader Reader::open_dir(const std::string& dir, FileAccess how) {
  fs::path d(dir);
  fs::path index = d / kIndexFile;
  std::error_code ec;
  if (!fs::exists(index, ec)) {
    fs::path single = d / kSingleFile;
    if (fs::exists(single, ec)) return open_file(single.string(), how);
    fail("{}: no {} or {}", dir, kSingleFile, kIndexFile);
  }

  std::string index_path = index.string();
  std::string text = read_text_file(index_path);
  json j =
      parse_json(reinterpret_cast<const uint8_t*>(text.data()),
                 reinterpret_cast<const uint8_t*>(text.data() + text.size()), index_path, "index");
  auto wm = j.is_object() ? j.find("weight_map") : j.end();
  if (wm == j.end() || !wm->is_object()) {
    fail("{}: weight_map: missing or not a JSON object", index_path);
  }
  std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensors
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string())
      fail("{}: weight_map: tensor {}: shard is not a string", index_path, tensor);
    const std::string& s = shard.get_ref<const std::string&>();
    check_shard_name(s, index_path, tensor);
    by_shard[s].push_back(tensor);
  }

  Reader r;
  for (const auto& [shard, names] : by_shard) {
    auto map = MappedFile::open((d / shard).string(), how);
    r.add_file(map->data(), map->size(), map->path(), &names);
    r.maps_.push_back(std::move(map));
  }
  return r;
}

const TensorInfo* Reader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Reader::get(const std::string& name, const std::string& where) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) fail("{}: tensor {}: missing", where, name);
  return *t;
}

// ---------------------------------------------------------------------------------------
// Writer

void Writer::add(const std::string& name, DType dtype, std::vector<uint64_t> shape,
                 std::vector<uint8_t> bytes) {
  if (name.empty() || name == kMetadataKey) {
    fail("safetensors writer: invalid tensor name \"{}\"", name);
  }
  for (const Pending& p : tensors_) {
    if (p.name == name) fail("safetensors writer: tensor {}: duplicate tensor name", name);
  }
  uint64_t want = checked_nbytes(shape, dtype_size(dtype), "safetensors writer", name);
  if (bytes.size() != want) {
    fail("safetensors writer: tensor {}: data has {} bytes, expected {} for dtype {}", name,
         bytes.size(), want, dtype_name(dtype));
  }
  tensors_.push_back(Pending{name, dtype, std::move(shape), std::move(bytes)});
}

void Writer::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

void Writer::write(const std::string& path) const {
  // Data goes largest element size first, then by name, like the reference writer:
  // with no gaps between tensors (which the reference reader requires) every tensor
  // still starts at a multiple of its element size.
  std::vector<const Pending*> order;
  for (const Pending& p : tensors_) order.push_back(&p);
  std::sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) {
    size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  json header = json::object();  // keys come out sorted by name
  if (!metadata_.empty()) header[kMetadataKey] = metadata_;
  uint64_t offset = 0;
  for (const Pending* p : order) {
    header[p->name] = {{"dtype", dtype_name(p->dtype)},
                       {"shape", p->shape},
                       {"data_offsets", {offset, offset + p->bytes.size()}}};
    offset += p->bytes.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    fail("{}: cannot encode safetensors header: {}", path, e.what());  // e.g. bad UTF-8
  }
  // Pad with spaces so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');

  AtomicFile f(path);
  uint64_t n = text.size();
  f.write(&n, 8);
  f.write(text);
  for (const Pending* p : order) f.write(p->bytes.data(), p->bytes.size());
  f.commit();
}

}  // namespace tern::st
