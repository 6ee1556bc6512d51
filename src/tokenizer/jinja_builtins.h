// Internal to the chat-template renderer: Python operators, attribute/item access and
// the builtin filters, tests, methods and global functions, shared by the evaluator.
// All of these throw EvalError (no position); the evaluator adds the line and column.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace tern::jinja {

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

// What builtins need from the running renderer.
class Runtime {
 public:
  virtual ~Runtime() = default;
  virtual void tick(uint64_t steps) = 0;  // charges work against the step limit
  virtual DictPtr new_namespace() = 0;    // a namespace the renderer cleans up afterwards
};

// jinja2's sandboxed getattr / getitem: missing things are Undefined, never errors.
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

std::vector<Value> iterate(const Value& v);                // for loops, filters; throws if not iterable
bool contains(const Value& container, const Value& item);  // Python `item in container`
Value binary_op(Runtime& rt, const std::string& op, const Value& a, const Value& b);
Value negate(const Value& v);

// The builtin global function `name` as a value, or Undefined if there is none.
Value global_function(const std::string& name);
Value call_function(Runtime& rt, const FuncObj& f, Args args);
Value apply_filter(Runtime& rt, const std::string& name, const Value& subject, Args args);
bool apply_test(Runtime& rt, const std::string& name, const Value& subject, Args args);

}  // namespace tern::jinja
