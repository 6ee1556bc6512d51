// Python operators and jinja2 builtins for the chat-template renderer (see
// jinja_builtins.h). Semantics follow CPython and jinja2 3.1 as transformers runs them
// (ImmutableSandboxedEnvironment, autoescape off); deviations are noted where they are.
#include "tokenizer/jinja_builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <optional>
#include <string_view>

#include "tern/error.h"
#include "tokenizer/jinja_eval.h"
#include "tokenizer/jinja_pystr.h"

namespace tern::jinja {
namespace {

using Opt = std::optional<Value>;

Value undefined(std::string hint) { return Value(Undefined{std::move(hint)}); }

[[noreturn]] void undefined_error(const Value& v) {
  throw EvalError(v.undefined_hint().empty() ? std::string("value is undefined") : v.undefined_hint());
}

// ---------------------------------------------------------------------------------
// Numbers: bool is an int, int and float mix as in Python. Integers are 64-bit here
// (Python's are unbounded), so overflow is an error instead of a big number.

bool is_integral(const Value& v) { return v.is_bool() || v.is_int(); }
int64_t to_i(const Value& v) { return v.is_bool() ? (std::get<bool>(v.v) ? 1 : 0) : std::get<int64_t>(v.v); }
double to_d(const Value& v) { return v.is_float() ? std::get<double>(v.v) : static_cast<double>(to_i(v)); }

[[noreturn]] void overflow() { throw EvalError("integer overflow (integers beyond 64 bits are not supported)"); }

int64_t floor_div(int64_t a, int64_t b) {
  if (b == 0) throw EvalError("integer division or modulo by zero");
  if (a == std::numeric_limits<int64_t>::min() && b == -1) overflow();
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t py_mod(int64_t a, int64_t b) {
  if (b == 0) throw EvalError("integer division or modulo by zero");
  if (b == -1) return 0;
  int64_t m = a % b;
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

double py_fmod(double a, double b) {
  if (b == 0) throw EvalError("float modulo");
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  if (m == 0) m = std::copysign(0.0, b);
  return m;
}

// CPython's float floor division (float_floor_div in floatobject.c).
double float_floor_div(double vx, double wx) {
  if (wx == 0) throw EvalError("float floor division by zero");
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod != 0 && ((wx < 0) != (mod < 0))) div -= 1.0;
  if (div == 0) return std::copysign(0.0, vx / wx);
  double fl = std::floor(div);
  if (div - fl > 0.5) fl += 1.0;
  return fl;
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  throw EvalError("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

void check_string_size(size_t n) {
  if (n > kMaxStringBytes) throw EvalError("string longer than the 64 MB limit");
}

// printf-style `"fmt" % args` (a tuple gives several arguments): conversions
// s r d i f F e E g G x X o and %%, with flags, width and precision. Mapping keys
// (`%(name)s`) and `*` widths are not supported.
std::string percent_format(Runtime& rt, const std::string& fmt, const Value& arg) {
  std::vector<Value> args = arg.is_list() && arg.list().tuple ? arg.list().items : std::vector<Value>{arg};
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    size_t j = i + 1;
    std::string flags;
    while (j < fmt.size() && std::string_view("-+ #0").find(fmt[j]) != std::string_view::npos) flags += fmt[j++];
    int width = 0, prec = -1;
    while (j < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[j])) && width < 100000)
      width = width * 10 + (fmt[j++] - '0');
    if (j < fmt.size() && fmt[j] == '.') {
      prec = 0;
      ++j;
      while (j < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[j])) && prec < 100000)
        prec = prec * 10 + (fmt[j++] - '0');
    }
    if (j >= fmt.size()) throw EvalError("incomplete format");
    const char conv = fmt[j];
    i = j;
    if (conv == '%') {
      out += '%';
      continue;
    }
    if (std::string_view("srdifFeEgGxXo").find(conv) == std::string_view::npos)
      throw EvalError(std::string("unsupported format character '") + conv + "'");
    if (next >= args.size()) throw EvalError("not enough arguments for format string");
    const Value& v = args[next++];
    if (v.is_undefined() && conv != 's' && conv != 'r') undefined_error(v);
    std::string piece;
    if (conv == 's' || conv == 'r') {
      piece = conv == 's' ? to_str(v) : repr(v);
      if (prec >= 0) piece = utf8_encode(std::u32string_view(utf8_decode(piece)).substr(0, static_cast<size_t>(prec)));
      size_t len = utf8_length(piece);
      if (static_cast<size_t>(width) > len) {
        std::string pad(static_cast<size_t>(width) - len, ' ');
        piece = flags.find('-') != std::string::npos ? piece + pad : pad + piece;
      }
    } else {
      if (!v.is_number())
        throw EvalError(std::string("%") + conv + " format: a real number is required, not " + type_name(v));
      std::string spec =
          "%" + flags + (width ? std::to_string(width) : "") + (prec >= 0 ? "." + std::to_string(prec) : "");
      // snprintf twice: once for the length (width and precision may be large), once to write.
      auto format = [&](const std::string& f, auto x) {
        int n = std::snprintf(nullptr, 0, f.c_str(), x);
        if (n < 0) throw EvalError("bad format");
        check_string_size(static_cast<size_t>(n));
        std::string r(static_cast<size_t>(n) + 1, '\0');
        std::snprintf(r.data(), r.size(), f.c_str(), x);
        r.pop_back();
        return r;
      };
      if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'o') {
        if (!is_integral(v) && conv != 'd' && conv != 'i')
          throw EvalError(std::string("%") + conv + " format: an integer is required");
        double d = to_d(v);
        if (!is_integral(v) && !std::isfinite(d)) throw EvalError("cannot convert float to integer");
        if (!is_integral(v) && (d >= 9.2233720368547758e18 || d < -9.2233720368547758e18)) overflow();
        long long x = is_integral(v) ? static_cast<long long>(to_i(v)) : static_cast<long long>(d);
        piece = format(spec + "ll" + (conv == 'i' ? 'd' : conv), x);
      } else {
        piece = format(spec + conv, to_d(v));
      }
    }
    out += piece;
    check_string_size(out.size());
  }
  if (next < args.size()) throw EvalError("not all arguments converted during string formatting");
  rt.tick(1 + out.size() / 64);
  return out;
}

// ---------------------------------------------------------------------------------
// Argument binding, Python style: positional first, then keywords by parameter name.

std::vector<Opt> bind(const std::string& fn, const Args& a, std::initializer_list<const char*> params) {
  std::vector<Opt> out(params.size());
  if (a.pos.size() > params.size())
    throw EvalError(fn + "() takes at most " + std::to_string(params.size()) + " argument(s) (" +
                    std::to_string(a.pos.size()) + " given)");
  for (size_t i = 0; i < a.pos.size(); ++i) out[i] = a.pos[i];
  for (const auto& [k, v] : a.kw) {
    size_t j = 0;
    for (const char* p : params) {
      if (k == p) break;
      ++j;
    }
    if (j == params.size()) throw EvalError(fn + "() got an unexpected keyword argument '" + k + "'");
    if (out[j]) throw EvalError(fn + "() got multiple values for argument '" + k + "'");
    out[j] = v;
  }
  return out;
}

const Value& required(const std::vector<Opt>& b, size_t i, const std::string& fn, const char* name) {
  if (!b[i]) throw EvalError(fn + "() missing required argument '" + name + "'");
  return *b[i];
}

int64_t int_arg(const Value& v, const std::string& what) {
  if (v.is_undefined()) undefined_error(v);
  if (!is_integral(v)) throw EvalError(what + " must be an integer, not '" + type_name(v) + "'");
  return to_i(v);
}

bool flag(const Opt& o, bool def) { return o ? truthy(*o) : def; }

std::string str_arg(const Value& v, const std::string& what) {
  if (!v.is_string()) throw EvalError(what + " must be a string, not '" + type_name(v) + "'");
  return v.str();
}

// ---------------------------------------------------------------------------------
// Attribute access and sequences

bool is_string_method(const std::string& n) {
  static const char* const kMethods[] = {"strip",   "lstrip",  "rstrip",  "startswith", "endswith", "split",
                                         "upper",   "lower",   "title",   "capitalize", "replace",  "find",
                                         "rfind",   "count",   "join",    "splitlines", "isdigit",  "isalpha",
                                         "isalnum", "isspace", "isupper", "islower"};
  for (const char* m : kMethods)
    if (n == m) return true;
  return false;
}

Value bound(const Value& self, const std::string& name) {
  auto f = std::make_shared<FuncObj>();
  f->name = name;
  f->self = self;
  f->bound = true;
  return Value(FuncPtr(std::move(f)));
}

std::string no_attr(const Value& obj, const std::string& name) {
  std::string msg = "'";  // built by appending: GCC 12 warns (-Wrestrict) on "'" + std::string
  msg += type_name(obj);
  msg += " object' has no attribute '";
  msg += name;
  msg += "'";
  return msg;
}

// Python slice bounds (PySlice_AdjustIndices).
void adjust_slice(int64_t len, std::optional<int64_t> start, std::optional<int64_t> stop, int64_t step, int64_t& b,
                  int64_t& e) {
  auto fix = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) {
      x += len;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= len) {
      x = step < 0 ? len - 1 : len;
    }
    return x;
  };
  b = fix(start, step < 0 ? len - 1 : 0);
  e = fix(stop, step < 0 ? -1 : len);
}

// jinja2's make_attrgetter: "a.b.0" looks up a, then b, then index 0 (environment.getitem).
Value get_path(const Value& item, const Value& attribute, const Opt& def) {
  Value cur = item;
  if (attribute.is_string()) {
    const std::string& a = attribute.str();
    size_t pos = 0;
    while (true) {
      size_t dot = a.find('.', pos);
      std::string part = a.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
      bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (digits && part.size() < 18)
        cur = get_item(cur, Value(static_cast<int64_t>(std::stoll(part))));
      else
        cur = get_item(cur, Value(part));
      if (def && !def->is_none() && cur.is_undefined()) cur = *def;
      if (dot == std::string::npos) break;
      pos = dot + 1;
    }
  } else {
    cur = get_item(cur, attribute);
    if (def && !def->is_none() && cur.is_undefined()) cur = *def;
  }
  return cur;
}

// The key a sort/unique/min/max compares: the (attribute) value, lower-cased if it is a
// string and the comparison is case-insensitive.
Value sort_key(const Value& item, const Opt& attribute, bool case_sensitive) {
  Value k = attribute && !attribute->is_none() ? get_path(item, *attribute, std::nullopt) : item;
  if (!case_sensitive && k.is_string()) return Value(py_lower(k.str()));
  return k;
}

// A stable merge sort that stays memory-safe whatever the comparator answers.
void merge_sort(std::vector<size_t>& idx, const std::function<bool(size_t, size_t)>& less) {
  if (idx.size() < 2) return;
  std::vector<size_t> tmp(idx.size());
  for (size_t width = 1; width < idx.size(); width *= 2) {
    for (size_t lo = 0; lo < idx.size(); lo += 2 * width) {
      size_t mid = std::min(lo + width, idx.size()), hi = std::min(lo + 2 * width, idx.size());
      size_t a = lo, b = mid, k = lo;
      while (a < mid && b < hi) tmp[k++] = less(idx[b], idx[a]) ? idx[b++] : idx[a++];
      while (a < mid) tmp[k++] = idx[a++];
      while (b < hi) tmp[k++] = idx[b++];
    }
    idx.swap(tmp);
  }
}

Value length_of(const Value& v) {
  if (v.is_string()) return Value(static_cast<int64_t>(utf8_length(v.str())));
  if (v.is_list()) return Value(static_cast<int64_t>(v.list().items.size()));
  if (v.is_mapping()) return Value(static_cast<int64_t>(v.dict().items.size()));
  if (v.is_undefined()) return Value(int64_t{0});
  throw EvalError("object of type '" + type_name(v) + "' has no len()");
}

Value list_of(std::vector<Value> items) { return make_list(std::move(items)); }

// ---------------------------------------------------------------------------------
// Methods of str, dict and the loop object

Value call_method(Runtime& rt, const Value& self, const std::string& name, const Args& a) {
  const std::string fn = type_name(self) + "." + name;
  if (self.is_string()) {
    const std::string& s = self.str();
    rt.tick(1 + s.size() / 64);
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      auto b = bind(fn, a, {"chars"});
      return Value(py_strip(s, b[0], name != "rstrip", name != "lstrip"));
    }
    if (name == "startswith" || name == "endswith") {
      auto b = bind(fn, a, {"prefix"});
      const Value& p = required(b, 0, fn, "prefix");
      std::vector<Value> options = p.is_list() && p.list().tuple ? p.list().items : std::vector<Value>{p};
      for (const auto& o : options) {
        const std::string x = str_arg(o, fn + " argument");
        bool hit = name == "startswith" ? s.compare(0, x.size(), x) == 0
                                        : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
        if (hit) return Value(true);
      }
      return Value(false);
    }
    if (name == "split") {
      auto b = bind(fn, a, {"sep", "maxsplit"});
      return list_of(py_split(s, b[0], b[1] ? int_arg(*b[1], "maxsplit") : -1));
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      bind(fn, a, {});
      if (name == "upper") return Value(py_upper(s));
      if (name == "lower") return Value(py_lower(s));
      if (name == "title") return Value(py_title(s));
      return Value(py_capitalize(s));
    }
    if (name == "replace") {
      auto b = bind(fn, a, {"old", "new", "count"});
      return Value(py_replace(s, str_arg(required(b, 0, fn, "old"), "old"), str_arg(required(b, 1, fn, "new"), "new"),
                              b[2] ? int_arg(*b[2], "count") : -1));
    }
    if (name == "find" || name == "rfind" || name == "count") {
      auto b = bind(fn, a, {"sub"});
      const std::string sub = str_arg(required(b, 0, fn, "sub"), "sub");
      if (name == "count") {
        if (sub.empty()) return Value(static_cast<int64_t>(utf8_length(s) + 1));
        int64_t n = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
        return Value(n);
      }
      size_t p = name == "find" ? s.find(sub) : s.rfind(sub);
      return Value(p == std::string::npos ? int64_t{-1} : static_cast<int64_t>(utf8_length(s.substr(0, p))));
    }
    if (name == "join") {
      auto b = bind(fn, a, {"iterable"});
      std::string out;
      size_t i = 0;
      for (const auto& item : iterate(required(b, 0, fn, "iterable"))) {
        if (!item.is_string())
          throw EvalError("sequence item " + std::to_string(i) + ": expected str instance, " + type_name(item) +
                          " found");
        if (i++) out += s;
        out += item.str();
        check_string_size(out.size());
      }
      return Value(std::move(out));
    }
    if (name == "splitlines") {
      auto b = bind(fn, a, {"keepends"});
      std::vector<Value> out;
      for (auto& l : py_splitlines(s, flag(b[0], false))) out.emplace_back(std::move(l));
      return list_of(std::move(out));
    }
    // is* predicates: ASCII classes; non-ASCII letters count as alphabetic.
    bind(fn, a, {});
    std::u32string cps = utf8_decode(s);
    auto all = [&](auto pred) { return !cps.empty() && std::all_of(cps.begin(), cps.end(), pred); };
    auto alpha = [](char32_t c) { return is_cased(c); };
    auto digit = [](char32_t c) { return c >= '0' && c <= '9'; };
    if (name == "isdigit") return Value(all(digit));
    if (name == "isalpha") return Value(all(alpha));
    if (name == "isalnum") return Value(all([&](char32_t c) { return alpha(c) || digit(c); }));
    if (name == "isspace") return Value(all(is_py_space));
    if (name == "isupper" || name == "islower") {
      bool any = false, ok = true;
      for (char32_t c : cps) {
        if (c >= 'a' && c <= 'z') {
          any = true;
          ok = ok && name == "islower";
        } else if (c >= 'A' && c <= 'Z') {
          any = true;
          ok = ok && name == "isupper";
        }
      }
      return Value(any && ok);
    }
  }
  if (self.is_dict()) {
    const DictObj& d = self.dict();
    if (d.kind == DictObj::Kind::Loop && name == "cycle") {
      if (a.pos.empty()) throw EvalError("no items for cycling given");
      if (!a.kw.empty()) throw EvalError("loop.cycle() takes no keyword arguments");
      return a.pos[static_cast<size_t>(d.loop_index0 % static_cast<int64_t>(a.pos.size()))];
    }
    if (d.kind == DictObj::Kind::Plain) {
      rt.tick(1 + d.items.size());
      if (name == "get") {
        auto b = bind(fn, a, {"key", "default"});
        const Value& k = required(b, 0, fn, "key");
        if (k.is_string())
          if (const Value* v = d.find(k.str())) return *v;
        return b[1] ? *b[1] : Value(None{});
      }
      bind(fn, a, {});
      std::vector<Value> out;
      for (const auto& [k, v] : d.items) {
        if (name == "items")
          out.push_back(make_list({Value(k), v}, true));
        else if (name == "keys")
          out.emplace_back(k);
        else if (name == "values")
          out.push_back(v);
      }
      if (name == "items" || name == "keys" || name == "values") return list_of(std::move(out));
    }
  }
  throw EvalError(no_attr(self, name));
}

// ---------------------------------------------------------------------------------
// Global functions: jinja2's range/namespace/dict and transformers' additions.

Value call_global(Runtime& rt, const std::string& name, const Args& a) {
  if (name == "range") {
    if (!a.kw.empty()) throw EvalError("range() takes no keyword arguments");
    if (a.pos.empty() || a.pos.size() > 3)
      throw EvalError("range expected 1 to 3 arguments, got " + std::to_string(a.pos.size()));
    int64_t start = 0, stop, step = 1;
    if (a.pos.size() == 1) {
      stop = int_arg(a.pos[0], "range() argument");
    } else {
      start = int_arg(a.pos[0], "range() argument");
      stop = int_arg(a.pos[1], "range() argument");
      if (a.pos.size() == 3) step = int_arg(a.pos[2], "range() argument");
    }
    if (step == 0) throw EvalError("range() arg 3 must not be zero");
    __int128 span = step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
    __int128 astep = step > 0 ? step : -static_cast<__int128>(step);
    __int128 n = span <= 0 ? 0 : (span + astep - 1) / astep;
    if (n > kMaxRange)
      throw EvalError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (" + std::to_string(kMaxRange) +
                      ").");
    rt.tick(static_cast<uint64_t>(n));
    std::vector<Value> out;
    out.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) out.emplace_back(start + i * step);
    return list_of(std::move(out));
  }
  if (name == "namespace" || name == "dict") {
    DictPtr d = name == "namespace" ? rt.new_namespace() : make_dict();
    if (a.pos.size() > 1) throw EvalError(name + "() takes at most 1 positional argument");
    if (!a.pos.empty()) {
      const Value& init = a.pos[0];
      if (init.is_mapping()) {
        for (const auto& [k, v] : init.dict().items) d->set(k, v);
      } else {
        for (const auto& pair : iterate(init)) {
          std::vector<Value> kv = iterate(pair);
          if (kv.size() != 2 || !kv[0].is_string())
            throw EvalError(name + "() argument must be a mapping or (string key, value) pairs");
          d->set(kv[0].str(), kv[1]);
        }
      }
    }
    for (const auto& [k, v] : a.kw) d->set(k, v);
    for (const auto& [k, v] : d->items) raise_depth(*d, v);
    return Value(d);
  }
  if (name == "raise_exception") {
    auto b = bind(name, a, {"message"});
    throw Error("chat template: " + to_str(required(b, 0, name, "message")));
  }
  if (name == "strftime_now") {
    auto b = bind(name, a, {"format"});
    std::string fmt = str_arg(required(b, 0, name, "format"), "format");
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    if (fmt.empty()) return Value(std::string());
    // strftime returns 0 both for "too small" and for an empty result; grow, then give up.
    for (size_t cap = 256; cap <= (1u << 20); cap *= 4) {
      std::string buf(cap, '\0');
      size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
      if (n > 0) return Value(buf.substr(0, n));
    }
    return Value(std::string());
  }
  throw EvalError("'" + name + "' is not callable");
}

// ---------------------------------------------------------------------------------
// Filters

Value filter_map_like(Runtime& rt, const std::string& name, const Value& subject, const Args& a) {
  std::vector<Value> items = iterate(subject);
  rt.tick(items.size());
  std::vector<Value> out;
  if (name == "map") {
    if (a.pos.empty()) {  // map(attribute='x', default=...)
      const Value* attribute = nullptr;
      Opt def;
      for (const auto& [k, v] : a.kw) {
        if (k == "attribute")
          attribute = &v;
        else if (k == "default")
          def = v;
        else
          throw EvalError("map() got an unexpected keyword argument '" + k + "'");
      }
      if (!attribute) throw EvalError("map() needs a filter name or attribute=");
      for (const auto& it : items) out.push_back(get_path(it, *attribute, def));
      return list_of(std::move(out));
    }
    const std::string filter = str_arg(a.pos[0], "map() filter name");
    if (!is_supported_filter(filter)) throw EvalError("no filter named '" + filter + "'");
    Args rest{std::vector<Value>(a.pos.begin() + 1, a.pos.end()), a.kw};
    for (const auto& it : items) out.push_back(apply_filter(rt, filter, it, rest));
    return list_of(std::move(out));
  }
  // select / reject / selectattr / rejectattr
  const bool by_attr = name == "selectattr" || name == "rejectattr";
  const bool keep_if = name == "select" || name == "selectattr";
  size_t off = 0;
  Value attribute;
  if (by_attr) {
    if (a.pos.empty()) throw EvalError("Missing parameter for attribute name");
    attribute = a.pos[0];
    off = 1;
  }
  std::string test;
  Args test_args;
  if (a.pos.size() > off) {
    test = str_arg(a.pos[off], name + "() test name");
    if (!is_supported_test(test)) throw EvalError("no test named '" + test + "'");
    test_args.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(off + 1), a.pos.end());
    test_args.kw = a.kw;
  }
  for (const auto& it : items) {
    Value v = by_attr ? get_path(it, attribute, std::nullopt) : it;
    bool r = test.empty() ? truthy(v) : apply_test(rt, test, v, test_args);
    if (r == keep_if) out.push_back(it);
  }
  return list_of(std::move(out));
}

Value filter_tojson(const Value& subject, const Args& a) {
  // transformers' override: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
  // sort_keys=False) -- no HTML escaping, unlike jinja2's own tojson.
  auto b = bind("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions o;
  o.ensure_ascii = flag(b[0], false);
  if (b[1] && !b[1]->is_none()) {
    o.has_indent = true;
    if (b[1]->is_string())
      o.indent = b[1]->str();
    else
      o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(int_arg(*b[1], "indent"), 0, 1024)), ' ');
    o.item_sep = ",";
  }
  if (b[2] && !b[2]->is_none()) {
    std::vector<Value> seps = iterate(*b[2]);
    if (seps.size() != 2 || !seps[0].is_string() || !seps[1].is_string())
      throw EvalError("tojson separators must be a (item_separator, key_separator) pair of strings");
    o.item_sep = seps[0].str();
    o.key_sep = seps[1].str();
  }
  o.sort_keys = flag(b[3], false);
  return Value(to_json(subject, o));
}

Value filter_round(const Value& subject, const Args& a) {
  auto b = bind("round", a, {"precision", "method"});
  int64_t precision = b[0] ? int_arg(*b[0], "precision") : 0;
  std::string method = b[1] ? str_arg(*b[1], "method") : "common";
  if (method != "common" && method != "ceil" && method != "floor")
    throw EvalError("method must be common, ceil or floor");
  if (subject.is_undefined()) undefined_error(subject);
  if (!subject.is_number()) throw EvalError("type " + type_name(subject) + " doesn't define __round__ method");
  if (method == "common" && is_integral(subject) && precision >= 0) return Value(to_i(subject));
  double x = to_d(subject);
  if (!std::isfinite(x)) return Value(x);
  if (method == "common") {
    if (precision > 330) return Value(x);
    if (precision >= 0) {  // printf rounds the exact binary value half-to-even, as Python's round()
      char buf[1024];      // up to 309 integer digits + 330 decimals
      std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(precision), x);
      return Value(std::strtod(buf, nullptr));
    }
    double p = std::pow(10.0, static_cast<double>(-precision));
    return Value(std::nearbyint(x / p) * p);
  }
  double p = std::pow(10.0, static_cast<double>(precision));
  return Value((method == "ceil" ? std::ceil(x * p) : std::floor(x * p)) / p);
}

Value filter_indent(const Value& subject, const Args& a) {
  auto b = bind("indent", a, {"width", "first", "blank"});
  std::string ind = "    ";
  if (b[0])
    ind = b[0]->is_string()
              ? b[0]->str()
              : std::string(static_cast<size_t>(std::clamp<int64_t>(int_arg(*b[0], "width"), 0, 1024)), ' ');
  std::string s = to_str(subject) + "\n";  // jinja2 appends a newline so splitlines keeps a trailing empty line
  std::vector<std::string> lines = py_splitlines(s, false);
  std::string out;
  const bool blank = flag(b[2], false);  // indent empty lines too
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) {
      out += '\n';
      if (blank || !lines[i].empty()) out += ind;
    }
    out += lines[i];
    check_string_size(out.size());
  }
  if (flag(b[1], false)) out = ind + out;
  check_string_size(out.size());
  return Value(std::move(out));
}

Value first_or_last(const Value& v, bool last) {
  if (v.is_string() && !v.str().empty()) {  // without splitting the whole string
    std::u32string cps = utf8_decode(v.str());
    return Value(utf8_encode(std::u32string_view(cps).substr(last ? cps.size() - 1 : 0, 1)));
  }
  std::vector<Value> items = iterate(v);
  if (items.empty())
    return undefined(last ? "No last item, sequence was empty." : "No first item, sequence was empty.");
  return last ? items.back() : items.front();
}

Value filter_int(const Value& subject, const Args& a) {
  auto b = bind("int", a, {"default", "base"});
  Value def = b[0] ? *b[0] : Value(int64_t{0});
  int base = b[1] ? static_cast<int>(int_arg(*b[1], "base")) : 10;
  if (base != 2 && base != 8 && base != 10 && base != 16)
    throw EvalError("int(): only bases 2, 8, 10 and 16 are supported");
  if (subject.is_undefined()) undefined_error(subject);
  if (is_integral(subject)) return Value(to_i(subject));
  if (subject.is_float()) {
    double d = std::get<double>(subject.v);
    if (std::isnan(d)) return def;
    if (std::isinf(d)) throw EvalError("cannot convert float infinity to integer");
    if (d >= 9.2233720368547758e18 || d < -9.2233720368547758e18) overflow();
    return Value(static_cast<int64_t>(d));
  }
  if (subject.is_string()) {
    if (auto i = parse_py_int(subject.str(), base)) return Value(*i);
    if (auto f = parse_py_float(subject.str())) {
      if (std::isnan(*f)) return def;
      if (std::isinf(*f)) throw EvalError("cannot convert float infinity to integer");
      if (*f >= 9.2233720368547758e18 || *f < -9.2233720368547758e18) overflow();
      return Value(static_cast<int64_t>(*f));
    }
  }
  return def;
}

Value filter_float(const Value& subject, const Args& a) {
  auto b = bind("float", a, {"default"});
  Value def = b[0] ? *b[0] : Value(0.0);
  if (subject.is_undefined()) undefined_error(subject);
  if (subject.is_number()) return Value(to_d(subject));
  if (subject.is_string())
    if (auto f = parse_py_float(subject.str())) return Value(*f);
  return def;
}

Value filter_min_max(Runtime& rt, const std::string& name, const Value& subject, const Args& a) {
  auto b = bind(name, a, {"case_sensitive", "attribute"});
  std::vector<Value> items = iterate(subject);
  rt.tick(items.size());
  if (items.empty()) return undefined("No aggregated item, sequence was empty.");
  bool cs = flag(b[0], false);
  size_t best = 0;
  Value best_key = sort_key(items[0], b[1], cs);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = sort_key(items[i], b[1], cs);
    int c = compare(k, best_key);
    if (c == 2) continue;
    if (name == "max" ? c > 0 : c < 0) {
      best = i;
      best_key = std::move(k);
    }
  }
  return items[best];
}

Value filter_sort(Runtime& rt, const Value& subject, const Args& a) {
  auto b = bind("sort", a, {"reverse", "case_sensitive", "attribute"});
  std::vector<Value> items = iterate(subject);
  bool reverse = flag(b[0], false), cs = flag(b[1], false);
  std::vector<Value> keys;
  for (const auto& it : items) keys.push_back(sort_key(it, b[2], cs));
  std::vector<size_t> idx(items.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  rt.tick(items.size() * 20);
  merge_sort(idx, [&](size_t x, size_t y) {
    int c = reverse ? compare(keys[y], keys[x]) : compare(keys[x], keys[y]);
    return c == -1;
  });
  std::vector<Value> out;
  for (size_t i : idx) out.push_back(items[i]);
  return list_of(std::move(out));
}

Value filter_unique(Runtime& rt, const Value& subject, const Args& a) {
  auto b = bind("unique", a, {"case_sensitive", "attribute"});
  std::vector<Value> items = iterate(subject);
  bool cs = flag(b[0], false);
  std::vector<Value> seen, out;
  for (const auto& it : items) {
    Value k = sort_key(it, b[1], cs);
    rt.tick(1 + seen.size());
    bool dup = std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, k); });
    if (!dup) {
      seen.push_back(k);
      out.push_back(it);
    }
  }
  return list_of(std::move(out));
}

}  // namespace

// ---------------------------------------------------------------------------------
// Public entry points

Value get_attr(const Value& obj, const std::string& name) {
  // jinja2 raises UndefinedError here for an undefined object; this renderer keeps it
  // undefined (the lenient choice: every template jinja2 renders renders the same).
  if (obj.is_undefined()) return obj;
  if (obj.is_dict()) {
    const DictObj& d = obj.dict();
    if (d.kind == DictObj::Kind::Plain && (name == "get" || name == "items" || name == "keys" || name == "values"))
      return bound(obj, name);  // Python finds dict methods before keys on attribute access
    if (d.kind == DictObj::Kind::Loop) return name == "cycle" ? bound(obj, name) : loop_attr(d, name);
    if (const Value* v = d.find(name)) return *v;
    return undefined(no_attr(obj, name));
  }
  if (obj.is_string() && is_string_method(name)) return bound(obj, name);
  return undefined(no_attr(obj, name));
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return obj;  // lenient, as in get_attr
  if (obj.is_dict()) {
    if (key.is_string()) {
      if (const Value* v = obj.dict().find(key.str())) return *v;
      return get_attr(obj, key.str());  // sandbox getitem falls back to getattr for strings
    }
    return undefined("'" + type_name(obj) + " object' has no element " + repr(key));
  }
  if ((obj.is_list() || obj.is_string()) && is_integral(key)) {
    int64_t i = to_i(key);
    if (obj.is_list()) {
      const auto& items = obj.list().items;
      int64_t n = static_cast<int64_t>(items.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return items[static_cast<size_t>(i)];
    } else {
      std::u32string cps = utf8_decode(obj.str());
      int64_t n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value(utf8_encode(std::u32string_view(cps).substr(static_cast<size_t>(i), 1)));
    }
    return undefined("'" + type_name(obj) + " object' has no element " + std::to_string(to_i(key)));
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return undefined("'" + type_name(obj) + " object' has no element " + repr(key));
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  // jinja2 compiles slices to a plain Python subscript, so errors are not softened.
  if (obj.is_undefined()) return obj;  // lenient, as in get_attr
  if (!obj.is_list() && !obj.is_string()) {
    if (obj.is_mapping()) throw EvalError("unhashable type: 'slice'");
    throw EvalError("'" + type_name(obj) + "' object is not subscriptable");
  }
  auto idx = [](const Value& v) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;  // an absent part
    if (!is_integral(v)) throw EvalError("slice indices must be integers or None or have an __index__ method");
    return to_i(v);
  };
  auto b0 = idx(start), e0 = idx(stop), s0 = idx(step);
  int64_t st = s0.value_or(1);
  if (st == 0) throw EvalError("slice step cannot be zero");
  if (st == std::numeric_limits<int64_t>::min()) st = -std::numeric_limits<int64_t>::max();
  std::u32string cps;
  int64_t len;
  if (obj.is_list()) {
    len = static_cast<int64_t>(obj.list().items.size());
  } else {
    cps = utf8_decode(obj.str());
    len = static_cast<int64_t>(cps.size());
  }
  int64_t b, e;
  adjust_slice(len, b0, e0, st, b, e);
  std::vector<Value> items;
  std::u32string chars;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    if (obj.is_list())
      items.push_back(obj.list().items[static_cast<size_t>(i)]);
    else
      chars += cps[static_cast<size_t>(i)];
    if ((st > 0 && i > std::numeric_limits<int64_t>::max() - st) ||
        (st < 0 && i < std::numeric_limits<int64_t>::min() - st))
      break;
  }
  if (obj.is_string()) return Value(utf8_encode(chars));
  return make_list(std::move(items), obj.list().tuple);
}

std::vector<Value> iterate(const Value& v) {
  if (v.is_list()) return v.list().items;
  if (v.is_string()) {
    if (v.str().size() > kMaxListItems && utf8_length(v.str()) > kMaxListItems)
      throw EvalError("string too long to iterate over (over " + std::to_string(kMaxListItems) + " characters)");
    std::vector<Value> out;
    for (char32_t c : utf8_decode(v.str())) {
      std::string s;
      append_utf8(s, c);
      out.emplace_back(std::move(s));
    }
    return out;
  }
  if (v.is_mapping()) {
    std::vector<Value> out;
    for (const auto& [k, val] : v.dict().items) out.emplace_back(k);
    return out;
  }
  if (v.is_undefined()) return {};
  throw EvalError("'" + type_name(v) + "' object is not iterable");
}

bool contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string()) throw EvalError("'in <string>' requires string as left operand, not " + type_name(item));
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const auto& x : container.list().items)
      if (equals(x, item)) return true;
    return false;
  }
  if (container.is_mapping()) {
    if (item.is_list() && !item.list().tuple) throw EvalError("unhashable type: 'list'");
    if (item.is_mapping()) throw EvalError("unhashable type: 'dict'");
    return item.is_string() && container.dict().find(item.str()) != nullptr;
  }
  if (container.is_undefined()) return false;
  throw EvalError("argument of type '" + type_name(container) + "' is not iterable");
}

Value negate(const Value& v) {
  if (v.is_undefined()) undefined_error(v);
  if (v.is_float()) return Value(-std::get<double>(v.v));
  if (is_integral(v)) {
    int64_t i = to_i(v);
    if (i == std::numeric_limits<int64_t>::min()) overflow();
    return Value(-i);
  }
  throw EvalError("bad operand type for unary -: '" + type_name(v) + "'");
}

Value binary_op(Runtime& rt, const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {  // string concatenation of str() of both sides; undefined is ""
    std::string out = to_str(a);
    const std::string tmp = b.is_string() ? std::string() : to_str(b);
    const std::string& t = b.is_string() ? b.str() : tmp;
    check_string_size(out.size() + t.size());
    rt.tick(1 + (out.size() + t.size()) / 64);
    out += t;
    return Value(std::move(out));
  }
  if (op == "%" && a.is_string()) return Value(percent_format(rt, a.str(), b));
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  const bool nums = a.is_number() && b.is_number();
  const bool ints = is_integral(a) && is_integral(b);
  int64_t r = 0;
  if (op == "+") {
    if (ints) {
      if (__builtin_add_overflow(to_i(a), to_i(b), &r)) overflow();
      return Value(r);
    }
    if (nums) return Value(to_d(a) + to_d(b));
    if (a.is_string() && b.is_string()) {
      check_string_size(a.str().size() + b.str().size());
      rt.tick(1 + (a.str().size() + b.str().size()) / 64);
      return Value(a.str() + b.str());
    }
    if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple) {
      std::vector<Value> items = a.list().items;
      items.insert(items.end(), b.list().items.begin(), b.list().items.end());
      rt.tick(items.size());
      return make_list(std::move(items), a.list().tuple);
    }
    bad_operands(op, a, b);
  }
  if (op == "-") {
    if (ints) {
      if (__builtin_sub_overflow(to_i(a), to_i(b), &r)) overflow();
      return Value(r);
    }
    if (nums) return Value(to_d(a) - to_d(b));
    bad_operands(op, a, b);
  }
  if (op == "*") {
    if (ints) {
      if (__builtin_mul_overflow(to_i(a), to_i(b), &r)) overflow();
      return Value(r);
    }
    if (nums) return Value(to_d(a) * to_d(b));
    // sequence * int repeats it
    const Value* seq = a.is_string() || a.is_list() ? &a : &b;
    const Value* count = seq == &a ? &b : &a;
    if ((seq->is_string() || seq->is_list()) && is_integral(*count)) {
      int64_t n = std::max<int64_t>(0, to_i(*count));
      if (seq->is_string()) {
        const std::string& s = seq->str();
        if (!s.empty() && static_cast<uint64_t>(n) > kMaxStringBytes / s.size()) check_string_size(kMaxStringBytes + 1);
        const size_t total = s.size() * static_cast<size_t>(n);
        rt.tick(1 + total / 64);
        std::string out;
        out.reserve(total);
        if (n > 0) out = s;
        while (out.size() < total) out.append(out, 0, std::min(out.size(), total - out.size()));  // doubling
        return Value(std::move(out));
      }
      const auto& items = seq->list().items;
      if (!items.empty() && static_cast<uint64_t>(n) > kMaxListItems / items.size())
        throw EvalError("list longer than the limit of " + std::to_string(kMaxListItems) + " items");
      std::vector<Value> out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), items.begin(), items.end());
      rt.tick(1 + out.size());
      return make_list(std::move(out), seq->list().tuple);
    }
    bad_operands(op, a, b);
  }
  if (!nums) bad_operands(op, a, b);
  if (op == "/") {
    if (to_d(b) == 0) throw EvalError("division by zero");
    return Value(to_d(a) / to_d(b));
  }
  if (op == "//") {
    if (ints) return Value(floor_div(to_i(a), to_i(b)));
    return Value(float_floor_div(to_d(a), to_d(b)));
  }
  if (op == "%") {
    if (ints) return Value(py_mod(to_i(a), to_i(b)));
    return Value(py_fmod(to_d(a), to_d(b)));
  }
  if (op == "**") {
    if (ints && to_i(b) >= 0) {
      int64_t base = to_i(a), e = to_i(b), acc = 1;
      while (e > 0) {
        if (e & 1)
          if (__builtin_mul_overflow(acc, base, &acc)) overflow();
        e >>= 1;
        if (e > 0 && __builtin_mul_overflow(base, base, &base)) overflow();
      }
      return Value(acc);
    }
    if (to_d(a) == 0 && to_d(b) < 0) throw EvalError("0.0 cannot be raised to a negative power");
    double r = std::pow(to_d(a), to_d(b));
    if (std::isinf(r) && std::isfinite(to_d(a)) && std::isfinite(to_d(b)))
      throw EvalError("(34, 'Numerical result out of range')");  // Python's OverflowError
    if (std::isnan(r) && !std::isnan(to_d(a)) && !std::isnan(to_d(b)))
      throw EvalError("negative number cannot be raised to a fractional power");  // Python gives a complex
    return Value(r);
  }
  throw EvalError("unknown operator '" + op + "'");
}

Value global_function(const std::string& name) {
  static const char* const kGlobals[] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};
  for (const char* g : kGlobals)
    if (name == g) {
      auto f = std::make_shared<FuncObj>();
      f->name = name;
      return Value(FuncPtr(std::move(f)));
    }
  return Value();
}

Value call_function(Runtime& rt, const FuncObj& f, Args args) {
  if (f.bound) return call_method(rt, f.self, f.name, args);
  return call_global(rt, f.name, args);
}

bool is_supported_filter(std::string_view n) {
  static const char* const kFilters[] = {
      "abs",    "capitalize", "count",   "d",       "default", "first",  "float",  "indent",     "int",
      "items",  "join",       "last",    "length",  "list",    "lower",  "map",    "max",        "min",
      "reject", "rejectattr", "replace", "reverse", "round",   "safe",   "select", "selectattr", "sort",
      "string", "sum",        "title",   "tojson",  "trim",    "unique", "upper"};
  for (const char* f : kFilters)
    if (n == f) return true;
  return false;
}

bool is_supported_test(std::string_view n) {
  static const char* const kTests[] = {
      "defined", "undefined",   "none",    "boolean",  "false",    "true",     "integer",  "float",
      "number",  "string",      "mapping", "iterable", "sequence", "callable", "sameas",   "odd",
      "even",    "divisibleby", "eq",      "equalto",  "ne",       "lt",       "lessthan", "le",
      "gt",      "greaterthan", "ge",      "in",       "lower",    "upper",    "escaped"};
  for (const char* t : kTests)
    if (n == t) return true;
  return false;
}

Value apply_filter(Runtime& rt, const std::string& name, const Value& subject, Args a) {
  rt.tick(1);
  const Value& s = subject;
  if (name == "default" || name == "d") {
    auto b = bind(name, a, {"default_value", "boolean"});
    bool use_default = s.is_undefined() || (flag(b[1], false) && !truthy(s));
    return use_default ? (b[0] ? *b[0] : Value(std::string())) : s;
  }
  if (name == "length" || name == "count") {
    bind(name, a, {});
    return length_of(s);
  }
  if (name == "trim") {
    auto b = bind(name, a, {"chars"});
    return Value(py_strip(to_str(s), b[0], true, true));
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title" || name == "string" ||
      name == "safe") {
    bind(name, a, {});
    std::string str = to_str(s);
    rt.tick(str.size() / 64);
    if (name == "upper") return Value(py_upper(std::move(str)));
    if (name == "lower") return Value(py_lower(std::move(str)));
    if (name == "capitalize") return Value(py_capitalize(std::move(str)));
    if (name == "title") return Value(jinja_title(str));
    return Value(std::move(str));
  }
  if (name == "replace") {
    auto b = bind(name, a, {"old", "new", "count"});
    int64_t count = b[2] && !b[2]->is_none() ? int_arg(*b[2], "count") : -1;
    std::string str = to_str(s);
    rt.tick(str.size() / 64);
    return Value(py_replace(str, to_str(required(b, 0, name, "old")), to_str(required(b, 1, name, "new")), count));
  }
  if (name == "join") {
    auto b = bind(name, a, {"d", "attribute"});
    std::string sep = b[0] ? to_str(*b[0]) : std::string();
    std::string out;
    size_t i = 0;
    for (const auto& it : iterate(s)) {
      if (i++) out += sep;
      out += to_str(b[1] && !b[1]->is_none() ? get_path(it, *b[1], std::nullopt) : it);
      check_string_size(out.size());
    }
    rt.tick(i + out.size() / 64);
    return Value(std::move(out));
  }
  if (name == "first" || name == "last") {
    bind(name, a, {});
    return first_or_last(s, name == "last");
  }
  if (name == "list") {
    bind(name, a, {});
    return list_of(iterate(s));
  }
  if (name == "reverse") {
    bind(name, a, {});
    if (s.is_string()) {
      std::u32string cps = utf8_decode(s.str());
      std::reverse(cps.begin(), cps.end());
      return Value(utf8_encode(cps));
    }
    std::vector<Value> items = iterate(s);
    std::reverse(items.begin(), items.end());
    return list_of(std::move(items));
  }
  if (name == "items") {
    bind(name, a, {});
    if (s.is_undefined()) return list_of({});
    if (!s.is_mapping()) throw EvalError("Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& [k, v] : s.dict().items) out.push_back(make_list({Value(k), v}, true));
    return list_of(std::move(out));
  }
  if (name == "tojson") return filter_tojson(s, a);
  if (name == "int") return filter_int(s, a);
  if (name == "float") return filter_float(s, a);
  if (name == "round") return filter_round(s, a);
  if (name == "indent") return filter_indent(s, a);
  if (name == "abs") {
    bind(name, a, {});
    if (s.is_float()) return Value(std::fabs(std::get<double>(s.v)));
    if (is_integral(s)) return to_i(s) < 0 ? negate(s) : Value(to_i(s));
    if (s.is_undefined()) undefined_error(s);
    throw EvalError("bad operand type for abs(): '" + type_name(s) + "'");
  }
  if (name == "sum") {
    auto b = bind(name, a, {"attribute", "start"});
    Value total = b[1] ? *b[1] : Value(int64_t{0});
    for (const auto& it : iterate(s))
      total = binary_op(rt, "+", total, b[0] && !b[0]->is_none() ? get_path(it, *b[0], std::nullopt) : it);
    return total;
  }
  if (name == "min" || name == "max") return filter_min_max(rt, name, s, a);
  if (name == "sort") return filter_sort(rt, s, a);
  if (name == "unique") return filter_unique(rt, s, a);
  if (name == "map" || name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr")
    return filter_map_like(rt, name, s, a);
  throw EvalError("no filter named '" + name + "'");
}

bool apply_test(Runtime& rt, const std::string& name, const Value& v, Args a) {
  rt.tick(1);
  auto arg = [&]() -> Value {
    auto b = bind(name, a, {"other"});
    return required(b, 0, name, "other");
  };
  static const char* const kOneArg[] = {"sameas", "eq", "equalto",     "ne", "lt", "lessthan",
                                        "le",     "gt", "greaterthan", "ge", "in", "divisibleby"};
  if (std::none_of(std::begin(kOneArg), std::end(kOneArg), [&](const char* t) { return name == t; }))
    bind(name, a, {});  // jinja2's other tests take only the value
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "false") return v.is_bool() && !std::get<bool>(v.v);
  if (name == "true") return v.is_bool() && std::get<bool>(v.v);
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_mapping();
  if (name == "iterable" || name == "sequence")
    return v.is_string() || v.is_list() || v.is_mapping() || v.is_undefined();
  if (name == "callable") return v.is_func() || v.is_undefined();
  if (name == "escaped") return false;
  if (name == "lower" || name == "upper") {
    std::string s = to_str(v);
    bool any = false;
    for (char c : s) {
      if (c >= 'a' && c <= 'z') {
        any = true;
        if (name == "upper") return false;
      } else if (c >= 'A' && c <= 'Z') {
        any = true;
        if (name == "lower") return false;
      }
    }
    return any;
  }
  if (name == "odd" || name == "even") {
    Value m = binary_op(rt, "%", v, Value(int64_t{2}));
    return equals(m, Value(int64_t{name == "odd" ? 1 : 0}));
  }
  if (name == "divisibleby") {
    auto b = bind(name, a, {"num"});
    return equals(binary_op(rt, "%", v, required(b, 0, name, "num")), Value(int64_t{0}));
  }
  if (name == "sameas") {
    const Value o = arg();
    if (v.v.index() != o.v.index()) return false;
    if (v.is_list()) return std::get<ListPtr>(v.v) == std::get<ListPtr>(o.v);
    if (v.is_dict()) return std::get<DictPtr>(v.v) == std::get<DictPtr>(o.v);
    if (v.is_func()) return std::get<FuncPtr>(v.v) == std::get<FuncPtr>(o.v);
    return equals(v, o);  // scalars: Python identity is an implementation detail; use equality
  }
  if (name == "eq" || name == "equalto") return equals(v, arg());
  if (name == "ne") return !equals(v, arg());
  if (name == "in") return contains(arg(), v);
  if (name == "lt" || name == "lessthan" || name == "le" || name == "gt" || name == "greaterthan" || name == "ge") {
    int c = compare(v, arg());
    if (c == 2) return false;
    if (name == "lt" || name == "lessthan") return c < 0;
    if (name == "le") return c <= 0;
    if (name == "gt" || name == "greaterthan") return c > 0;
    return c >= 0;
  }
  throw EvalError("no test named '" + name + "'");
}

}  // namespace tern::jinja
