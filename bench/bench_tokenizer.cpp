// Tokenizer encode speed, single thread: the same measurement tools/make_text_fixtures.py
// makes for HF tokenizers (1 MB pieces, best of 3, MB/s).
// Usage: bench_tokenizer TOKENIZER(.json | model) TEXT_FILE
#include <fmt/core.h>

#include <chrono>

#include "model/model.h"
#include "tern/error.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    fmt::print(stderr, "usage: {} TOKENIZER TEXT_FILE\n", argv[0]);
    return 1;
  }
  try {
    tern::Tokenizer tok(tern::load_tokenizer_data(argv[1]));
    const std::string text = tern::read_text_file(argv[2]);
    // Split at UTF-8 character boundaries near 1 MB.
    std::vector<std::string> pieces;
    for (size_t i = 0; i < text.size();) {
      size_t j = std::min(text.size(), i + (1u << 20));
      while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80) ++j;
      pieces.push_back(text.substr(i, j - i));
      i = j;
    }
    double best = 1e30, first = 0;
    size_t n_tokens = 0;
    for (int rep = 0; rep < 3; ++rep) {
      n_tokens = 0;
      auto t0 = std::chrono::steady_clock::now();
      for (const auto& p : pieces) n_tokens += tok.encode(p, false).size();
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rep == 0) first = t;  // cold: the merge cache starts empty
      best = std::min(best, t);
    }
    fmt::print("{:.2f} MB/s best of 3 ({:.0f} tokens/s), {:.2f} MB/s first run with a cold cache ({} bytes, {} tokens)\n",
               text.size() / best / 1e6, n_tokens / best, text.size() / first / 1e6, text.size(), n_tokens);
  } catch (const tern::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
