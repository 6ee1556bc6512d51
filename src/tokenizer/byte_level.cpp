#include "tokenizer/byte_level.h"

#include <array>
#include <vector>

namespace tern::bytelevel {
namespace {

struct Table {
  std::array<std::string, 256> to_unicode;
  std::vector<int16_t> to_byte;  // indexed by code point, -1 where unmapped

  Table() {
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    std::array<uint32_t, 256> cp{};
    uint32_t next = 256;  // non-printable bytes take U+0100, U+0101, ... in byte order
    for (int b = 0; b < 256; ++b) cp[b] = printable(b) ? uint32_t(b) : next++;
    to_byte.assign(next, -1);
    for (int b = 0; b < 256; ++b) {
      append_utf8(cp[b], to_unicode[b]);
      to_byte[cp[b]] = int16_t(b);
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return table().to_unicode[b]; }

int unicode_to_byte(uint32_t cp) {
  const auto& t = table().to_byte;
  return cp < t.size() ? t[cp] : -1;
}

void encode(std::string_view raw, std::string& out) {
  const Table& t = table();
  for (unsigned char c : raw) out += t.to_unicode[c];
}

bool decode(std::string_view text, std::string& out) {
  size_t start = out.size();
  for (size_t i = 0; i < text.size();) {
    int b = unicode_to_byte(next_codepoint(text, i));
    if (b < 0) {
      out.resize(start);
      return false;
    }
    out += char(b);
  }
  return true;
}

uint32_t next_codepoint(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i++]);
  if (c < 0x80) return c;
  int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  uint32_t cp = c & (0x3F >> extra);
  for (int k = 0; k < extra && i < s.size(); ++k) cp = (cp << 6) | (s[i++] & 0x3F);
  return cp;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace tern::bytelevel
