#include "model/load_util.h"

#include <cstring>

#include "tern/error.h"
#include "util/atomic_file.h"
#include "util/half.h"

namespace tern {

const char* const kLinearNames[7] = {"q", "k", "v", "o", "gate", "up", "down"};

TernaryMatrix& layer_linear(Layer& l, int i) {
  TernaryMatrix* all[7] = {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down};
  return *all[i];
}
const TernaryMatrix& layer_linear(const Layer& l, int i) { return layer_linear(const_cast<Layer&>(l), i); }

std::vector<float> to_f32(FloatType type, const uint8_t* data, int64_t n) {
  std::vector<float> out(n);
  if (type == FloatType::F32) {
    std::memcpy(out.data(), data, n * 4);
    return out;
  }
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, data + 2 * i, 2);
    out[i] = type == FloatType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
  return out;
}

void check_model_shapes(const Model& m, const std::string& where) {
  const ModelConfig& c = m.config;
  c.validate(where);
  if (m.embedding.rows != c.vocab || m.embedding.cols != c.hidden) {
    fail("{}: token embedding has shape [{}, {}], expected [{}, {}] (vocab, hidden)", where, m.embedding.rows,
         m.embedding.cols, c.vocab, c.hidden);
  }
  if (static_cast<int64_t>(m.output_norm.size()) != c.hidden) fail("{}: output norm has {} elements, expected {}", where, m.output_norm.size(), c.hidden);
  if (static_cast<int64_t>(m.layers.size()) != c.n_layers) fail("{}: {} layers loaded, expected {}", where, m.layers.size(), c.n_layers);
  const int64_t shapes[7][2] = {{c.q_dim(), c.hidden}, {c.kv_dim(), c.hidden}, {c.kv_dim(), c.hidden}, {c.hidden, c.q_dim()},
                                {c.ffn, c.hidden},     {c.ffn, c.hidden},     {c.hidden, c.ffn}};
  for (size_t li = 0; li < m.layers.size(); ++li) {
    const Layer& l = m.layers[li];
    for (int i = 0; i < 7; ++i) {
      const TernaryMatrix& t = layer_linear(l, i);
      if (t.rows != shapes[i][0] || t.cols != shapes[i][1]) {
        fail("{}: layer {} {} weight has shape [{}, {}], expected [{}, {}]", where, li, kLinearNames[i], t.rows, t.cols,
             shapes[i][0], shapes[i][1]);
      }
    }
    auto norm = [&](const std::vector<float>& v, const char* name, int64_t n) {
      if (static_cast<int64_t>(v.size()) != n) fail("{}: layer {} {} has {} elements, expected {}", where, li, name, v.size(), n);
    };
    norm(l.attn_norm, "attn_norm", c.hidden);
    norm(l.attn_sub_norm, "attn_sub_norm", c.q_dim());
    norm(l.ffn_norm, "ffn_norm", c.hidden);
    norm(l.ffn_sub_norm, "ffn_sub_norm", c.ffn);
  }
}

nlohmann::json read_json_object(const std::string& file) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(file));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", file, e.what());
  }
  if (!j.is_object()) fail("{}: expected a JSON object", file);
  return j;
}

}  // namespace tern
