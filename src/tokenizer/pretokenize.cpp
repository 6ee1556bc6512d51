#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>

#include "tern/error.h"

namespace tern {

const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

void validate_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    // Lead byte -> sequence length and the allowed range of the second byte, which is
    // what rules out overlongs (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and
    // code points above U+10FFFF (F4 90..BF, F5..FF).
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    bool ok = len != 0 && i + len <= n && s[i + 1] >= lo && s[i + 1] <= hi;
    for (size_t k = 2; ok && k < len; ++k) ok = (s[i + k] & 0xC0) == 0x80;
    if (!ok) fail("invalid UTF-8 in input at byte {}", i);
    i += len;
  }
}

namespace {

// The compiled pattern, shared by all threads (pcre2_code is read-only once built;
// match data is per call). JIT is used when the library supports it.
class Llama3Regex {
 public:
  Llama3Regex() {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kLlama3Pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("internal: cannot compile the LLaMA-3 regex at {}: {}", off, reinterpret_cast<const char*>(msg));
    }
    // A JIT failure (no JIT support in this build, no executable memory) is not an
    // error: pcre2_match then runs the interpreter.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Llama3Regex() { pcre2_code_free(code_); }

  void split(std::string_view text, std::vector<std::string_view>& out) const {
    if (text.empty()) return;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (!md) fail("out of memory creating regex match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      // The caller validated UTF-8 once; re-checking on every call would be quadratic.
      uint32_t opts = PCRE2_NO_UTF_CHECK;
      int rc = pcre2_match(code_, subject, text.size(), pos, opts, md.get(), nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its stack on the heap
        rc = pcre2_match(code_, subject, text.size(), pos, opts | PCRE2_NO_JIT, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        fail("pre-tokenizer regex failed at byte {}: {}", pos, reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      size_t start = ov[0], end = ov[1];
      if (end == start) {  // cannot happen with this pattern; step one character to be safe
        end = start + 1;
        while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
      }
      if (start > pos) out.push_back(text.substr(pos, start - pos));
      out.push_back(text.substr(start, end - start));
      pos = end;
    }
    if (pos < text.size()) out.push_back(text.substr(pos));
  }

 private:
  pcre2_code* code_ = nullptr;
};

}  // namespace

void pretokenize(std::string_view text, std::vector<std::string_view>& out) {
  static const Llama3Regex re;
  re.split(text, out);
}

}  // namespace tern
