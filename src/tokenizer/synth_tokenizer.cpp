// A small but real byte-level BPE tokenizer for synthetic models, so that tests and
// benchmarks exercise genuine merges without shipping a 9 MB vocabulary.
#include <algorithm>
#include <map>
#include <set>

#include "tern/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/token_types.h"
#include "tokenizer/tokenizer.h"

namespace tern {
namespace {

// Training text: plain English with the usual function words, so that common words
// become single tokens and merges get exercised on everyday input.
constexpr const char* kCorpus =
    "The quick brown fox jumps over the lazy dog. This is a small test of the tokenizer, and "
    "the tokenizer is the part of the model that turns text into tokens. When the model "
    "reads a sentence, it first splits the words, then it merges the most common pairs of "
    "letters into longer pieces. There are many words in this paragraph that appear more "
    "than once, so the training can find them: the, and, that, this, with, from, into, "
    "there, then, when, which, words, model, tokens. We don't need much; it's enough that "
    "they're repeated and that we'll see the same pairs again. In 2024 and 2025 the models "
    "were trained on 1000 or 4000 tokens at a time, with the same settings each time.\n\n"
    "The model reads the text, and the text becomes tokens. The tokens go into the model, "
    "and the model writes new tokens, one at a time, until it reaches the end of the text. "
    "Then the tokens are turned back into words, and the words are shown to the reader. "
    "If the model is small, it is fast; if the model is large, it is slow but it writes "
    "better text. We test the model with short prompts and long prompts, with code and with "
    "plain English, and we check that the same input always gives the same output.\n";

using Word = std::vector<std::string>;  // a pre-token as byte-level symbols

// Deterministic BPE training: merge the most frequent adjacent pair (ties go to the
// smallest pair in string order) until no pair occurs twice or `max_new` new tokens
// exist. Appends merges and new tokens to t.
void train(TokenizerData& t, std::set<std::string>& known, size_t max_new) {
  std::map<std::string, int> counts;  // mapped pre-token -> occurrences
  std::vector<std::string_view> pieces;
  pretokenize(kCorpus, pieces);
  for (std::string_view p : pieces) {
    std::string mapped;
    bytelevel::encode(p, mapped);
    ++counts[mapped];
  }
  std::vector<std::pair<Word, int>> words;
  for (const auto& [text, n] : counts) {
    Word w;
    for (size_t i = 0; i < text.size();) {
      size_t start = i;
      bytelevel::next_codepoint(text, i);
      w.push_back(text.substr(start, i - start));
    }
    words.emplace_back(std::move(w), n);
  }

  size_t added = 0;
  while (added < max_new) {
    std::map<std::pair<std::string, std::string>, int> pairs;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    auto best = pairs.end();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (best == pairs.end() || it->second > best->second) best = it;
    if (best == pairs.end() || best->second < 2) break;

    const auto [left, right] = best->first;
    const std::string joined = left + right;
    t.merges.push_back(left + " " + right);
    if (known.insert(joined).second) {  // another path may already have built this string
      t.tokens.push_back(joined);
      ++added;
    }
    for (auto& [w, n] : words) {
      Word merged;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == left && w[i + 1] == right) {
          merged.push_back(joined);
          ++i;
        } else {
          merged.push_back(w[i]);
        }
      }
      w = std::move(merged);
    }
  }
}

bool is_vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

// Letters only, optionally after the byte-level space mark "Ġ" (U+0120).
bool wordish(const std::string& tok) {
  size_t i = tok.rfind("\xC4\xA0", 0) == 0 ? 2 : 0;
  if (i == tok.size()) return false;
  for (; i < tok.size(); ++i) {
    if (tok[i] < 'a' || tok[i] > 'z') return false;
  }
  return true;
}

// Fills the vocabulary up to `target` tokens with syllable merges (a word-ish token +
// a one- or two-letter piece, alternating consonants and vowels), in a fixed order.
// A model with a large synthetic vocabulary then samples pronounceable pseudo-words
// rather than thousands of reserved special tokens.
void fill_with_syllables(TokenizerData& t, std::set<std::string>& known, size_t target) {
  std::vector<std::string> pool, pieces;
  for (const std::string& tok : t.tokens) {
    if (wordish(tok)) pool.push_back(tok);
    if (wordish(tok) && tok.size() <= 2 && tok.rfind("\xC4\xA0", 0) != 0) pieces.push_back(tok);
  }
  for (size_t i = 0; i < pool.size() && t.tokens.size() < target; ++i) {
    const std::string base = pool[i];  // copy: pool grows below
    for (const std::string& p : pieces) {
      if (t.tokens.size() >= target) break;
      if (is_vowel(base.back()) == is_vowel(p.front())) continue;
      std::string joined = base + p;
      if (joined.size() > 16 || !known.insert(joined).second) continue;
      t.merges.push_back(base + " " + p);
      t.tokens.push_back(joined);
      pool.push_back(std::move(joined));
    }
  }
}

}  // namespace

TokenizerData synth_tokenizer(int64_t vocab) {
  constexpr int64_t kSpecials = 3;
  if (vocab < 256 + kSpecials + 1)
    fail("synthetic tokenizer: vocab {} is too small (need at least 260)", vocab);
  if (vocab > (int64_t(1) << 24))
    fail("synthetic tokenizer: vocab {} is too large (at most 16777216)", vocab);

  TokenizerData t;
  t.model = "gpt2";
  t.pre = "llama-bpe";
  t.tokens.reserve(vocab);
  std::set<std::string> known;
  for (int b = 0; b < 256; ++b) {
    t.tokens.push_back(bytelevel::byte_to_unicode(uint8_t(b)));
    known.insert(t.tokens.back());
  }
  train(t, known, size_t(vocab - 256 - kSpecials));
  // Like LLaMA-3, keep the last ids (256 of a large vocabulary) for special tokens.
  const int64_t n_special = std::clamp<int64_t>(vocab / 16, kSpecials, 256);
  fill_with_syllables(t, known, size_t(vocab - n_special));
  t.token_types.assign(t.tokens.size(), kTokenNormal);

  auto add_special = [&](std::string s) {
    t.tokens.push_back(std::move(s));
    t.token_types.push_back(kTokenControl);
    return int32_t(t.tokens.size() - 1);
  };
  t.bos = add_special("<|begin_of_text|>");
  t.eos = add_special("<|end_of_text|>");
  t.eot = add_special("<|eot_id|>");
  for (int64_t k = 0; int64_t(t.tokens.size()) < vocab; ++k)
    add_special(fmt::format("<|reserved_special_token_{}|>", k));
  t.add_bos = true;
  return t;
}

}  // namespace tern
