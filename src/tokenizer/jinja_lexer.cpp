// Jinja2 lexer emulation (see jinja_lexer.h for the whitespace rules it reproduces).
#include "tokenizer/jinja_lexer.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "tokenizer/jinja_value.h"

namespace tern::jinja {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

class Lexer {
 public:
  explicit Lexer(const std::string& source) {
    // jinja2 treats \r\n, \r and \n alike as line breaks and writes them as \n; one
    // trailing newline of the template is dropped (keep_trailing_newline=False).
    s_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        s_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        s_ += source[i];
      }
    }
    if (!s_.empty() && s_.back() == '\n') s_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < s_.size(); ++i)
      if (s_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    const size_t n = s_.size();
    while (pos < n) {
      size_t tag = find_tag(pos);
      if (tag == std::string::npos) {
        emit_data(s_.substr(pos), pos);
        break;
      }
      const char kind = s_[tag + 1];  // '%', '{' or '#'
      size_t p = tag + 2;
      char sign = 0;
      if (p < n && (s_[p] == '-' || s_[p] == '+')) sign = s_[p++];
      size_t raw_body = 0;
      const bool raw = kind == '%' && match_raw_begin(p, raw_body);

      emit_data(strip_before_tag(s_.substr(pos, tag - pos), sign, kind != '{'), pos);
      line_starting_ = false;  // the text-and-opener match ends with the opener
      if (kind == '#') {
        pos = lex_comment(p, tag);
      } else if (raw) {
        pos = lex_raw(raw_body, tag);
      } else {
        emit(kind == '%' ? Tok::BlockBegin : Tok::VarBegin, tag, kind == '%' ? "{%" : "{{");
        pos = lex_tag(p, kind == '%', tag);
      }
    }
    emit(Tok::Eof, n, "end of template");
    return std::move(out_);
  }

 private:
  std::string s_;
  std::vector<size_t> line_starts_;
  std::vector<Token> out_;
  bool line_starting_ = true;  // the previous match ended with a newline (or none yet)

  void line_col(size_t pos, int& line, int& col) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    size_t idx = static_cast<size_t>(it - line_starts_.begin()) - 1;
    line = static_cast<int>(idx) + 1;
    col = static_cast<int>(pos - line_starts_[idx]) + 1;
  }

  [[noreturn]] void error(size_t pos, const std::string& what) const {
    int line, col;
    line_col(pos, line, col);
    fail_at(line, col, what);
  }

  Token& emit(Tok t, size_t pos, std::string text) {
    Token tok;
    tok.type = t;
    tok.text = std::move(text);
    line_col(pos, tok.line, tok.col);
    out_.push_back(std::move(tok));
    return out_.back();
  }

  void emit_data(std::string text, size_t pos) {
    if (!text.empty()) emit(Tok::Data, pos, std::move(text));
  }

  // The next "{%", "{{" or "{#" at or after pos.
  size_t find_tag(size_t pos) const {
    while (true) {
      size_t i = s_.find('{', pos);
      if (i == std::string::npos || i + 1 >= s_.size()) return std::string::npos;
      char c = s_[i + 1];
      if (c == '%' || c == '{' || c == '#') return i;
      pos = i + 1;
    }
  }

  // Byte length of the Python whitespace character (\s) at pos, 0 if none.
  size_t space_len(size_t pos) const {
    unsigned char c = static_cast<unsigned char>(s_[pos]);
    if (c < 0x80) return is_py_space(c) ? 1 : 0;
    size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    std::u32string cp = utf8_decode(std::string_view(s_).substr(pos, len));
    return cp.size() == 1 && is_py_space(cp[0]) ? len : 0;
  }
  size_t skip_space(size_t pos) const {
    while (pos < s_.size()) {
      size_t l = space_len(pos);
      if (!l) break;
      pos += l;
    }
    return pos;
  }

  static std::string rstrip_space(const std::string& text) {
    std::u32string cps = utf8_decode(text);
    size_t end = cps.size();
    while (end > 0 && is_py_space(cps[end - 1])) --end;
    return utf8_encode(std::u32string_view(cps).substr(0, end));
  }

  // The whitespace control for the text before a tag opener.
  std::string strip_before_tag(std::string text, char sign, bool block_or_comment) const {
    if (sign == '-') return rstrip_space(text);  // {%- / {{- / {#-: all whitespace before
    if (sign == '+' || !block_or_comment) return text;
    // lstrip_blocks: drop the tag's indentation when only whitespace precedes it on its
    // line (jinja2 3.1: `\s+` fullmatch of the text after the last newline).
    size_t l_pos = text.rfind('\n');
    l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
    if (l_pos == 0 && !line_starting_) return text;
    if (l_pos == text.size()) return text;
    std::u32string tail = utf8_decode(std::string_view(text).substr(l_pos));
    if (std::all_of(tail.begin(), tail.end(), is_py_space)) text.resize(l_pos);
    return text;
  }

  // `{%[-+]? raw %}` (jinja2 gives this opener no trim_blocks newline removal).
  bool match_raw_begin(size_t p, size_t& body) const {
    p = skip_space(p);
    if (s_.compare(p, 3, "raw") != 0) return false;
    p = skip_space(p + 3);
    if (s_.compare(p, 3, "-%}") == 0) {
      body = skip_space(p + 3);
      return true;
    }
    if (s_.compare(p, 2, "%}") == 0) {
      body = p + 2;
      return true;
    }
    return false;
  }

  // Ends a tag at p if an end marker is there: returns the position after it (with the
  // whitespace it swallows), or npos.
  size_t match_end(size_t p, bool block) const {
    const char* close = block ? "%}" : "}}";
    if (block && s_[p] == '+' && s_.compare(p + 1, 2, close) == 0) return p + 3;
    if (s_[p] == '-' && s_.compare(p + 1, 2, close) == 0) return skip_space(p + 3);
    if (s_.compare(p, 2, close) == 0) {
      size_t e = p + 2;
      if (block && e < s_.size() && s_[e] == '\n') ++e;  // trim_blocks
      return e;
    }
    return std::string::npos;
  }

  size_t lex_comment(size_t p, size_t tag) {
    if (p >= s_.size()) return p;  // `{#` ending the template: jinja2's lexer just stops
    for (size_t i = p; i < s_.size(); ++i) {
      if (s_[i] != '#' && s_[i] != '-' && s_[i] != '+') continue;
      size_t e = std::string::npos;
      if (s_[i] == '+' && s_.compare(i + 1, 2, "#}") == 0) {
        e = i + 3;
      } else if (s_[i] == '-' && s_.compare(i + 1, 2, "#}") == 0) {
        e = skip_space(i + 3);
      } else if (s_.compare(i, 2, "#}") == 0) {
        e = i + 2;
        if (e < s_.size() && s_[e] == '\n') ++e;  // trim_blocks
      }
      if (e != std::string::npos) {
        line_starting_ = s_[e - 1] == '\n';
        return e;
      }
    }
    error(tag, "missing end of comment tag");
  }

  size_t lex_raw(size_t body, size_t tag) {
    if (body >= s_.size()) return body;  // `{% raw %}` ending the template: jinja2 just stops
    for (size_t i = s_.find("{%", body); i != std::string::npos; i = s_.find("{%", i + 1)) {
      size_t p = i + 2;
      char sign = 0;
      if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) sign = s_[p++];
      p = skip_space(p);
      if (s_.compare(p, 6, "endraw") != 0) continue;
      p = skip_space(p + 6);
      if (p >= s_.size()) continue;
      size_t e = match_end(p, true);
      if (e == std::string::npos) continue;
      emit_data(strip_before_tag(s_.substr(body, i - body), sign, true), body);
      line_starting_ = s_[e - 1] == '\n';
      return e;
    }
    error(tag, "missing end of raw directive");
  }

  // Expression tokens up to the end of a {% %} or {{ }} tag. End markers count only
  // while no bracket is open, so `{{ {'a': {'b': 1}} }}` works as in jinja2.
  size_t lex_tag(size_t p, bool block, size_t tag) {
    std::string brackets;  // expected closers
    const size_t n = s_.size();
    while (true) {
      if (p >= n) error(tag, std::string("unexpected end of template: missing '") + (block ? "%}" : "}}") + "'");
      if (brackets.empty()) {
        size_t e = match_end(p, block);
        if (e != std::string::npos) {
          emit(block ? Tok::BlockEnd : Tok::VarEnd, p, block ? "%}" : "}}");
          line_starting_ = s_[e - 1] == '\n';
          return e;
        }
      }
      if (size_t l = space_len(p)) {
        p = skip_space(p + l);
        continue;
      }
      const char c = s_[p];
      if (is_digit(c)) {
        p = lex_number(p);
      } else if (is_name_start(c)) {
        size_t e = p;
        while (e < n && is_name_char(s_[e]) && !space_len(e)) ++e;
        emit(Tok::Name, p, s_.substr(p, e - p));
        p = e;
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                           "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
        std::string op;
        for (const char* o : kOps)
          if (s_.compare(p, std::char_traits<char>::length(o), o) == 0) {
            op = o;
            break;
          }
        if (op.empty()) error(p, std::string("unexpected char '") + c + "'");
        if (op == "(" || op == "[" || op == "{") {
          if (brackets.size() >= static_cast<size_t>(kMaxNesting))
            error(p, "brackets nested more than " + std::to_string(kMaxNesting) + " levels deep");
          brackets += op == "(" ? ')' : op == "[" ? ']' : '}';
        } else if (op == ")" || op == "]" || op == "}") {
          if (brackets.empty()) error(p, "unexpected '" + op + "'");
          if (brackets.back() != op[0])
            error(p, "unexpected '" + op + "', expected '" + std::string(1, brackets.back()) + "'");
          brackets.pop_back();
        }
        emit(Tok::Op, p, op);
        p += op.size();
      }
    }
  }

  // Digits with single underscores between them: `(\d+_)*\d+`. Returns the end, or p.
  size_t digits(size_t p) const {
    size_t e = p;
    while (e < s_.size() && is_digit(s_[e])) {
      ++e;
      if (e + 1 < s_.size() && s_[e] == '_' && is_digit(s_[e + 1])) ++e;
    }
    return e;
  }

  size_t lex_number(size_t p) {
    // Float first (jinja2 tries it before integers), unless the number follows a '.'
    // (so `x.0.1` is two subscripts).
    if (p == 0 || s_[p - 1] != '.') {
      size_t e = digits(p);
      size_t f = e;
      if (f + 1 < s_.size() && s_[f] == '.' && is_digit(s_[f + 1])) f = digits(f + 1);
      size_t x = f;
      if (x < s_.size() && (s_[x] == 'e' || s_[x] == 'E')) {
        size_t q = x + 1;
        if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
        if (q < s_.size() && is_digit(s_[q])) x = digits(q);
      }
      if (x > e) {
        std::string text;
        for (size_t i = p; i < x; ++i)
          if (s_[i] != '_') text += s_[i];
        Token& t = emit(Tok::Float, p, s_.substr(p, x - p));
        t.fval = std::strtod(text.c_str(), nullptr);
        return x;
      }
    }
    // Integers: 0b.., 0o.., 0x.. (single underscores allowed), [1-9](_?\d)*, 0(_?0)*.
    int base = 10;
    size_t q = p;
    if (s_[p] == '0' && p + 1 < s_.size()) {
      char b = static_cast<char>(s_[p + 1] | 0x20);
      base = b == 'b' ? 2 : b == 'o' ? 8 : b == 'x' ? 16 : 10;
      if (base != 10) q = p + 2;
    }
    auto digit_val = [](char c) -> int {
      if (is_digit(c)) return c - '0';
      char l = static_cast<char>(c | 0x20);
      return l >= 'a' && l <= 'f' ? l - 'a' + 10 : 99;
    };
    size_t e = q;
    uint64_t value = 0;
    bool overflow = false;
    bool any = false;
    while (e < s_.size()) {
      size_t d = e;
      if (s_[d] == '_' && (base != 10 || any)) ++d;  // an underscore only before a digit
      if (d >= s_.size() || digit_val(s_[d]) >= base) break;
      if (base == 10 && !any && s_[p] == '0' && s_[d] != '0') break;  // 0(_?0)*
      if (base == 10 && any && s_[p] == '0' && s_[d] != '0') break;
      int v = digit_val(s_[d]);
      if (value > (UINT64_MAX - v) / base) overflow = true;
      value = value * base + v;
      any = true;
      e = d + 1;
    }
    if (!any) {
      if (base != 10) {  // "0x" without digits: jinja2 reads the 0 alone
        emit(Tok::Int, p, "0");
        return p + 1;
      }
      error(p, "invalid number");
    }
    if (overflow || value > static_cast<uint64_t>(INT64_MAX)) error(p, "integer literal too large");
    Token& t = emit(Tok::Int, p, s_.substr(p, e - p));
    t.ival = static_cast<int64_t>(value);
    return e;
  }

  // A '...' or "..." literal, decoded with Python's unicode-escape rules as jinja2 does.
  size_t lex_string(size_t p) {
    const char quote = s_[p];
    std::string value;
    size_t i = p + 1;
    auto hex = [&](size_t at, int count, uint32_t& out) {
      out = 0;
      for (int k = 0; k < count; ++k) {
        if (at + k >= s_.size()) return false;
        char c = static_cast<char>(s_[at + k] | 0x20);
        int v = is_digit(s_[at + k]) ? s_[at + k] - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (v < 0) return false;
        out = out * 16 + static_cast<uint32_t>(v);
      }
      return true;
    };
    while (true) {
      if (i >= s_.size()) error(p, "unterminated string literal");
      char c = s_[i];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++i;
        continue;
      }
      if (i + 1 >= s_.size()) error(p, "unterminated string literal");
      char e = s_[i + 1];
      i += 2;
      uint32_t cp = 0;
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'n': value += '\n'; break;
        case 'r': value += '\r'; break;
        case 't': value += '\t'; break;
        case 'v': value += '\v'; break;
        case 'x':
        case 'u':
        case 'U': {
          int count = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (!hex(i, count, cp)) error(i - 2, std::string("truncated \\") + e + " escape in string literal");
          if (cp > 0x10FFFF) error(i - 2, "illegal Unicode character in string literal");
          append_utf8(value, cp);
          i += count;
          break;
        }
        case 'N': error(i - 2, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && i < s_.size() && s_[i] >= '0' && s_[i] <= '7'; ++k, ++i)
              cp = cp * 8 + static_cast<uint32_t>(s_[i] - '0');
            append_utf8(value, cp);
          } else {  // unknown escapes stay as written
            value += '\\';
            value += e;
          }
      }
    }
    emit(Tok::String, p, std::move(value));
    return i + 1;
  }
};

}  // namespace

std::vector<Token> lex_template(const std::string& source) { return Lexer(source).run(); }

}  // namespace tern::jinja
