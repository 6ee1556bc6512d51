// GGUF reader/writer: round trips through the writer, and hand-built corrupt files
// that must each give a tern::Error naming the file and the field, never a crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "tern/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace tern::gguf;

namespace {

using tern::test::TempDir;
using tern::test::read_bytes;
using tern::test::write_bytes;

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t k = 0; k < n; ++k) v[k] = static_cast<uint8_t>(seed + k * 7);
  return v;
}

// Runs f, which must throw tern::Error whose message contains every one of `parts`.
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

// Hand-assembles GGUF bytes, so tests can write exactly the corruption they want.
struct Bytes {
  std::vector<uint8_t> b;
  template <class T>
  Bytes& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Bytes& kv_u32(const std::string& key, uint32_t v) { return str(key).u32(4).u32(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  Bytes& pad(size_t align = 32) {
    while (b.size() % align != 0) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

// Writes `bytes` as NAME.gguf, then checks that both open() and parse() reject it with
// a message naming the file and containing `parts`.
void expect_bad_file(const std::vector<uint8_t>& bytes, const std::vector<std::string>& parts) {
  TempDir dir;
  std::string path = dir.file("bad_case.gguf");
  write_bytes(path, bytes);
  std::vector<std::string> with_path = parts;
  with_path.push_back(path);
  expect_error([&] { Reader::open(path); }, with_path);
  std::vector<std::string> with_name = parts;
  with_name.push_back("mem.gguf");
  expect_error([&] { Reader::parse(bytes.data(), bytes.size(), "mem.gguf"); }, with_name);
}

// A small valid file with metadata of several kinds and two tensors.
std::vector<uint8_t> small_valid_file(const TempDir& dir) {
  Writer w;
  w.set("general.architecture", Value::of_str("bitnet-b1.58"));
  w.set("bitnet-b1.58.block_count", Value::of_u32(2));
  w.set("tokenizer.ggml.tokens", Value::of_strs({"a", "bc", "def"}));
  w.set("tokenizer.ggml.scores", Value::of_f32s({0.5, -1.25}));
  w.add_tensor("norm.weight", {4}, Type::F32, pattern(16, 1));
  w.add_tensor("blk.0.attn_q.weight", {128, 1}, Type::I2_S, pattern(64, 2));
  std::string path = dir.file("small.gguf");
  w.write(path);
  return read_bytes(path);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Round trips

TEST(Gguf, RoundTripAllValueTypes) {
  TempDir dir;
  Writer w;
  auto scalar = [](ValueType t, uint64_t u, int64_t i, double f) {
    Value v;
    v.type = t;
    v.u = u;
    v.i = i;
    v.f = f;
    return v;
  };
  auto array = [](ValueType et, std::vector<int64_t> ints, std::vector<double> floats) {
    Value v;
    v.type = ValueType::ARRAY;
    v.elem_type = et;
    v.ints = std::move(ints);
    v.floats = std::move(floats);
    return v;
  };
  w.set("t.u8", scalar(ValueType::UINT8, 200, 0, 0));
  w.set("t.i8", scalar(ValueType::INT8, 0, -100, 0));
  w.set("t.u16", scalar(ValueType::UINT16, 60000, 0, 0));
  w.set("t.i16", scalar(ValueType::INT16, 0, -30000, 0));
  w.set("t.u32", Value::of_u32(4000000000u));
  w.set("t.i32", Value::of_i32(-2000000000));
  w.set("t.f32", Value::of_f32(1.5f));
  w.set("t.bool", Value::of_bool(true));
  w.set("t.str", Value::of_str("hello \xe2\x9c\x93"));
  w.set("t.u64", scalar(ValueType::UINT64, 1ull << 60, 0, 0));
  w.set("t.i64", scalar(ValueType::INT64, 0, -(1ll << 60), 0));
  w.set("t.f64", scalar(ValueType::FLOAT64, 0, 0, 0.1));
  w.set("a.strs", Value::of_strs({"x", "", "yz"}));
  w.set("a.i32s", Value::of_i32s({1, -2, 2147483647}));
  w.set("a.f32s", Value::of_f32s({0.25, -8.0}));
  w.set("a.u8s", array(ValueType::UINT8, {0, 255}, {}));
  w.set("a.bools", array(ValueType::BOOL, {1, 0, 1}, {}));
  w.set("a.i16s", array(ValueType::INT16, {-32768, 32767}, {}));
  w.set("a.u64s", array(ValueType::UINT64, {0, 1ll << 62}, {}));
  w.set("a.f64s", array(ValueType::FLOAT64, {}, {1e300, -0.5}));
  w.set("a.empty", Value::of_strs({}));
  std::string path = dir.file("values.gguf");
  w.write(path);

  Reader r = Reader::open(path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_EQ(r.kv().size(), 21u);
  EXPECT_TRUE(r.tensors().empty());
  EXPECT_EQ(r.find("t.u8")->u, 200u);
  EXPECT_EQ(r.find("t.u8")->type, ValueType::UINT8);
  EXPECT_EQ(r.find("t.i8")->i, -100);
  EXPECT_EQ(r.find("t.u16")->u, 60000u);
  EXPECT_EQ(r.find("t.i16")->i, -30000);
  EXPECT_EQ(r.get_uint("t.u32"), 4000000000u);
  EXPECT_EQ(r.find("t.i32")->i, -2000000000);
  EXPECT_EQ(r.get_float("t.f32"), 1.5);
  EXPECT_TRUE(r.get_bool("t.bool"));
  EXPECT_EQ(r.get_string("t.str"), "hello \xe2\x9c\x93");
  EXPECT_EQ(r.get_uint("t.u64"), 1ull << 60);
  EXPECT_EQ(r.find("t.i64")->i, -(1ll << 60));
  EXPECT_EQ(r.find("t.i64")->type, ValueType::INT64);
  EXPECT_EQ(r.get_float("t.f64"), 0.1);

  const Value* strs = r.find("a.strs");
  ASSERT_NE(strs, nullptr);
  EXPECT_EQ(strs->type, ValueType::ARRAY);
  EXPECT_EQ(strs->elem_type, ValueType::STRING);
  EXPECT_EQ(strs->strs, (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(r.find("a.i32s")->ints, (std::vector<int64_t>{1, -2, 2147483647}));
  EXPECT_EQ(r.find("a.i32s")->elem_type, ValueType::INT32);
  EXPECT_EQ(r.find("a.f32s")->floats, (std::vector<double>{0.25, -8.0}));
  EXPECT_EQ(r.find("a.u8s")->ints, (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(r.find("a.bools")->ints, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(r.find("a.bools")->elem_type, ValueType::BOOL);
  EXPECT_EQ(r.find("a.i16s")->ints, (std::vector<int64_t>{-32768, 32767}));
  EXPECT_EQ(r.find("a.u64s")->ints, (std::vector<int64_t>{0, 1ll << 62}));
  EXPECT_EQ(r.find("a.f64s")->floats, (std::vector<double>{1e300, -0.5}));
  EXPECT_TRUE(r.find("a.empty")->strs.empty());
  EXPECT_EQ(r.find("missing"), nullptr);
}

TEST(Gguf, RoundTripTensorsOfEveryType) {
  TempDir dir;
  struct Case {
    std::string name;
    std::vector<uint64_t> ne;
    Type type;
    size_t nbytes;
  };
  const std::vector<Case> cases = {
      {"f32", {8, 2}, Type::F32, 64},           {"f16", {16}, Type::F16, 32},
      {"bf16", {4, 3}, Type::BF16, 24},         {"i2_s", {128, 2}, Type::I2_S, 256 / 4 + 32},
      {"tq2_0", {256, 2}, Type::TQ2_0, 2 * 66}, {"tq1_0", {512, 1, 1}, Type::TQ1_0, 2 * 54},
      {"f32_4d", {1, 2, 3, 4}, Type::F32, 96},
  };
  Writer w;
  w.set("general.architecture", Value::of_str("bitnet-b1.58"));
  std::vector<uint8_t> kept = pattern(64, 9);  // passed as a span: must outlive write()
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    if (k == 0) {
      w.add_tensor(c.name, c.ne, c.type, std::span<const uint8_t>(kept));
    } else {
      w.add_tensor(c.name, c.ne, c.type, pattern(c.nbytes, static_cast<uint8_t>(k)));
    }
  }
  std::string path = dir.file("tensors.gguf");
  w.write(path);

  std::vector<uint8_t> bytes = read_bytes(path);
  Reader from_file = Reader::open(path);
  Reader from_mem = Reader::parse(bytes.data(), bytes.size(), "mem");
  for (const Reader* r : {&from_file, &from_mem}) {
    ASSERT_EQ(r->tensors().size(), cases.size());
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      const TensorInfo& t = r->tensors()[k];  // file order is insertion order
      EXPECT_EQ(t.name, c.name);
      EXPECT_EQ(t.ne, c.ne);
      EXPECT_EQ(t.type, static_cast<uint32_t>(c.type));
      EXPECT_EQ(t.nbytes, c.nbytes) << c.name;
      EXPECT_EQ(t.offset % 32, 0u);
      std::vector<uint8_t> want = k == 0 ? kept : pattern(c.nbytes, static_cast<uint8_t>(k));
      ASSERT_NE(t.data, nullptr);
      EXPECT_EQ(std::vector<uint8_t>(t.data, t.data + t.nbytes), want) << c.name;
      EXPECT_EQ(r->find_tensor(c.name), &t);
    }
    EXPECT_EQ(r->find_tensor("nope"), nullptr);
  }
  EXPECT_EQ(from_file.tensors()[3].n_elements(), 256u);
  EXPECT_NE(from_file.mapping(), nullptr);
  EXPECT_EQ(from_mem.mapping(), nullptr);
  // The data section starts aligned, so tensor data is aligned in the file too.
  EXPECT_EQ((from_mem.tensors()[0].data - bytes.data()) % 32, 0);
}

TEST(Gguf, WriterKeepsInsertionOrderAndReplacesInPlace) {
  TempDir dir;
  Writer w;
  w.set("z.first", Value::of_u32(1));
  w.set("a.second", Value::of_u32(2));
  w.set("z.first", Value::of_u32(3));
  std::string path = dir.file("order.gguf");
  w.write(path);
  std::vector<uint8_t> b = read_bytes(path);
  std::string s(b.begin(), b.end());
  size_t z = s.find("z.first"), a = s.find("a.second");
  ASSERT_NE(z, std::string::npos);
  ASSERT_NE(a, std::string::npos);
  EXPECT_LT(z, a);
  Reader r = Reader::open(path);
  EXPECT_EQ(r.kv().size(), 2u);
  EXPECT_EQ(r.get_uint("z.first"), 3u);
  EXPECT_EQ(r.find("general.alignment"), nullptr);  // default alignment is not written
}

TEST(Gguf, CustomAlignment) {
  TempDir dir;
  Writer w;
  w.set("general.alignment", Value::of_u32(64));
  w.add_tensor("a", {3}, Type::F32, pattern(12, 1));
  w.add_tensor("b", {5}, Type::F32, pattern(20, 2));
  std::string path = dir.file("align.gguf");
  w.write(path);
  Reader r = Reader::open(path);
  EXPECT_EQ(r.alignment(), 64u);
  EXPECT_EQ(r.tensors()[1].offset, 64u);
  EXPECT_EQ((r.tensors()[0].data - r.mapping()->data()) % 64, 0);
  EXPECT_EQ(std::vector<uint8_t>(r.tensors()[1].data, r.tensors()[1].data + 20), pattern(20, 2));
}

TEST(Gguf, ReadsVersion2) {
  TempDir dir;
  std::vector<uint8_t> b = small_valid_file(dir);
  b[4] = 2;
  Reader r = Reader::parse(b.data(), b.size(), "v2.gguf");
  EXPECT_EQ(r.version(), 2u);
  EXPECT_EQ(r.tensors().size(), 2u);
}

TEST(Gguf, TypeSizes) {
  EXPECT_EQ(type_nbytes(Type::F32, 10, 30), 120u);
  EXPECT_EQ(type_nbytes(Type::F16, 10, 30), 60u);
  EXPECT_EQ(type_nbytes(Type::BF16, 10, 30), 60u);
  EXPECT_EQ(type_nbytes(Type::TQ2_0, 2560, 2560 * 6912), 2560ull * 6912 / 256 * 66);
  EXPECT_EQ(type_nbytes(Type::TQ1_0, 256, 512), 108u);
  EXPECT_EQ(type_nbytes(Type::I2_S, 2560, 2560 * 640), 2560ull * 640 / 4 + 32);
  EXPECT_THROW(type_nbytes(Type::TQ2_0, 100, 200), tern::Error);
  EXPECT_THROW(type_nbytes(Type::TQ1_0, 384, 768), tern::Error);
  EXPECT_THROW(type_nbytes(Type::I2_S, 100, 100), tern::Error);
  EXPECT_THROW(type_nbytes(static_cast<Type>(99), 4, 4), tern::Error);
  EXPECT_TRUE(type_supported(36));
  EXPECT_FALSE(type_supported(2));
  EXPECT_EQ(type_name(36), "i2_s");
  EXPECT_EQ(type_name(35), "tq2_0");
  EXPECT_EQ(type_name(99), "type99");
  EXPECT_EQ(value_type_name(ValueType::STRING), "string");
}

TEST(Gguf, GettersNameTheKeyAndType) {
  TempDir dir;
  Writer w;
  w.set("k.str", Value::of_str("x"));
  w.set("k.neg", Value::of_i32(-1));
  w.set("k.pos", Value::of_i32(7));
  w.set("k.f", Value::of_f32(2.5f));
  std::string path = dir.file("getters.gguf");
  w.write(path);
  Reader r = Reader::open(path);
  EXPECT_EQ(r.get_uint("k.pos"), 7u);
  EXPECT_EQ(r.get_float("k.pos"), 7.0);
  expect_error([&] { r.get_uint("k.none"); }, {path, "metadata key k.none: missing"});
  expect_error([&] { r.get_uint("k.str"); },
               {path, "metadata key k.str: has type string, expected an integer"});
  expect_error([&] { r.get_uint("k.neg"); }, {path, "k.neg", "negative"});
  expect_error([&] { r.get_uint("k.f"); }, {path, "k.f", "float32"});
  expect_error([&] { r.get_string("k.pos"); }, {path, "k.pos", "int32", "string"});
  expect_error([&] { r.get_bool("k.str"); }, {path, "k.str", "bool"});
  expect_error([&] { r.get_float("k.str"); }, {path, "k.str", "string"});
}

TEST(Gguf, WriterRejectsBadInput) {
  Writer w;
  expect_error([&] { w.add_tensor("t", {4}, Type::F32, pattern(15, 0)); },
               {"tensor t", "15 bytes", "expected 16"});
  expect_error([&] { w.add_tensor("t", {100}, Type::TQ2_0, pattern(66, 0)); }, {"tensor t", "256"});
  expect_error([&] { w.add_tensor("t", {}, Type::F32, pattern(0, 0)); }, {"tensor t", "n_dims"});
  expect_error([&] { w.add_tensor("t", {4, 0}, Type::F32, pattern(0, 0)); }, {"tensor t", "ne[1]"});
  expect_error([&] { w.add_tensor("t", {4}, static_cast<Type>(99), pattern(16, 0)); },
               {"tensor t", "unsupported tensor type 99"});
  w.add_tensor("t", {4}, Type::F32, pattern(16, 0));
  expect_error([&] { w.add_tensor("t", {4}, Type::F32, pattern(16, 0)); },
               {"tensor t", "duplicate"});

  TempDir dir;
  Writer v;
  Value big;
  big.type = ValueType::UINT8;
  big.u = 256;
  v.set("k.big", big);
  expect_error([&] { v.write(dir.file("x.gguf")); }, {"k.big", "256"});
  Writer a;
  a.set("general.alignment", Value::of_u32(48));
  expect_error([&] { a.write(dir.file("y.gguf")); }, {"general.alignment"});
  EXPECT_FALSE(fs::exists(dir.file("x.gguf")));
  EXPECT_FALSE(fs::exists(dir.file("y.gguf")));
}

// ---------------------------------------------------------------------------------------
// Corrupt input

TEST(Gguf, EveryPrefixParsesOrThrows) {
  TempDir dir;
  std::vector<uint8_t> full = small_valid_file(dir);
  Reader::parse(full.data(), full.size(), "full.gguf");  // the whole file is valid
  size_t rejected = 0;
  for (size_t n = 0; n < full.size(); ++n) {
    // A copy of exactly n bytes, so the sanitizer catches any read past the end.
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<long>(n));
    try {
      Reader r = Reader::parse(prefix.data(), prefix.size(), "prefix.gguf");
      for (const TensorInfo& t : r.tensors()) {
        EXPECT_LE(t.data + t.nbytes, prefix.data() + prefix.size());
      }
    } catch (const tern::Error& e) {
      EXPECT_NE(std::string(e.what()).find("prefix.gguf"), std::string::npos) << e.what();
      ++rejected;
    }
  }
  // Only cuts in the padding after the last tensor can still be valid.
  EXPECT_GE(rejected, full.size() - 32);
}

TEST(Gguf, RejectsShortFileAndBadMagic) {
  expect_bad_file({}, {"shorter than the 24-byte GGUF header"});
  expect_bad_file({'G', 'G', 'U', 'F', 3, 0, 0}, {"header"});
  Bytes b;
  b.header(0, 0);
  b.b[3] = 'L';
  expect_bad_file(b.b, {"magic", "not a GGUF file"});
}

TEST(Gguf, RejectsUnsupportedVersions) {
  expect_bad_file(Bytes().header(0, 0, 1).b, {"unsupported GGUF version 1"});
  expect_bad_file(Bytes().header(0, 0, 99).b, {"unsupported GGUF version 99"});
  expect_bad_file(Bytes().header(0, 0, 0x03000000).b, {"big-endian"});
}

TEST(Gguf, RejectsAbsurdCounts) {
  expect_bad_file(Bytes().header(1ull << 40, 0).zeros(64).b, {"tensor count 1099511627776"});
  expect_bad_file(Bytes().header(0, ~0ull).zeros(64).b, {"metadata kv count"});
  expect_bad_file(Bytes().header(0, 2).b, {"metadata key #0"});  // passes the bound, then ends
}

TEST(Gguf, RejectsBadStringsAndArrays) {
  // Key length far past the end.
  expect_bad_file(Bytes().header(0, 1).u64(1ull << 60).zeros(8).b,
                  {"metadata key #0", "string length 1152921504606846976"});
  // Value string length past the end.
  expect_bad_file(Bytes().header(0, 1).str("a.s").u32(8).u64(~0ull).zeros(8).b,
                  {"metadata key a.s", "string length"});
  // Array count past the end: checked before anything is reserved.
  expect_bad_file(Bytes().header(0, 1).str("a.arr").u32(9).u32(4).u64(1ull << 50).zeros(16).b,
                  {"metadata key a.arr", "array of 1125899906842624 uint32"});
  expect_bad_file(Bytes().header(0, 1).str("a.arr").u32(9).u32(8).u64(3).str("x").b,
                  {"metadata key a.arr", "array of 3 string"});
  // A string array whose element length runs out.
  expect_bad_file(Bytes().header(0, 1).str("a.arr").u32(9).u32(8).u64(2).str("x").u64(99).b,
                  {"metadata key a.arr", "string length 99"});
  // Nested arrays and unknown element types.
  expect_bad_file(Bytes().header(0, 1).str("a.n").u32(9).u32(9).u64(1).zeros(16).b,
                  {"metadata key a.n", "nested arrays"});
  expect_bad_file(Bytes().header(0, 1).str("a.e").u32(9).u32(77).u64(1).zeros(16).b,
                  {"metadata key a.e", "unknown array element type 77"});
}

TEST(Gguf, RejectsBadValues) {
  expect_bad_file(Bytes().header(0, 1).str("k.t").u32(13).zeros(8).b,
                  {"metadata key k.t", "unknown value type 13"});
  expect_bad_file(Bytes().header(0, 1).str("k.b").u32(7).u8(2).zeros(8).b,
                  {"metadata key k.b", "invalid bool"});
  expect_bad_file(Bytes().header(0, 2).kv_u32("k.d", 1).kv_u32("k.d", 2).b,
                  {"metadata key k.d", "duplicate key"});
  expect_bad_file(Bytes().header(0, 1).kv_u32("general.alignment", 48).b,
                  {"general.alignment", "power of two"});
  expect_bad_file(Bytes().header(0, 1).kv_u32("general.alignment", 0).b,
                  {"general.alignment", "power of two"});
  expect_bad_file(Bytes().header(0, 1).str("general.alignment").u32(8).str("32").b,
                  {"general.alignment", "has type string"});
  // A value cut short.
  expect_bad_file(Bytes().header(0, 1).str("k.u64").u32(10).u32(0).b,
                  {"metadata key k.u64", "needs 8 bytes"});
}

TEST(Gguf, RejectsBadTensorInfos) {
  auto one = [](std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data) {
    return Bytes().header(1, 0).tensor("w.weight", std::move(ne), type, offset).pad().zeros(data).b;
  };
  // The valid base case, to be sure the corruptions below are what gets rejected.
  std::vector<uint8_t> ok = one({8, 2}, 0, 0, 64);
  EXPECT_EQ(Reader::parse(ok.data(), ok.size(), "ok").tensors().at(0).nbytes, 64u);

  expect_bad_file(one({}, 0, 0, 64), {"tensor w.weight", "n_dims 0"});
  expect_bad_file(one({1, 1, 1, 1, 1}, 0, 0, 64), {"tensor w.weight", "n_dims 5"});
  expect_bad_file(one({8, 0}, 0, 0, 64), {"tensor w.weight", "ne[1] is 0"});
  expect_bad_file(one({1ull << 31, 1ull << 31, 2}, 0, 0, 64), {"tensor w.weight", "2^62"});
  expect_bad_file(one({8, 2}, 99, 0, 64), {"tensor w.weight", "unsupported tensor type 99"});
  expect_bad_file(one({8, 2}, 12, 0, 64), {"tensor w.weight", "unsupported tensor type 12 (q4_k)"});
  expect_bad_file(one({100, 2}, 35, 0, 1024), {"tensor w.weight", "256"});
  expect_bad_file(one({8, 2}, 0, 4, 128), {"tensor w.weight", "offset 4", "alignment 32"});
  expect_bad_file(one({8, 2}, 0, 32, 64), {"tensor w.weight", "runs past the end"});
  expect_bad_file(one({8, 2}, 0, 0, 63), {"tensor w.weight", "runs past the end"});
  expect_bad_file(one({8, 2}, 0, ~0ull - 31, 64), {"tensor w.weight", "runs past the end"});
  // The tensor infos end where the data should start.
  expect_bad_file(Bytes().header(1, 0).tensor("w.weight_x", {8}, 0, 0).b,
                  {"data section starts at"});
  // Truncated inside a tensor info.
  expect_bad_file(Bytes().header(1, 0).str("w.weight").u32(2).u64(8).zeros(4).b,
                  {"tensor w.weight", "needs 8 bytes"});

  // Names from the file are escaped and shortened in messages.
  expect_bad_file(Bytes().header(1, 0).tensor("w\x01" + std::string(500, 'n'), {8}, 99, 0).b,
                  {"tensor w\\x01nnn", "...(502 bytes)", "unsupported tensor type 99"});

  std::vector<uint8_t> dup = Bytes()
                                 .header(2, 0)
                                 .tensor("w.weight", {8}, 0, 0)
                                 .tensor("w.weight", {8}, 0, 32)
                                 .pad()
                                 .zeros(64)
                                 .b;
  expect_bad_file(dup, {"tensor w.weight", "duplicate tensor name"});
}
