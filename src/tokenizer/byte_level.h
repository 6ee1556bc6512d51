// GPT-2 byte-level mapping: every byte gets a printable unicode character so that BPE
// vocabularies can be stored as text. Printable Latin-1 bytes map to themselves, the
// other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) to U+0100.. in byte order.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace tern::bytelevel {

// UTF-8 text of the character that stands for byte b (e.g. 0x20 -> "Ġ").
const std::string& byte_to_unicode(uint8_t b);
// The byte a code point stands for, or -1 if it is not one of the 256 characters.
int unicode_to_byte(uint32_t cp);

// Maps raw bytes to their byte-level unicode form, appending to out.
void encode(std::string_view raw, std::string& out);
// Maps byte-level text back to raw bytes, appending to out. Returns false (leaving out
// unchanged) if some character is not in the table.
bool decode(std::string_view text, std::string& out);

// Decodes one UTF-8 character of valid UTF-8 at s[i], advancing i.
uint32_t next_codepoint(std::string_view s, size_t& i);
void append_utf8(uint32_t cp, std::string& out);

}  // namespace tern::bytelevel
