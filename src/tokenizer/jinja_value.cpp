// Python semantics for the chat-template value model (see jinja_value.h).
#include "tokenizer/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tern/error.h"

namespace tern::jinja {

void fail_at(int line, int col, const std::string& what) {
  throw Error("chat template: line " + std::to_string(line) + " col " + std::to_string(col) + ": " + what);
}

// ---------------------------------------------------------------------------------
// Containers

bool Value::is_mapping() const { return is_dict() && dict().kind == DictObj::Kind::Plain; }

const Value* DictObj::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void DictObj::set(const std::string& key, Value value) {
  for (auto& [k, v] : items)
    if (k == key) {
      v = std::move(value);
      return;
    }
  items.emplace_back(key, std::move(value));
}

Value loop_attr(const DictObj& loop, const std::string& name) {
  const int64_t i = loop.loop_index0;
  const int64_t n = loop.loop_items ? static_cast<int64_t>(loop.loop_items->size()) : 0;
  if (name == "index") return Value(i + 1);
  if (name == "index0") return Value(i);
  if (name == "revindex") return Value(n - i);
  if (name == "revindex0") return Value(n - i - 1);
  if (name == "first") return Value(i == 0);
  if (name == "last") return Value(i == n - 1);
  if (name == "length") return Value(n);
  if (name == "depth") return Value(int64_t{1});
  if (name == "depth0") return Value(int64_t{0});
  if (name == "previtem") {
    if (i > 0 && i - 1 < n) return (*loop.loop_items)[static_cast<size_t>(i - 1)];
    return Value(Undefined{"there is no previous item"});
  }
  if (name == "nextitem") {
    if (i + 1 < n) return (*loop.loop_items)[static_cast<size_t>(i + 1)];
    return Value(Undefined{"there is no next item"});
  }
  return Value(Undefined{"'LoopContext object' has no attribute '" + name + "'"});
}

int value_depth(const Value& v) {
  if (v.is_list()) return v.list().depth;
  if (v.is_dict()) return v.dict().depth;
  if (v.is_func()) return 1 + value_depth(v.func().self);
  return 0;
}

static void check_depth(int depth) {
  if (depth > kMaxNesting) throw EvalError("value nested more than " + std::to_string(kMaxNesting) + " levels deep");
}

Value make_list(std::vector<Value> items, bool tuple) {
  if (items.size() > kMaxListItems)
    throw EvalError("list of " + std::to_string(items.size()) + " items is over the limit of " +
                    std::to_string(kMaxListItems));
  auto l = std::make_shared<ListObj>();
  int depth = 0;
  for (const auto& it : items) depth = std::max(depth, value_depth(it));
  check_depth(depth + 1);
  l->items = std::move(items);
  l->tuple = tuple;
  l->depth = depth + 1;
  return Value(ListPtr(std::move(l)));
}

DictPtr make_dict(DictObj::Kind kind) {
  auto d = std::make_shared<DictObj>();
  d->kind = kind;
  return d;
}

void raise_depth(DictObj& d, const Value& inserted) {
  int depth = std::max(d.depth, value_depth(inserted) + 1);
  check_depth(depth);
  d.depth = depth;
}

// ---------------------------------------------------------------------------------
// UTF-8

void append_utf8(std::string& out, char32_t cp) {
  if (cp >= 0xDC80 && cp <= 0xDCFF) {  // an undecodable byte kept as is
    out += static_cast<char>(cp - 0xDC00);
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF.
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
               (cp >= 0xD800 && cp <= 0xDFFF)))
      ok = false;
    if (!ok) {
      out += static_cast<char32_t>(0xDC00 + c);
      i += 1;
    } else {
      out += cp;
      i += len;
    }
  }
  return out;
}

std::string utf8_encode(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) append_utf8(out, c);
  return out;
}

size_t utf8_length(std::string_view s) {
  bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  return ascii ? s.size() : utf8_decode(s).size();
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// ---------------------------------------------------------------------------------
// str(), repr()

std::string type_name(const Value& v) {
  switch (v.v.index()) {
    case 0: return "Undefined";
    case 1: return "NoneType";
    case 2: return "bool";
    case 3: return "int";
    case 4: return "float";
    case 5: return "str";
    case 6: return v.list().tuple ? "tuple" : "list";
    case 7:
      switch (v.dict().kind) {
        case DictObj::Kind::Plain: return "dict";
        case DictObj::Kind::Namespace: return "Namespace";
        case DictObj::Kind::Loop: return "LoopContext";
      }
      return "dict";
    default: return v.func().bound ? "builtin_function_or_method" : "function";
  }
}

bool truthy(const Value& v) {
  switch (v.v.index()) {
    case 0: return false;
    case 1: return false;
    case 2: return std::get<bool>(v.v);
    case 3: return std::get<int64_t>(v.v) != 0;
    case 4: return std::get<double>(v.v) != 0.0;
    case 5: return !v.str().empty();
    case 6: return !v.list().items.empty();
    case 7: return v.dict().kind != DictObj::Kind::Plain || !v.dict().items.empty();
    default: return true;
  }
}

// Python's repr(float): the shortest digits that round-trip, positional notation when
// the decimal exponent is in [-4, 16), scientific with a two-digit exponent otherwise.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string s(buf, res.ptr);  // "-1.2345e+02"
  std::string out;
  if (s[0] == '-') {
    out = "-";
    s.erase(0, 1);
  }
  size_t e = s.find('e');
  int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  int decpt = exp + 1;  // value = 0.DIGITS * 10^decpt
  int nd = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(-decpt, '0') + digits;
    } else if (decpt >= nd) {
      out += digits + std::string(decpt - nd, '0') + ".0";
    } else {
      out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
  } else {
    out += digits[0];
    if (nd > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return out;
}

static void check_recursion(int depth) {
  if (depth > 2 * kMaxNesting) throw EvalError("value nested too deeply (or containing itself)");
}

// str.isprintable() for the characters chat text plausibly holds: controls, non-space
// separators, common format characters and surrogates are escaped by repr().
static bool py_printable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c >= 0x80 && is_py_space(c)) return false;
  if ((c >= 0x200B && c <= 0x200F) || (c >= 0x202A && c <= 0x202E) || (c >= 0x2060 && c <= 0x2064) || c == 0xFEFF ||
      (c >= 0xD800 && c <= 0xDFFF))
    return false;
  return true;
}

static void repr_string(std::string& out, const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  out += quote;
  for (char32_t c : utf8_decode(s)) {
    char esc[16];
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (!py_printable(c)) {
      if (c <= 0xFF)
        std::snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned>(c));
      else if (c <= 0xFFFF)
        std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
      else
        std::snprintf(esc, sizeof esc, "\\U%08x", static_cast<unsigned>(c));
      out += esc;
    } else {
      append_utf8(out, c);
    }
  }
  out += quote;
}

static void write_py(std::string& out, const Value& v, bool as_repr, int depth);

static void write_dict_body(std::string& out, const DictObj& d, int depth) {
  out += '{';
  bool first = true;
  for (const auto& [k, val] : d.items) {
    if (!first) out += ", ";
    first = false;
    repr_string(out, k);
    out += ": ";
    write_py(out, val, true, depth + 1);
  }
  out += '}';
}

static void write_py(std::string& out, const Value& v, bool as_repr, int depth) {
  check_recursion(depth);
  if (out.size() > kMaxStringBytes) throw EvalError("string longer than the 64 MB limit");
  switch (v.v.index()) {
    case 0:  // str(Undefined) is "", repr(Undefined) is "Undefined"
      if (as_repr) out += "Undefined";
      return;
    case 1: out += "None"; return;
    case 2: out += std::get<bool>(v.v) ? "True" : "False"; return;
    case 3: out += std::to_string(std::get<int64_t>(v.v)); return;
    case 4: out += float_repr(std::get<double>(v.v)); return;
    case 5:
      if (as_repr)
        repr_string(out, v.str());
      else
        out += v.str();
      return;
    case 6: {
      const ListObj& l = v.list();
      out += l.tuple ? '(' : '[';
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i) out += ", ";
        write_py(out, l.items[i], true, depth + 1);
      }
      if (l.tuple && l.items.size() == 1) out += ',';
      out += l.tuple ? ')' : ']';
      return;
    }
    case 7: {
      const DictObj& d = v.dict();
      if (d.kind == DictObj::Kind::Plain) {
        write_dict_body(out, d, depth);
      } else if (d.kind == DictObj::Kind::Namespace) {
        out += "<Namespace ";
        write_dict_body(out, d, depth);
        out += '>';
      } else {
        out += "<LoopContext " + to_str(loop_attr(d, "index")) + "/" + to_str(loop_attr(d, "length")) + ">";
      }
      return;
    }
    default: {
      const FuncObj& f = v.func();
      out += f.bound ? "<built-in method " + f.name + " of " + type_name(f.self) + " object>"
                     : "<function " + f.name + ">";
      return;
    }
  }
}

std::string to_str(const Value& v) {
  if (v.is_string()) return v.str();
  std::string out;
  write_py(out, v, false, 0);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  write_py(out, v, true, 0);
  return out;
}

// ---------------------------------------------------------------------------------
// Comparison

static double as_double(const Value& v) {
  if (v.is_bool()) return std::get<bool>(v.v) ? 1.0 : 0.0;
  if (v.is_int()) return static_cast<double>(std::get<int64_t>(v.v));
  return std::get<double>(v.v);
}

static bool is_integral(const Value& v) { return v.is_bool() || v.is_int(); }
static int64_t as_int(const Value& v) { return v.is_bool() ? (std::get<bool>(v.v) ? 1 : 0) : std::get<int64_t>(v.v); }

// Numbers compare by value across bool/int/float, as in Python.
static int compare_numbers(const Value& a, const Value& b) {
  if (is_integral(a) && is_integral(b)) {
    int64_t x = as_int(a), y = as_int(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  double x = as_double(a), y = as_double(b);
  if (std::isnan(x) || std::isnan(y)) return 2;  // unordered: neither <, > nor ==
  return x < y ? -1 : x > y ? 1 : 0;
}

static bool equals_rec(const Value& a, const Value& b, int depth) {
  check_recursion(depth);
  if (a.is_number() && b.is_number()) return compare_numbers(a, b) == 0;
  if (a.v.index() != b.v.index()) return false;
  switch (a.v.index()) {
    case 0: return true;  // Undefined == Undefined
    case 1: return true;
    case 5: return a.str() == b.str();
    case 6: {
      const ListObj &x = a.list(), &y = b.list();
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i)
        if (!equals_rec(x.items[i], y.items[i], depth + 1)) return false;
      return true;
    }
    case 7: {
      const DictObj &x = a.dict(), &y = b.dict();
      if (x.kind != DictObj::Kind::Plain || y.kind != DictObj::Kind::Plain) return &x == &y;
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* o = y.find(k);
        if (!o || !equals_rec(v, *o, depth + 1)) return false;
      }
      return true;
    }
    default: return std::get<FuncPtr>(a.v) == std::get<FuncPtr>(b.v);
  }
}

bool equals(const Value& a, const Value& b) { return equals_rec(a, b, 0); }

static int compare_rec(const Value& a, const Value& b, int depth) {
  check_recursion(depth);
  if (a.is_number() && b.is_number()) return compare_numbers(a, b);
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple) {
    const auto &x = a.list().items, &y = b.list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals_rec(x[i], y[i], depth + 1)) continue;
      return compare_rec(x[i], y[i], depth + 1);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  if (a.is_undefined()) throw EvalError(a.undefined_hint());
  if (b.is_undefined()) throw EvalError(b.undefined_hint());
  throw EvalError("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

int compare(const Value& a, const Value& b) { return compare_rec(a, b, 0); }

// ---------------------------------------------------------------------------------
// json.dumps

static void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : utf8_decode(s)) {
    char esc[16];
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c >= 0x10000 && !(c >= 0xDC80 && c <= 0xDCFF)) {
        char32_t v = c - 0x10000;
        std::snprintf(esc, sizeof esc, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                      static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
      } else {
        std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
      }
      out += esc;
    } else {
      append_utf8(out, c);
    }
  }
  out += '"';
}

static void json_write(std::string& out, const Value& v, const JsonOptions& o, int level, int depth) {
  check_recursion(depth);
  if (out.size() > kMaxStringBytes) throw EvalError("string longer than the 64 MB limit");
  auto newline = [&](int lvl) {
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += o.indent;
  };
  switch (v.v.index()) {
    case 1: out += "null"; return;
    case 2: out += std::get<bool>(v.v) ? "true" : "false"; return;
    case 3: out += std::to_string(std::get<int64_t>(v.v)); return;
    case 4: {
      double d = std::get<double>(v.v);
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : float_repr(d);
      return;
    }
    case 5: json_string(out, v.str(), o.ensure_ascii); return;
    case 6: {
      const auto& items = v.list().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += o.item_sep;
        if (o.has_indent) newline(level + 1);
        json_write(out, items[i], o, level + 1, depth + 1);
      }
      if (o.has_indent) newline(level);
      out += ']';
      return;
    }
    case 7:
      if (v.is_mapping()) {
        std::vector<const std::pair<std::string, Value>*> items;
        for (const auto& kv : v.dict().items) items.push_back(&kv);
        if (o.sort_keys)
          std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
        if (items.empty()) {
          out += "{}";
          return;
        }
        out += '{';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += o.item_sep;
          if (o.has_indent) newline(level + 1);
          json_string(out, items[i]->first, o.ensure_ascii);
          out += o.key_sep;
          json_write(out, items[i]->second, o, level + 1, depth + 1);
        }
        if (o.has_indent) newline(level);
        out += '}';
        return;
      }
      break;
    default: break;
  }
  throw EvalError("Object of type " + type_name(v) + " is not JSON serializable");
}

std::string to_json(const Value& v, const JsonOptions& opts) {
  std::string out;
  json_write(out, v, opts, 0, 0);
  return out;
}

}  // namespace tern::jinja
