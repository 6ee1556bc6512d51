// Parser of the Jinja2-subset chat-template renderer: tokens to a small AST. The
// grammar and operator precedence follow jinja2's parser (lowest first):
//   a if b else c  <  or  <  and  <  not  <  comparisons, in, not in  <  + -  <  ~
//   <  * / // %  <  **  <  unary - +  <  postfix . [] ()  and filters | / tests `is`
// Statements: if/elif/else, for (with loop filter `if` and `else`), set (plain, tuple,
// namespace attribute, block form), break/continue (loopcontrols), generation
// (transformers' extension; renders its body), raw (handled by the lexer).
// Everything else (macro, call, include, ...) is a clear syntax error.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace tern::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Const,    // value
    Name,     // name
    List,     // args = items
    Tuple,    // args = items
    Dict,     // args = key0, value0, key1, value1, ...
    GetAttr,  // args[0].name
    GetItem,  // args[0][args[1]]
    Slice,    // args[0][args[1]:args[2]:args[3]], absent parts are null
    Call,     // args[0](args[1..], kwargs)
    Filter,   // args[0] | name(args[1..], kwargs)
    Test,     // args[0] is [not] name(args[1..], kwargs)
    Neg,      // -args[0]
    Pos,      // +args[0]
    Not,      // not args[0]
    And,      // args[0] and args[1]
    Or,       // args[0] or args[1]
    Binary,   // args[0] name args[1]; name in + - * / // % ** ~
    Compare,  // args[0] ops[0] args[1] ops[1] args[2] ...; ops in == != < <= > >= in notin
    Cond,     // args[0] if args[1] else args[2] (args[2] may be null)
  };
  Kind kind = Kind::Const;
  int line = 1;
  int col = 1;
  int depth = 1;  // height of this subtree, capped at kMaxNesting
  Value value;
  std::string name;
  bool negated = false;  // Test: `is not`
  // Filter/Test whose name is not supported. jinja2 accepts these inside an if statement
  // or an inline if-expression and fails only if they run; elsewhere they are syntax
  // errors.
  bool unknown = false;
  bool soft = false;  // set on unknown nodes found inside an inline if-expression
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // branches (cond, body)..., else_body
    For,       // for targets in expr [if filter]: body; else_body when nothing was iterated
    Set,       // targets = expr
    SetAttr,   // targets[0].attr = expr (namespace objects only)
    SetBlock,  // targets[0] = rendered body
    Break,
    Continue,
    Block,  // body rendered in place ({% generation %})
  };
  Kind kind = Kind::Text;
  int line = 1;
  int col = 1;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
};

struct Template {
  Body body;
};

// Throws tern::Error("chat template: line L col C: ...") on any syntax error or
// unsupported construct.
std::unique_ptr<Template> parse_template(const std::string& source);

}  // namespace tern::jinja
