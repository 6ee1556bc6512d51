// Model-level loading: config from the file, scale direction, and clear errors that
// name the file and the field for every kind of bad checkpoint.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/gguf.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "test_util.h"
#include "util/atomic_file.h"
#include "util/half.h"

namespace tern {
namespace {

using nlohmann::json;

Model tiny() { return synth_model(parse_shape("256,512,2,4,2,300"), 21); }

std::vector<float> logits_of(const Model& m) {
  std::vector<int32_t> toks = {1, 7, 42, 99, 3};
  EngineOptions eo;
  eo.ctx = 8;
  eo.threads = 2;
  auto e = make_cpu_engine(m, eo);
  std::vector<float> out(toks.size() * m.config.vocab);
  e->forward(toks, out.data(), Logits::All);
  return out;
}

// Expects load_model(path) to throw a tern::Error whose message contains every needle.
void expect_load_error(const std::string& path, std::vector<std::string> needles) {
  try {
    load_model(path);
    ADD_FAILURE() << "no error loading " << path;
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// Rewrites a GGUF, letting `edit` change metadata or drop/replace tensors.
void rewrite_gguf(const std::string& in, const std::string& out,
                  const std::function<bool(gguf::Writer&, const std::string& key, const gguf::Value&)>& kv_edit,
                  const std::function<bool(gguf::Writer&, const gguf::TensorInfo&)>& tensor_edit) {
  gguf::Reader r = gguf::Reader::open(in);
  gguf::Writer w;
  for (const auto& [k, v] : r.kv()) {
    if (!kv_edit || !kv_edit(w, k, v)) w.set(k, v);
  }
  for (const auto& t : r.tensors()) {
    if (tensor_edit && tensor_edit(w, t)) continue;
    w.add_tensor(t.name, t.ne, static_cast<gguf::Type>(t.type), std::vector<uint8_t>(t.data, t.data + t.nbytes));
  }
  w.write(out);
}

TEST(ModelLoad, GgufErrorsNameFileAndField) {
  test::TempDir dir;
  const std::string good = dir.file("good.gguf");
  save_gguf(tiny(), good, SaveType::I2_S);

  std::string p = dir.file("arch.gguf");
  rewrite_gguf(good, p, [](gguf::Writer& w, const std::string& k, const gguf::Value&) {
    if (k != "general.architecture") return false;
    w.set(k, gguf::Value::of_str("llama"));
    return true;
  }, nullptr);
  expect_load_error(p, {p, "general.architecture", "llama"});

  p = dir.file("nokey.gguf");
  rewrite_gguf(good, p, [](gguf::Writer&, const std::string& k, const gguf::Value&) { return k == "bitnet-b1.58.block_count"; }, nullptr);
  expect_load_error(p, {p, "block_count"});

  p = dir.file("missing.gguf");
  rewrite_gguf(good, p, nullptr, [](gguf::Writer&, const gguf::TensorInfo& t) { return t.name == "blk.1.ffn_down.weight"; });
  expect_load_error(p, {p, "blk.1.ffn_down.weight", "missing"});

  p = dir.file("shape.gguf");
  rewrite_gguf(good, p, nullptr, [](gguf::Writer& w, const gguf::TensorInfo& t) {
    if (t.name != "blk.0.attn_norm.weight") return false;
    std::vector<uint8_t> b(128 * 4, 0);
    w.add_tensor(t.name, {128}, gguf::Type::F32, b);
    return true;
  });
  expect_load_error(p, {p, "blk.0.attn_norm.weight", "shape"});

  p = dir.file("layers.gguf");
  rewrite_gguf(good, p, [](gguf::Writer& w, const std::string& k, const gguf::Value&) {
    if (k != "bitnet-b1.58.block_count") return false;
    w.set(k, gguf::Value::of_u32(1000000));
    return true;
  }, nullptr);
  expect_load_error(p, {p, "layer count"});

  p = dir.file("normtype.gguf");
  rewrite_gguf(good, p, nullptr, [](gguf::Writer& w, const gguf::TensorInfo& t) {
    if (t.name != "output_norm.weight") return false;
    w.add_tensor(t.name, t.ne, gguf::Type::I2_S, std::vector<uint8_t>(256 / 4 + 32, 0x55));
    return true;
  });
  expect_load_error(p, {p, "output_norm.weight", "i2_s"});

  // A float linear is ternarized at load: F32 weights equal to Wq * m give the same model.
  Model m = tiny();
  p = dir.file("f32.gguf");
  rewrite_gguf(good, p, nullptr, [&](gguf::Writer& w, const gguf::TensorInfo& t) {
    if (t.name != "blk.0.ffn_up.weight") return false;
    const TernaryMatrix& up = m.layers[0].up;
    std::vector<int8_t> q = unpack_ternary(up);
    std::vector<uint8_t> b(q.size() * 4);
    for (size_t i = 0; i < q.size(); ++i) {
      float f = q[i] * 0.37f;  // any positive scale: absmean re-derives it
      std::memcpy(b.data() + 4 * i, &f, 4);
    }
    w.add_tensor(t.name, t.ne, gguf::Type::F32, std::move(b));
    return true;
  });
  Model f = load_model(p);
  EXPECT_EQ(unpack_ternary(f.layers[0].up), unpack_ternary(m.layers[0].up));
}

TEST(ModelLoad, NotAModel) {
  test::TempDir dir;
  write_file_atomic(dir.file("junk.bin"), "hello world, not a model");
  expect_load_error(dir.file("junk.bin"), {"junk.bin", "GGUF"});
  expect_load_error(dir.file("nothing"), {"nothing", "no such file"});
  std::filesystem::create_directories(dir.file("emptydir"));
  expect_load_error(dir.file("emptydir"), {"emptydir", "config.json"});
}

TEST(ModelLoad, HfErrorsNameFileAndField) {
  test::TempDir dir;
  const std::string hf = dir.file("hf");
  save_hf_packed(tiny(), hf);
  const std::string cfg = hf + "/config.json";
  json good = json::parse(read_text_file(cfg));

  write_file_atomic(cfg, "{ not json");
  expect_load_error(hf, {"config.json", "invalid JSON"});

  json j = good;
  j.erase("hidden_size");
  write_file_atomic(cfg, j.dump());
  expect_load_error(hf, {"config.json", "hidden_size"});

  j = good;
  j["model_type"] = "llama";
  j["architectures"] = {"LlamaForCausalLM"};
  write_file_atomic(cfg, j.dump());
  expect_load_error(hf, {"config.json", "model_type", "llama"});

  j = good;
  j["quantization_config"]["linear_class"] = "fancylinear";
  write_file_atomic(cfg, j.dump());
  expect_load_error(hf, {"config.json", "linear_class", "fancylinear"});

  j = good;
  j["intermediate_size"] = 768;  // tensors say 512
  write_file_atomic(cfg, j.dump());
  expect_load_error(hf, {"model.safetensors", "model.layers.0.", "expected [768]"});

  write_file_atomic(cfg, good.dump());
  std::filesystem::remove(hf + "/model.safetensors");
  expect_load_error(hf, {hf, "model.safetensors"});
}

// transformers' BitLinear (linear_class "bitlinear") stores 1/scale and divides;
// AutoBitLinear stores the scale and multiplies. Both must load to the same model.
TEST(ModelLoad, BitlinearScaleDivides) {
  test::TempDir dir;
  Model m = tiny();
  const std::string hf = dir.file("hf");
  save_hf_packed(m, hf);
  st::Reader r = st::Reader::open_dir(hf);
  st::Writer w;
  for (const auto& t : r.tensors()) {
    std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
    if (t.name.ends_with(".weight_scale")) {
      float s = t.dtype == st::DType::BF16 ? bf16_to_f32(static_cast<uint16_t>(bytes[0] | bytes[1] << 8)) : 0.f;
      if (t.dtype == st::DType::F32) std::memcpy(&s, bytes.data(), 4);
      float inv = 1.0f / s;
      bytes.assign(4, 0);
      std::memcpy(bytes.data(), &inv, 4);
      w.add(t.name, st::DType::F32, t.shape, bytes);
    } else {
      w.add(t.name, t.dtype, t.shape, bytes);
    }
  }
  const std::string bl = dir.file("bl");
  std::filesystem::create_directories(bl);
  w.write(bl + "/model.safetensors");
  json j = json::parse(read_text_file(hf + "/config.json"));
  j["quantization_config"]["linear_class"] = "bitlinear";
  write_file_atomic(bl + "/config.json", j.dump());
  Model b = load_model(bl);
  auto want = logits_of(m);
  test::expect_logits_match(logits_of(b), want, m.config.vocab, 1e-5, "bitlinear");
}

}  // namespace
}  // namespace tern

namespace tern {
namespace {

// A sharded HF checkpoint (model.safetensors.index.json + two shards) loads to the same model.
TEST(ModelLoad, ShardedSafetensors) {
  test::TempDir dir;
  Model m = tiny();
  const std::string hf = dir.file("hf");
  save_hf_packed(m, hf);
  st::Reader r = st::Reader::open_dir(hf);
  st::Writer a, b;
  json index = {{"metadata", json::object()}, {"weight_map", json::object()}};
  size_t i = 0;
  for (const auto& t : r.tensors()) {
    bool first = (i++ % 2) == 0;
    (first ? a : b).add(t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes));
    index["weight_map"][t.name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  const std::string sh = dir.file("sharded");
  std::filesystem::create_directories(sh);
  a.write(sh + "/model-00001-of-00002.safetensors");
  b.write(sh + "/model-00002-of-00002.safetensors");
  write_file_atomic(sh + "/model.safetensors.index.json", index.dump());
  std::filesystem::copy_file(hf + "/config.json", sh + "/config.json");
  Model s = load_model(sh);
  EXPECT_EQ(logits_of(s), logits_of(m));
  std::filesystem::remove(sh + "/model-00002-of-00002.safetensors");
  expect_load_error(sh, {"model-00002-of-00002.safetensors"});
}

}  // namespace
}  // namespace tern
