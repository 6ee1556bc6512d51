// Python str semantics for the chat-template renderer (see jinja_pystr.h).
#include "tokenizer/jinja_pystr.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace tern::jinja {

static const char* const kOverflow = "integer overflow (integers beyond 64 bits are not supported)";

static void check_size(size_t n) {
  if (n > kMaxStringBytes) throw EvalError("string longer than the 64 MB limit");
}

static const std::string& text_arg(const Value& v, const char* what) {
  if (!v.is_string()) throw EvalError(std::string(what) + " must be a string, not '" + type_name(v) + "'");
  return v.str();
}

// Case mapping of single code points (see the header for the coverage).
static char up(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c; }
static char low(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

static char32_t to_upper_cp(char32_t c) {
  if (c < 0x80) return static_cast<char32_t>(up(static_cast<char>(c)));
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 0x20;
  if (c == 0xFF) return 0x178;
  if (c == 0xB5) return 0x39C;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x131) return 'I';
    if (c == 0x17F) return 'S';
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 0) ? c - 1 : c;
    if (c == 0x130 || c == 0x138 || c == 0x149) return c;
    return (c % 2 == 1) ? c - 1 : c;
  }
  if (c >= 0x3B1 && c <= 0x3CB && c != 0x3C2) return c - 0x20;
  if (c == 0x3C2) return 0x3A3;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 0x25;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 0x3F;
  if (c >= 0x430 && c <= 0x44F) return c - 0x20;
  if (c >= 0x450 && c <= 0x45F) return c - 0x50;
  return c;
}

static char32_t to_lower_cp(char32_t c) {
  if (c < 0x80) return static_cast<char32_t>(low(static_cast<char>(c)));
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 0x20;
  if (c == 0x178) return 0xFF;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x130 || c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17F) return c;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 1) ? c + 1 : c;
    return (c % 2 == 0) ? c + 1 : c;
  }
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 0x20;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 0x25;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 0x3F;
  if (c >= 0x410 && c <= 0x42F) return c + 0x20;
  if (c >= 0x400 && c <= 0x40F) return c + 0x50;
  return c;
}

static bool all_ascii(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

static void append_upper(std::string& out, char32_t c) {
  if (c == 0xDF) {  // sharp s
    out += "SS";
    return;
  }
  append_utf8(out, to_upper_cp(c));
}

// Title case: like upper case except that sharp s becomes "Ss".
static void append_title(std::string& out, char32_t c) {
  if (c == 0xDF) {
    out += "Ss";
    return;
  }
  append_utf8(out, to_upper_cp(c));
}

std::string py_upper(std::string s) {
  if (all_ascii(s)) {
    for (char& c : s) c = up(c);
    return s;
  }
  std::string out;
  for (char32_t c : utf8_decode(s)) append_upper(out, c);
  return out;
}
std::string py_lower(std::string s) {
  if (all_ascii(s)) {
    for (char& c : s) c = low(c);
    return s;
  }
  std::string out;
  for (char32_t c : utf8_decode(s)) append_utf8(out, to_lower_cp(c));
  return out;
}
std::string py_capitalize(std::string s) {
  std::string out;
  bool first = true;
  for (char32_t c : utf8_decode(s)) {
    if (first)
      append_title(out, c);
    else
      append_utf8(out, to_lower_cp(c));
    first = false;
  }
  return out;
}

// Letters that have case: ASCII, Latin-1/Latin Extended, Greek, Cyrillic. Decides word
// boundaries for str.title() ("élan" stays one word).
bool is_cased(char32_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  if (c >= 0xC0 && c <= 0x24F) return c != 0xD7 && c != 0xF7;
  return (c >= 0x370 && c <= 0x3FF) || (c >= 0x400 && c <= 0x52F);
}

// str.title(): a cased letter after a non-cased character starts a word.
std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (char32_t c : utf8_decode(s)) {
    bool cased = is_cased(c);
    if (prev_cased)
      append_utf8(out, to_lower_cp(c));
    else
      append_title(out, c);
    prev_cased = cased;
  }
  return out;
}

// jinja2's title filter: words start after runs of '-', whitespace, '(', '{', '[', '<';
// each word is upper-cased at its first character and lower-cased after it.
std::string jinja_title(const std::string& s) {
  std::string out;
  bool at_start = true;
  for (char32_t c : utf8_decode(s)) {
    bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_py_space(c);
    if (sep) {
      append_utf8(out, c);
      at_start = true;
      continue;
    }
    if (at_start)
      append_upper(out, c);
    else
      append_utf8(out, to_lower_cp(c));
    at_start = false;
  }
  return out;
}

std::string py_strip(const std::string& s, const std::optional<Value>& chars, bool left, bool right) {
  std::u32string set;
  bool whitespace = !chars || chars->is_none();
  if (!whitespace) set = utf8_decode(text_arg(*chars, "strip argument"));
  auto strip_it = [&](char32_t c) { return whitespace ? is_py_space(c) : set.find(c) != std::u32string::npos; };
  std::u32string cps = utf8_decode(s);
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return utf8_encode(std::u32string_view(cps).substr(b, e - b));
}

std::vector<Value> py_split(const std::string& s, const std::optional<Value>& sep, int64_t maxsplit) {
  std::vector<Value> out;
  if (!sep || sep->is_none()) {  // runs of whitespace; no empty strings
    std::u32string cps = utf8_decode(s);
    size_t i = 0, n = cps.size();
    while (true) {
      while (i < n && is_py_space(cps[i])) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {  // the rest, trailing space kept
        out.emplace_back(utf8_encode(std::u32string_view(cps).substr(i)));
        break;
      }
      size_t j = i;
      while (j < n && !is_py_space(cps[j])) ++j;
      out.emplace_back(utf8_encode(std::u32string_view(cps).substr(i, j - i)));
      i = j;
    }
    return out;
  }
  std::string d = text_arg(*sep, "separator");
  if (d.empty()) throw EvalError("empty separator");
  size_t pos = 0;
  while (true) {
    size_t f = s.find(d, pos);
    if (f == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit)) {
      out.emplace_back(s.substr(pos));
      break;
    }
    out.emplace_back(s.substr(pos, f - pos));
    pos = f + d.size();
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
  std::string out;
  if (old.empty()) {  // inserts `rep` before every character and at the end
    std::u32string cps = utf8_decode(s);
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += rep;
        ++done;
        check_size(out.size());
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t f = s.find(old, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += rep;
    check_size(out.size());
    pos = f + old.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  check_size(out.size());
  return out;
}

static bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> out;
  std::u32string cps = utf8_decode(s);
  size_t i = 0, start = 0;
  while (i < cps.size()) {
    if (!is_line_break(cps[i])) {
      ++i;
      continue;
    }
    size_t eol = i;
    i += (cps[i] == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ? 2 : 1;
    out.push_back(utf8_encode(std::u32string_view(cps).substr(start, (keepends ? i : eol) - start)));
    start = i;
  }
  if (start < cps.size()) out.push_back(utf8_encode(std::u32string_view(cps).substr(start)));
  return out;
}

// Python's int(str, base): surrounding whitespace, a sign, an optional base prefix,
// digits with single underscores between them.
std::optional<int64_t> parse_py_int(const std::string& text, int base) {
  std::string s = py_strip(text, std::nullopt, true, true);
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i + 1 < s.size() && s[i] == '0') {
    char p = low(s[i + 1]);
    if ((base == 16 && p == 'x') || (base == 8 && p == 'o') || (base == 2 && p == 'b')) {
      i += 2;
      if (i < s.size() && s[i] == '_') ++i;
    }
  }
  if (i >= s.size()) return std::nullopt;
  unsigned __int128 v = 0;
  bool prev_digit = false;
  for (; i < s.size(); ++i) {
    char c = low(s[i]);
    if (c == '_') {
      if (!prev_digit || i + 1 >= s.size()) return std::nullopt;
      prev_digit = false;
      continue;
    }
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
    if (d >= base) return std::nullopt;
    v = v * static_cast<unsigned>(base) + static_cast<unsigned>(d);
    if (v > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max()) + 1) throw EvalError(kOverflow);
    prev_digit = true;
  }
  if (!prev_digit) return std::nullopt;
  if (!neg && v > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max())) throw EvalError(kOverflow);
  return neg ? static_cast<int64_t>(-static_cast<__int128>(v)) : static_cast<int64_t>(v);
}

// Python's float(str): whitespace, sign, digits with single underscores, inf/nan words.
std::optional<double> parse_py_float(const std::string& text) {
  std::string s = py_strip(text, std::nullopt, true, true);
  if (s.empty()) return std::nullopt;
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '_') {
      bool ok = i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
                std::isdigit(static_cast<unsigned char>(s[i + 1]));
      if (!ok) return std::nullopt;
      continue;
    }
    if (c == 'x' || c == 'X' || c == 'p' || c == 'P') return std::nullopt;  // strtod reads hex floats; Python doesn't
    clean += c;
  }
  std::string word = py_lower(clean);
  if (!word.empty() && (word[0] == '+' || word[0] == '-')) word.erase(0, 1);
  if (word == "inf" || word == "infinity" || word == "nan") {
    double v = word == "nan" ? std::nan("") : INFINITY;
    return clean[0] == '-' ? -v : v;
  }
  for (char c : word)
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.' && c != 'e' && c != '+' && c != '-')
      return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return v;
}

}  // namespace tern::jinja
