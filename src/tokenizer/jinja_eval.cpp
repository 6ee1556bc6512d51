// Tree-walking evaluator for the chat-template AST (see jinja_eval.h).
#include "tokenizer/jinja_eval.h"

#include <algorithm>
#include <memory>

#include "tern/error.h"
#include "tokenizer/jinja_builtins.h"

namespace tern::jinja {
namespace {

using EK = Expr::Kind;
using SK = Stmt::Kind;

class Renderer final : public Runtime {
 public:
  explicit Renderer(const std::vector<std::pair<std::string, Value>>& variables) {
    push_scope();  // render variables
    for (const auto& [k, v] : variables) top().set(k, v);
    push_scope();  // the template's top level: {% set %} outside loops lands here
  }

  // Namespaces are the only mutable values, so every reference cycle runs through one;
  // emptying them breaks the cycles (and long namespace chains) before anything is freed.
  ~Renderer() override {
    for (auto& ns : namespaces_) ns->items.clear();
  }

  std::string run(const Template& t) {
    exec_body(t.body);
    return std::move(out_);
  }

  void tick(uint64_t steps) override {
    steps_ += steps;
    if (steps_ > kMaxSteps)
      throw EvalError("template too expensive: over " + std::to_string(kMaxSteps) + " evaluation steps");
  }

  DictPtr new_namespace() override {
    DictPtr d = make_dict(DictObj::Kind::Namespace);
    namespaces_.push_back(d);
    return d;
  }

 private:
  // A scope's variables; scopes hold a handful of names, so a flat list beats a hash map.
  struct Scope {
    std::vector<std::pair<std::string, Value>> vars;
    const Value* find(const std::string& name) const {
      for (const auto& [k, v] : vars)
        if (k == name) return &v;
      return nullptr;
    }
    void set(const std::string& name, Value v) {
      for (auto& [k, x] : vars)
        if (k == name) {
          x = std::move(v);
          return;
        }
      vars.emplace_back(name, std::move(v));
    }
  };
  // [0] render variables, [1] template top level, then one scope per loop iteration:
  // a set inside a loop body is gone at the next iteration and after the loop, as in
  // jinja2 (each iteration starts from the enclosing values).
  std::vector<Scope> scopes_;  // scopes_[0, live_) are in use; the rest keep their capacity
  size_t live_ = 0;
  std::string out_;
  uint64_t steps_ = 0;
  std::vector<DictPtr> namespaces_;

  enum class Flow { Normal, Break, Continue };

  Scope& top() { return scopes_[live_ - 1]; }
  void push_scope() {
    if (live_ == scopes_.size()) scopes_.emplace_back();
    ++live_;
  }
  void pop_scope() { scopes_[--live_].vars.clear(); }

  struct ScopeGuard {
    Renderer& r;
    explicit ScopeGuard(Renderer& renderer) : r(renderer) { r.push_scope(); }
    ~ScopeGuard() { r.pop_scope(); }
  };

  void emit(const std::string& text) {
    if (out_.size() + text.size() > kMaxStringBytes) throw EvalError("rendered output longer than the 64 MB limit");
    tick(text.size() / 64);
    out_ += text;
  }

  const Value* lookup(const std::string& name) const {
    for (size_t i = live_; i-- > 0;)
      if (const Value* v = scopes_[i].find(name)) return v;
    return nullptr;
  }

  // ------------------------------------------------------------------ statements

  Flow exec_body(const Body& body) {
    for (const auto& s : body) {
      Flow f = exec(*s);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s) {
    try {
      tick(1);
      switch (s.kind) {
        case SK::Text: emit(s.text); return Flow::Normal;
        case SK::Output: emit(to_str(eval(*s.expr))); return Flow::Normal;
        case SK::If:
          for (const auto& [cond, body] : s.branches)
            if (truthy(eval(*cond))) return exec_body(body);
          return exec_body(s.else_body);
        case SK::For: exec_for(s); return Flow::Normal;
        case SK::Set: assign(s.targets, eval(*s.expr)); return Flow::Normal;
        case SK::SetAttr: {
          Value v = eval(*s.expr);
          const Value* ns = lookup(s.targets[0]);
          if (!ns || !ns->is_dict() || ns->dict().kind != DictObj::Kind::Namespace)
            throw EvalError("cannot assign attribute on non-namespace object");
          raise_depth(ns->dict(), v);
          ns->dict().set(s.attr, std::move(v));
          return Flow::Normal;
        }
        case SK::SetBlock: {
          std::string saved = std::move(out_);
          out_.clear();
          Flow f;
          try {
            f = exec_body(s.body);
          } catch (...) {
            out_ = std::move(saved);
            throw;
          }
          std::string captured = std::move(out_);
          out_ = std::move(saved);
          assign(s.targets, Value(std::move(captured)));
          return f;
        }
        case SK::Break: return Flow::Break;
        case SK::Continue: return Flow::Continue;
        case SK::Block: return exec_body(s.body);
      }
    } catch (const EvalError& e) {
      fail_at(s.line, s.col, e.what());
    }
    return Flow::Normal;
  }

  // Binds one name, or unpacks a sequence into several (`a, b = pair`).
  void bind_targets(Scope& scope, const std::vector<std::string>& targets, Value v) {
    if (targets.size() == 1) {
      scope.set(targets[0], std::move(v));
      return;
    }
    std::vector<Value> items = iterate(v);
    if (items.size() != targets.size())
      throw EvalError((items.size() < targets.size() ? "not enough" : "too many") +
                      std::string(" values to unpack (expected ") + std::to_string(targets.size()) + ", got " +
                      std::to_string(items.size()) + ")");
    for (size_t i = 0; i < targets.size(); ++i) scope.set(targets[i], items[i]);
  }

  void assign(const std::vector<std::string>& targets, Value v) { bind_targets(top(), targets, std::move(v)); }

  void exec_for(const Stmt& s) {
    Value seq = eval(*s.expr);
    auto items = std::make_shared<std::vector<Value>>(iterate(seq));
    if (s.filter) {  // `for x in xs if cond`: filtered before loop.length is known
      std::vector<Value> kept;
      for (auto& it : *items) {
        tick(1);
        ScopeGuard g(*this);
        bind_targets(top(), s.targets, it);
        if (truthy(eval(*s.filter))) kept.push_back(std::move(it));
      }
      *items = std::move(kept);
    }
    // One loop object per loop run, advanced each iteration, as jinja2's LoopContext.
    DictPtr loop = make_dict(DictObj::Kind::Loop);
    loop->loop_items = items;
    int item_depth = 0;
    for (const auto& it : *items) item_depth = std::max(item_depth, value_depth(it));
    loop->depth = item_depth + 1;
    if (loop->depth > kMaxNesting) throw EvalError("loop items nested too deeply");
    const Value loop_value(loop);
    for (size_t i = 0; i < items->size(); ++i) {
      tick(1);
      loop->loop_index0 = static_cast<int64_t>(i);
      ScopeGuard g(*this);
      bind_targets(top(), s.targets, (*items)[i]);
      top().set("loop", loop_value);
      if (exec_body(s.body) == Flow::Break) break;
    }
    if (items->empty()) {
      ScopeGuard g(*this);
      exec_body(s.else_body);
    }
  }

  // ------------------------------------------------------------------ expressions

  Value eval(const Expr& e) {
    try {
      tick(1);
      return eval_node(e);
    } catch (const EvalError& err) {
      fail_at(e.line, e.col, err.what());  // the innermost failing node gives the position
    }
  }

  Args eval_args(const Expr& e, size_t first) {
    Args a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, eval(*v));
    return a;
  }

  Value eval_node(const Expr& e) {
    switch (e.kind) {
      case EK::Const: return e.value;
      case EK::Name: {
        if (const Value* v = lookup(e.name)) return *v;
        Value g = global_function(e.name);
        if (!g.is_undefined()) return g;
        return Value(Undefined{"'" + e.name + "' is undefined"});
      }
      case EK::List:
      case EK::Tuple: {
        std::vector<Value> items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return make_list(std::move(items), e.kind == EK::Tuple);
      }
      case EK::Dict: {
        DictPtr d = make_dict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i]);
          Value v = eval(*e.args[i + 1]);
          if (!k.is_string()) throw EvalError("dict keys must be strings in this chat-template renderer");
          d->set(k.str(), v);
          raise_depth(*d, v);
        }
        return Value(d);
      }
      case EK::GetAttr: return get_attr(eval(*e.args[0]), e.name);
      case EK::GetItem: {
        Value obj = eval(*e.args[0]);
        return get_item(obj, eval(*e.args[1]));
      }
      case EK::Slice: {
        Value obj = eval(*e.args[0]);
        Value parts[3] = {Value(None{}), Value(None{}), Value(None{})};  // absent parts are None
        for (int i = 0; i < 3; ++i)
          if (e.args[1 + i]) parts[i] = eval(*e.args[1 + i]);
        return get_slice(obj, parts[0], parts[1], parts[2]);
      }
      case EK::Call: {
        Value callee = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        if (callee.is_func()) return call_function(*this, callee.func(), std::move(a));
        if (callee.is_undefined())
          throw EvalError(callee.undefined_hint().empty() ? "calling an undefined value" : callee.undefined_hint());
        throw EvalError("'" + type_name(callee) + "' object is not callable");
      }
      case EK::Filter: {
        if (e.unknown) throw EvalError("no filter named '" + e.name + "' found");
        Value subject = eval(*e.args[0]);
        return apply_filter(*this, e.name, subject, eval_args(e, 1));
      }
      case EK::Test: {
        if (e.unknown) throw EvalError("no test named '" + e.name + "' found");
        Value subject = eval(*e.args[0]);
        return Value(apply_test(*this, e.name, subject, eval_args(e, 1)) != e.negated);
      }
      case EK::Neg: return negate(eval(*e.args[0]));
      case EK::Pos: {
        Value v = eval(*e.args[0]);
        if (v.is_undefined()) throw EvalError(v.undefined_hint());
        if (!v.is_number()) throw EvalError("bad operand type for unary +: '" + type_name(v) + "'");
        return v.is_bool() ? Value(static_cast<int64_t>(std::get<bool>(v.v))) : v;
      }
      case EK::Not: return Value(!truthy(eval(*e.args[0])));
      case EK::And: {  // Python returns the deciding operand, not a bool
        Value l = eval(*e.args[0]);
        return truthy(l) ? eval(*e.args[1]) : l;
      }
      case EK::Or: {
        Value l = eval(*e.args[0]);
        return truthy(l) ? l : eval(*e.args[1]);
      }
      case EK::Binary: {
        Value l = eval(*e.args[0]);
        Value r = eval(*e.args[1]);
        return binary_op(*this, e.name, l, r);
      }
      case EK::Compare: {  // chained: a < b < c is (a < b) and (b < c), b evaluated once
        Value l = eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = eval(*e.args[i + 1]);
          const std::string& op = e.ops[i];
          bool ok;
          if (op == "==") {
            ok = equals(l, r);
          } else if (op == "!=") {
            ok = !equals(l, r);
          } else if (op == "in") {
            ok = contains(r, l);
          } else if (op == "notin") {
            ok = !contains(r, l);
          } else {
            int c = compare(l, r);  // 2: unordered (NaN)
            ok = c != 2 && (op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0);
          }
          if (!ok) return Value(false);
          l = std::move(r);
        }
        return Value(true);
      }
      case EK::Cond:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value(Undefined{"the inline if-expression evaluated to false and no else section was defined"});
    }
    return Value();
  }
};

}  // namespace

std::string render(const Template& t, const std::vector<std::pair<std::string, Value>>& variables) {
  Renderer r(variables);
  return r.run(t);
}

}  // namespace tern::jinja
