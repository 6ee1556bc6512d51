// The value model of the Jinja2-subset chat-template renderer: what a template
// expression evaluates to. It mirrors the Python objects jinja2 would see when
// transformers renders a chat template (str, int, float, bool, None, list, tuple, dict,
// jinja2's Undefined and Namespace, the loop object), with Python's semantics for
// str(), repr(), ==, <, truthiness and json.dumps, since the rendered text must equal
// what transformers produces.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace tern::jinja {

// Limits that keep a hostile or broken template from exhausting the stack, memory or
// time. Real chat templates stay far below all of them.
inline constexpr int kMaxNesting = 256;               // expression, block and value nesting
inline constexpr size_t kMaxStringBytes = 64u << 20;  // rendered output and any one string
inline constexpr size_t kMaxListItems = 1u << 20;     // items in any one list
inline constexpr uint64_t kMaxSteps = 10'000'000;     // evaluation steps per render
inline constexpr int64_t kMaxRange = 100000;          // jinja2's sandbox MAX_RANGE

// A failure without a position yet (raised by value helpers); the evaluator catches it
// at the expression node and rethrows it as tern::Error with that node's line and column.
struct EvalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws tern::Error("chat template: line L col C: what").
[[noreturn]] void fail_at(int line, int col, const std::string& what);

struct Value;
struct ListObj;
struct DictObj;
struct FuncObj;
using ListPtr = std::shared_ptr<const ListObj>;  // lists are immutable (ImmutableSandbox)
using DictPtr = std::shared_ptr<DictObj>;        // mutable only as a namespace
using FuncPtr = std::shared_ptr<const FuncObj>;

// jinja2's default Undefined: prints as "", is falsy, iterates as empty, and fails when
// used in arithmetic or called. `hint` says what was missing, for that error message.
struct Undefined {
  std::string hint;
};
struct None {};

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, ListPtr, DictPtr, FuncPtr> v;

  Value() = default;
  Value(Undefined u) : v(std::move(u)) {}
  Value(None) : v(None{}) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(static_cast<int64_t>(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(ListPtr l) : v(std::move(l)) {}
  Value(DictPtr d) : v(std::move(d)) {}
  Value(FuncPtr f) : v(std::move(f)) {}

  bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  bool is_none() const { return std::holds_alternative<None>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_bool() || is_int() || is_float(); }  // bool is an int in Python
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<ListPtr>(v); }
  bool is_dict() const { return std::holds_alternative<DictPtr>(v); }
  bool is_func() const { return std::holds_alternative<FuncPtr>(v); }
  bool is_mapping() const;  // a plain dict (not a namespace or loop object)

  const std::string& str() const { return std::get<std::string>(v); }
  const ListObj& list() const { return *std::get<ListPtr>(v); }
  DictObj& dict() const { return *std::get<DictPtr>(v); }
  const FuncObj& func() const { return *std::get<FuncPtr>(v); }
  const std::string& undefined_hint() const { return std::get<Undefined>(v).hint; }
};

struct ListObj {
  std::vector<Value> items;
  bool tuple = false;  // prints as (a, b) and never equals a list, as in Python
  int depth = 1;       // nesting depth of this value, capped at kMaxNesting
};

struct DictObj {
  enum class Kind { Plain, Namespace, Loop };
  Kind kind = Kind::Plain;
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as Python dicts
  int depth = 1;
  // Kind::Loop (jinja2's LoopContext): one object per loop run, advanced each iteration;
  // loop.index, loop.last, ... are computed from these (see loop_attr).
  int64_t loop_index0 = 0;
  std::shared_ptr<const std::vector<Value>> loop_items;

  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value value);
};

// A builtin global (range, namespace, raise_exception, ...) or a method bound to `self`
// (message.get, content.strip, loop.cycle).
struct FuncObj {
  std::string name;
  Value self;
  bool bound = false;
};

// loop.<name> for a Kind::Loop object; Undefined for unknown names.
Value loop_attr(const DictObj& loop, const std::string& name);

// Constructors that enforce the nesting and size limits.
Value make_list(std::vector<Value> items, bool tuple = false);
DictPtr make_dict(DictObj::Kind kind = DictObj::Kind::Plain);
int value_depth(const Value& v);
void raise_depth(DictObj& d, const Value& inserted);  // after inserting into a namespace

// Python semantics.
std::string type_name(const Value& v);  // "str", "int", "NoneType", ...
bool truthy(const Value& v);
std::string to_str(const Value& v);  // str(v); undefined -> ""
std::string repr(const Value& v);
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b);  // <0, 0, >0; throws EvalError if unordered
std::string float_repr(double d);

struct JsonOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
// json.dumps(v, ...) as Python writes it; throws EvalError for values JSON can't hold.
std::string to_json(const Value& v, const JsonOptions& opts);

// UTF-8 helpers: Python strings index by code point. Invalid bytes decode to
// U+DC80..U+DCFF and encode back to the same byte, so no input is lost.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view cps);
void append_utf8(std::string& out, char32_t cp);
size_t utf8_length(std::string_view s);
bool is_py_space(char32_t c);  // str.isspace()

}  // namespace tern::jinja
