// safetensors reader/writer: round trips, sharded model directories, and corrupt
// headers that must each give a tern::Error naming the file and the field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "tern/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace tern::st;

namespace {

using tern::test::TempDir;
using tern::test::read_bytes;
using tern::test::write_bytes;

void write_text(const std::string& path, const std::string& s) {
  std::ofstream out(path, std::ios::binary);
  out << s;
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t k = 0; k < n; ++k) v[k] = static_cast<uint8_t>(seed + k * 13);
  return v;
}

// A raw safetensors file: u64 header length, the header text as given, then data.
std::vector<uint8_t> raw_file(const std::string& header, size_t data_bytes,
                              uint64_t declared_len = ~0ull) {
  uint64_t n = declared_len == ~0ull ? header.size() : declared_len;
  std::vector<uint8_t> b(8);
  std::memcpy(b.data(), &n, 8);
  b.insert(b.end(), header.begin(), header.end());
  std::vector<uint8_t> d = pattern(data_bytes, 3);
  b.insert(b.end(), d.begin(), d.end());
  return b;
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const tern::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    }
    return;
  }
  ADD_FAILURE() << "no tern::Error thrown; expected one mentioning " << parts.at(0);
}

// Writes the bytes to a file and checks open_file() and parse() both reject them.
void expect_bad_file(const std::vector<uint8_t>& bytes, const std::vector<std::string>& parts) {
  TempDir dir;
  std::string path = dir.file("bad_case.safetensors");
  write_bytes(path, bytes);
  std::vector<std::string> with_path = parts;
  with_path.push_back(path);
  expect_error([&] { Reader::open_file(path); }, with_path);
  std::vector<std::string> with_name = parts;
  with_name.push_back("mem.safetensors");
  expect_error([&] { Reader::parse(bytes.data(), bytes.size(), "mem.safetensors"); }, with_name);
}

void expect_bad_header(const std::string& header, size_t data_bytes,
                       const std::vector<std::string>& parts) {
  expect_bad_file(raw_file(header, data_bytes), parts);
}

// Two-tensor writer used by several tests.
Writer small_writer() {
  Writer w;
  w.add("model.norm.weight", DType::BF16, {4}, pattern(8, 1));
  w.add("model.layers.0.mlp.up_proj.weight", DType::U8, {2, 3}, pattern(6, 2));
  w.set_metadata("format", "pt");
  return w;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Round trips

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir dir;
  struct Case {
    std::string name;
    DType dtype;
    std::vector<uint64_t> shape;
  };
  const std::vector<Case> cases = {
      {"bool", DType::BOOL, {3}},     {"u8", DType::U8, {2, 3}},   {"i8", DType::I8, {5}},
      {"u16", DType::U16, {3}},       {"i16", DType::I16, {1, 1}}, {"f16", DType::F16, {7}},
      {"bf16", DType::BF16, {2, 2}},  {"u32", DType::U32, {3}},    {"i32", DType::I32, {1}},
      {"f32", DType::F32, {2, 1, 3}}, {"u64", DType::U64, {2}},    {"i64", DType::I64, {1}},
      {"f64", DType::F64, {3}},       {"scalar", DType::F32, {}},  {"empty", DType::F32, {0, 4}},
  };
  Writer w;
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    uint64_t n = 1;
    for (uint64_t d : c.shape) n *= d;
    w.add(c.name, c.dtype, c.shape, pattern(n * dtype_size(c.dtype), static_cast<uint8_t>(k)));
  }
  w.set_metadata("format", "pt");
  w.set_metadata("note", "tern test");
  std::string path = dir.file("all.safetensors");
  w.write(path);

  std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);  // data starts 8-byte aligned

  Reader from_file = Reader::open_file(path);
  Reader from_mem = Reader::parse(bytes.data(), bytes.size(), "mem");
  for (const Reader* r : {&from_file, &from_mem}) {
    ASSERT_EQ(r->tensors().size(), cases.size());
    EXPECT_EQ(r->metadata().at("format"), "pt");
    EXPECT_EQ(r->metadata().at("note"), "tern test");
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      const TensorInfo* t = r->find(c.name);
      ASSERT_NE(t, nullptr) << c.name;
      EXPECT_EQ(t->dtype, c.dtype);
      EXPECT_EQ(t->shape, c.shape);
      uint64_t n = t->n_elements();
      EXPECT_EQ(t->nbytes, n * dtype_size(c.dtype));
      EXPECT_EQ(std::vector<uint8_t>(t->data, t->data + t->nbytes),
                pattern(t->nbytes, static_cast<uint8_t>(k)));
      // Each tensor starts at a multiple of its element size within the file.
      const uint8_t* base = r == &from_mem ? bytes.data() : nullptr;
      if (base != nullptr && t->nbytes > 0) {
        EXPECT_EQ(static_cast<size_t>(t->data - base) % dtype_size(c.dtype), 0u) << c.name;
      }
    }
  }
  EXPECT_EQ(from_file.find("f64")->file, path);
  EXPECT_EQ(dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(dtype_size(DType::F64), 8u);
}

TEST(Safetensors, HeaderIsSortedJsonWithContiguousOffsets) {
  TempDir dir;
  std::string path = dir.file("sorted.safetensors");
  Writer w;
  w.add("b", DType::U8, {3}, pattern(3, 1));
  w.add("a", DType::F32, {2}, pattern(8, 2));
  w.add("c", DType::U8, {1}, pattern(1, 3));
  w.write(path);
  std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  std::string header(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(n));
  EXPECT_LT(header.find("\"a\""), header.find("\"b\""));
  EXPECT_LT(header.find("\"b\""), header.find("\"c\""));
  EXPECT_EQ(header.find("__metadata__"), std::string::npos);  // none set
  // The reference reader requires the tensors to tile the data section exactly.
  nlohmann::json j = nlohmann::json::parse(header);
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [k, v] : j.items())
    spans.emplace_back(v["data_offsets"][0], v["data_offsets"][1]);
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (auto [b, e] : spans) {
    EXPECT_EQ(b, at);
    at = e;
  }
  EXPECT_EQ(at, bytes.size() - 8 - n);
}

TEST(Safetensors, GetNamesTheMissingTensor) {
  TempDir dir;
  std::string path = dir.file("g.safetensors");
  small_writer().write(path);
  Reader r = Reader::open_file(path);
  EXPECT_EQ(r.get("model.norm.weight", path).dtype, DType::BF16);
  expect_error([&] { r.get("lm_head.weight", path); }, {path, "tensor lm_head.weight: missing"});
}

TEST(Safetensors, WriterRejectsBadInput) {
  Writer w;
  expect_error(
      [&] {
        w.add("t", DType::F32, {2, 2}, pattern(15, 0));
      },
      {"tensor t", "15 bytes", "expected 16"});
  expect_error([&] { w.add("__metadata__", DType::U8, {1}, pattern(1, 0)); }, {"__metadata__"});
  w.add("t", DType::U8, {1}, pattern(1, 0));
  expect_error([&] { w.add("t", DType::U8, {1}, pattern(1, 0)); }, {"tensor t", "duplicate"});
}

// ---------------------------------------------------------------------------------------
// Model directories

TEST(Safetensors, OpenDirSingleFile) {
  TempDir dir;
  small_writer().write(dir.file("model.safetensors"));
  Reader r = Reader::open_dir(dir.path.string());
  EXPECT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.find("model.norm.weight")->file, dir.file("model.safetensors"));
}

TEST(Safetensors, OpenDirSharded) {
  TempDir dir;
  Writer a, b;
  a.add("x.weight", DType::F32, {2}, pattern(8, 1));
  a.add("y.weight", DType::F32, {1}, pattern(4, 2));
  a.add("unlisted", DType::U8, {1}, pattern(1, 3));
  b.add("z.weight", DType::BF16, {3}, pattern(6, 4));
  b.set_metadata("format", "pt");
  a.write(dir.file("model-00001-of-00002.safetensors"));
  b.write(dir.file("model-00002-of-00002.safetensors"));
  write_text(dir.file("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 18},
    "weight_map": {
      "x.weight": "model-00001-of-00002.safetensors",
      "y.weight": "model-00001-of-00002.safetensors",
      "z.weight": "model-00002-of-00002.safetensors"
    }})");
  Reader r = Reader::open_dir(dir.path.string());
  EXPECT_EQ(r.tensors().size(), 3u);  // tensors the index does not name are left out
  EXPECT_EQ(r.find("unlisted"), nullptr);
  EXPECT_EQ(r.find("z.weight")->file, dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(std::vector<uint8_t>(r.find("x.weight")->data, r.find("x.weight")->data + 8),
            pattern(8, 1));
  EXPECT_EQ(std::vector<uint8_t>(r.find("z.weight")->data, r.find("z.weight")->data + 6),
            pattern(6, 4));
  EXPECT_EQ(r.metadata().at("format"), "pt");
}

TEST(Safetensors, OpenDirErrors) {
  TempDir dir;
  std::string d = dir.path.string();
  expect_error([&] { Reader::open_dir(d); },
               {d, "no model.safetensors or model.safetensors.index.json"});

  std::string index = dir.file("model.safetensors.index.json");
  // Missing shard file.
  write_text(index, R"({"weight_map": {"x.weight": "model-00009-of-00009.safetensors"}})");
  expect_error([&] { Reader::open_dir(d); }, {"model-00009-of-00009.safetensors"});

  // The index names a tensor its shard does not have.
  small_writer().write(dir.file("shard.safetensors"));
  write_text(index, R"({"weight_map": {"model.norm.weight": "shard.safetensors",
                                        "ghost.weight": "shard.safetensors"}})");
  expect_error([&] { Reader::open_dir(d); },
               {dir.file("shard.safetensors"), "tensor ghost.weight", "missing"});

  // Shard names must stay inside the directory.
  write_text(index, R"({"weight_map": {"x": "../shard.safetensors"}})");
  expect_error([&] { Reader::open_dir(d); }, {index, "weight_map", "../shard.safetensors"});
  write_text(index, R"({"weight_map": {"x": "sub/shard.safetensors"}})");
  expect_error([&] { Reader::open_dir(d); }, {index, "invalid shard file name"});

  write_text(index, R"({"weight_map": {"x": 3}})");
  expect_error([&] { Reader::open_dir(d); }, {index, "tensor x", "not a string"});
  write_text(index, R"({"metadata": {}})");
  expect_error([&] { Reader::open_dir(d); }, {index, "weight_map"});
  write_text(index, R"({"weight_map": )");
  expect_error([&] { Reader::open_dir(d); }, {index, "invalid index JSON"});
}

// ---------------------------------------------------------------------------------------
// Corrupt input

TEST(Safetensors, EveryPrefixParsesOrThrows) {
  TempDir dir;
  std::string path = dir.file("p.safetensors");
  small_writer().write(path);
  std::vector<uint8_t> full = read_bytes(path);
  Reader::parse(full.data(), full.size(), "full");
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<long>(n));
    EXPECT_THROW(Reader::parse(prefix.data(), prefix.size(), "prefix"), tern::Error) << n;
  }
}

TEST(Safetensors, RejectsBadHeaderLength) {
  expect_bad_file({1, 0, 0}, {"too short"});
  expect_bad_file(raw_file("{}", 0, 1ull << 40), {"header length 1099511627776", "100000000"});
  expect_bad_file(raw_file("{}", 0, 3), {"header length 3", "past the end"});
  expect_bad_file(raw_file("{}", 0, ~0ull - 1), {"header length"});
}

TEST(Safetensors, RejectsBadJson) {
  expect_bad_header("{\"a\": ", 0, {"invalid safetensors header JSON"});
  expect_bad_header("", 0, {"invalid safetensors header JSON"});
  expect_bad_header("[1, 2]", 0, {"not a JSON object"});
  expect_bad_header("{\"a\": 1}", 0, {"tensor a", "not a JSON object"});
  expect_bad_header("{\"__metadata__\": {\"k\": 1}}", 0, {"__metadata__", "k"});
  expect_bad_header("{\"__metadata__\": []}", 0, {"__metadata__"});
}

TEST(Safetensors, RejectsBadEntries) {
  auto entry = [](const std::string& dtype, const std::string& shape, const std::string& offs) {
    return "{\"w\": {\"dtype\": \"" + dtype + "\", \"shape\": " + shape +
           ", \"data_offsets\": " + offs + "}}";
  };
  // The valid base case.
  std::vector<uint8_t> ok = raw_file(entry("F32", "[2, 2]", "[0, 16]"), 16);
  EXPECT_EQ(Reader::parse(ok.data(), ok.size(), "ok").tensors().size(), 1u);
  // Spaces after the JSON (the writer's padding) are fine.
  ok = raw_file(entry("F32", "[2, 2]", "[0, 16]") + "    ", 16);
  EXPECT_EQ(Reader::parse(ok.data(), ok.size(), "ok").tensors().size(), 1u);

  expect_bad_header(entry("F8_E4M3", "[2, 2]", "[0, 4]"), 16,
                    {"tensor w", "unsupported dtype F8_E4M3"});
  expect_bad_header(entry("F32", "[2, 2]", "[0, 32]"), 16, {"tensor w", "data_offsets [0, 32]"});
  expect_bad_header(entry("F32", "[2, 2]", "[8, 4]"), 16, {"tensor w", "data_offsets [8, 4]"});
  expect_bad_header(entry("F32", "[2, 2]", "[0, 12]"), 16,
                    {"tensor w", "data_offsets span 12 bytes", "16"});
  expect_bad_header(entry("F32", "[2, -2]", "[0, 16]"), 16, {"tensor w", "shape"});
  expect_bad_header(entry("F32", "[2.5]", "[0, 16]"), 16, {"tensor w", "shape"});
  expect_bad_header(entry("F32", "3", "[0, 16]"), 16, {"tensor w", "shape"});
  expect_bad_header(entry("F32", "[4294967296, 4294967296, 4294967296]", "[0, 16]"), 16,
                    {"tensor w", "shape", "overflows"});
  expect_bad_header(entry("F32", "[4]", "[0]"), 16, {"tensor w", "data_offsets"});
  expect_bad_header(entry("F32", "[4]", "[0, -16]"), 16, {"tensor w", "data_offsets"});
  expect_bad_header(entry("F32", "[4]", "[0, 18446744073709551615]"), 16,
                    {"tensor w", "data_offsets"});
  expect_bad_header("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 16,
                    {"tensor w", "dtype"});
  expect_bad_header("{\"w\": {\"dtype\": 5, \"shape\": [1], \"data_offsets\": [0, 4]}}", 16,
                    {"tensor w", "dtype"});
  expect_bad_header("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 16,
                    {"tensor w", "shape"});
  expect_bad_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 16,
                    {"tensor w", "data_offsets"});
}
