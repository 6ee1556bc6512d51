// Tokenizer-only loading for commands that need no weights (tokenize, detokenize),
// and the one-line model description used by --stats.
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "model/gguf.h"
#include "model/load_util.h"
#include "model/model.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"

namespace tern {

TokenizerData load_tokenizer_data(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path tj = fs::path(path) / "tokenizer.json";
    if (!fs::exists(tj)) fail("{}: no tokenizer.json in this model directory", path);
    return load_tokenizer_json(tj.string());
  }
  if (!fs::exists(path, ec)) fail("{}: no such file or directory", path);
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(magic, 4);
  if (in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0) {
    TokenizerData t = read_gguf_tokenizer(gguf::Reader::open(path));
    if (t.empty()) fail("{}: the GGUF has no tokenizer metadata (tokenizer.ggml.tokens)", path);
    return t;
  }
  return load_tokenizer_json(path);
}

std::string describe_model(const Model& m) {
  const ModelConfig& c = m.config;
  int64_t params = c.vocab * c.hidden;
  for (const Layer& l : m.layers) {
    for (const TernaryMatrix* t : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) params += t->rows * t->cols;
  }
  std::string size = params >= 1000000000 ? std::to_string(params / 1000000000) + "B" : std::to_string(params / 1000000) + "M";
  std::string weights = m.weight_type.empty() ? "" : ", " + m.weight_type + " ternary weights";
  return "BitNet b1.58 " + size + " (" + std::to_string(c.n_layers) + " layers, " + std::to_string(c.hidden) + " dim" + weights + ")";
}

}  // namespace tern
