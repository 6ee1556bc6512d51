// tern tokenize -m MODEL_OR_TOKENIZER_JSON [--add-bos] [--no-special]   (stdin -> ids)
// tern detokenize -m MODEL_OR_TOKENIZER_JSON                           (ids on stdin -> text)
#include <fmt/core.h>

#include <cstring>
#include <iostream>
#include <iterator>

#include "commands.h"
#include "model/model.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"

namespace tern::cli {

namespace {
std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}
}  // namespace

Action add_tokenize(CLI::App& app) {
  struct Opts {
    std::string model;
    bool add_bos = false, no_special = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("-m,--model", o->model, "GGUF file, HF model directory or tokenizer.json")->required();
  app.add_flag("--add-bos", o->add_bos, "Prepend the BOS token");
  app.add_flag("--no-special", o->no_special, "Treat special-token text as plain text");
  return [o] {
    Tokenizer tok(load_tokenizer_data(o->model));
    std::vector<int32_t> ids = tok.encode(read_stdin(), o->add_bos, !o->no_special);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    fmt::print("{}\n", line);
    return 0;
  };
}

Action add_detokenize(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  app.add_option("-m,--model", *model, "GGUF file, HF model directory or tokenizer.json")->required();
  return [model] {
    Tokenizer tok(load_tokenizer_data(*model));
    std::string in = read_stdin();
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i < in.size()) {
      if (in[i] == ' ' || in[i] == ',' || in[i] == '\n' || in[i] == '\t' || in[i] == '\r') {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < in.size() && in[j] >= '0' && in[j] <= '9') ++j;
      if (j == i || j - i > 10 || (j < in.size() && !std::strchr(" ,\n\t\r", in[j]))) {
        fail("detokenize: '{}' at byte {} of stdin is not a token id", in.substr(i, std::min<size_t>(20, in.size() - i)), i);
      }
      long long v = std::stoll(in.substr(i, j - i));
      if (v > INT32_MAX) fail("detokenize: token id {} is outside the vocabulary (size {})", v, tok.vocab_size());
      ids.push_back(static_cast<int32_t>(v));
      i = j;
    }
    std::string text = tok.decode(ids);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  };
}

}  // namespace tern::cli
