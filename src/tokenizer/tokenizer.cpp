#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <functional>
#include <optional>
#include <unordered_map>

#include "tern/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/token_types.h"

namespace tern {
namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Literal matching of added tokens, like HF's leftmost-longest Aho-Corasick pass: at
// each position the longest eligible token wins. Tokens sit in a hash map; per first
// byte we keep the distinct token lengths, longest first, so ordinary text costs one
// empty-list check per byte and a '<' only a few lookups even with 128k reserved tokens.
class SpecialMatcher {
 public:
  struct Entry {
    int32_t id;
    bool control;  // control tokens are skipped when parse_special is false
  };
  struct Match {
    int32_t id;
    size_t len;
  };

  void add(const std::string& text, int32_t id, bool control) {
    if (text.empty() || !tokens_.emplace(text, Entry{id, control}).second) return;  // first id wins
    auto& lens = lengths_[static_cast<unsigned char>(text[0])];
    auto at = std::lower_bound(lens.begin(), lens.end(), text.size(), std::greater<>());
    if (at == lens.end() || *at != text.size()) lens.insert(at, text.size());
  }

  std::optional<Match> match(std::string_view text, size_t pos, bool parse_special) const {
    for (size_t len : lengths_[static_cast<unsigned char>(text[pos])]) {
      if (len > text.size() - pos) continue;
      auto it = tokens_.find(text.substr(pos, len));
      if (it != tokens_.end() && (parse_special || !it->second.control)) return Match{it->second.id, len};
    }
    return std::nullopt;
  }

 private:
  std::unordered_map<std::string, Entry, StringHash, std::equal_to<>> tokens_;
  std::array<std::vector<size_t>, 256> lengths_;
};

std::vector<bool> bpe_mask(const TokenizerData& d) {
  std::vector<bool> in_bpe(d.tokens.size());
  for (size_t id = 0; id < d.tokens.size(); ++id) in_bpe[id] = !is_added_type(effective_token_type(d, id));
  return in_bpe;
}

void check_id(const char* what, int32_t id, size_t vocab) {
  if (id < -1 || id >= int64_t(vocab))
    fail("tokenizer: {} token id {} is outside the vocabulary (size {})", what, id, vocab);
}

const TokenizerData& checked(const TokenizerData& d) {
  if (!d.model.empty() && d.model != "gpt2")
    fail("tokenizer model \"{}\" is not supported (only byte-level BPE, \"gpt2\")", d.model);
  if (d.tokens.empty()) fail("tokenizer has no tokens");
  if (d.tokens.size() > size_t(INT32_MAX)) fail("tokenizer has too many tokens ({})", d.tokens.size());
  check_id("bos", d.bos, d.tokens.size());
  check_id("eos", d.eos, d.tokens.size());
  return d;
}

}  // namespace

struct Tokenizer::Impl {
  explicit Impl(const TokenizerData& d)
      : bpe(checked(d).tokens, bpe_mask(d), d.merges), bos(d.bos), eos(d.eos) {
    bytes.resize(d.tokens.size());
    for (size_t id = 0; id < d.tokens.size(); ++id) {
      const std::string& tok = d.tokens[id];
      if (is_added_type(effective_token_type(d, id))) {
        bytes[id] = tok;  // added tokens are stored and decoded as plain text
        specials.add(tok, int32_t(id), effective_token_type(d, id) == kTokenControl);
      } else if (!bytelevel::decode(tok, bytes[id])) {
        bytes[id] = tok;  // HF's ByteLevel decoder keeps a token with unmapped chars as is
      }
    }
  }

  void encode_text(std::string_view seg, std::vector<std::string_view>& pieces,
                   std::vector<int32_t>& out) const {
    pieces.clear();
    pretokenize(seg, pieces);
    for (std::string_view p : pieces) bpe.encode(p, out);
  }

  void check(int32_t id) const {
    if (id < 0 || size_t(id) >= bytes.size())
      fail("token id {} is outside the vocabulary (size {})", id, bytes.size());
  }

  BpeModel bpe;
  SpecialMatcher specials;
  std::vector<std::string> bytes;  // what each token decodes to
  int32_t bos, eos;
};

Tokenizer::Tokenizer(const TokenizerData& data) : impl_(std::make_unique<Impl>(data)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  validate_utf8(text);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && impl_->bos >= 0) out.push_back(impl_->bos);

  // Specials split the text; each stretch between them is pre-tokenized on its own, so
  // the regex's lookahead never sees across a special (as in HF).
  std::vector<std::string_view> pieces;
  size_t seg = 0;
  for (size_t pos = 0; pos < text.size();) {
    auto sp = impl_->specials.match(text, pos, parse_special);
    if (!sp) {
      ++pos;
      continue;
    }
    impl_->encode_text(text.substr(seg, pos - seg), pieces, out);
    out.push_back(sp->id);
    pos += sp->len;
    seg = pos;
  }
  impl_->encode_text(text.substr(seg), pieces, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    impl_->check(id);
    out += impl_->bytes[id];
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  impl_->check(id);
  return impl_->bytes[id];
}

int64_t Tokenizer::vocab_size() const { return int64_t(impl_->bytes.size()); }
int32_t Tokenizer::bos() const { return impl_->bos; }
int32_t Tokenizer::eos() const { return impl_->eos; }

}  // namespace tern
