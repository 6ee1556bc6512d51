// Recursive-descent parser for the Jinja2 subset (see jinja_parser.h).
#include "tokenizer/jinja_parser.h"

#include <algorithm>
#include <initializer_list>
#include <string_view>

#include "tokenizer/jinja_eval.h"
#include "tokenizer/jinja_lexer.h"

namespace tern::jinja {
namespace {

using K = Expr::Kind;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  std::unique_ptr<Template> parse() {
    auto tmpl = std::make_unique<Template>();
    tmpl->body = parse_body({}, nullptr);
    // Like jinja2's compiler, after the whole template parsed: an unknown filter or test
    // outside an if statement / inline if-expression is an error.
    for (const Expr* e : unknown_)
      if (!e->soft)
        fail_at(e->line, e->col,
                "no " + std::string(e->kind == K::Filter ? "filter" : "test") + " named '" + e->name +
                    "' (or it is not supported)");
    return tmpl;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  int expr_depth_ = 0;  // recursion depth of the expression parser
  int loop_depth_ = 0;  // enclosing for-loop bodies (break/continue are legal inside)
  struct OpenBlock {
    std::string tag;
    int line;
  };
  std::vector<OpenBlock> open_;  // enclosing blocks, for error messages and the depth cap
  int soft_ = 0;                 // >0 inside an if statement (not inside a loop or set block in it)
  std::vector<Expr*> unknown_;   // unknown filters/tests outside if statements, checked at the end

  // Marks the unknown filters/tests of an inline if-expression as allowed.
  static void mark_soft(Expr& e) {
    if (e.unknown) e.soft = true;
    for (auto& a : e.args)
      if (a) mark_soft(*a);
    for (auto& kv : e.kwargs) mark_soft(*kv.second);
  }

  // Scoped change of soft_.
  struct SoftScope {
    int& ref;
    int saved;
    SoftScope(int& r, int value) : ref(r), saved(r) { ref = value; }
    ~SoftScope() { ref = saved; }
  };

  // Counts recursion so `((((...` or `not not not ...` can't overflow the stack. Every
  // nested expression passes through parse_unary; `not` and `else` chains recurse in
  // parse_not and parse_condexpr, so those three are guarded.
  struct Guard {
    Parser& p;
    explicit Guard(Parser& parser) : p(parser) {
      if (++p.expr_depth_ > kMaxNesting)
        p.error(p.cur(), "expression nested more than " + std::to_string(kMaxNesting) + " levels deep");
    }
    ~Guard() { --p.expr_depth_; }
  };

  // ------------------------------------------------------------------ tokens

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  bool is_op(std::string_view op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(std::string_view n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Data: return "template text";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "end of print statement";
      case Tok::Name: return "'" + t.text + "'";
      case Tok::String: return "string literal";
      case Tok::Int:
      case Tok::Float: return "number " + t.text;
      case Tok::Op: return "'" + t.text + "'";
      case Tok::Eof: return "end of template";
    }
    return "token";
  }

  [[noreturn]] void error(const Token& at, const std::string& what) const { fail_at(at.line, at.col, what); }

  void expect_op(std::string_view op) {
    if (!skip_op(op)) error(cur(), "expected '" + std::string(op) + "', got " + describe(cur()));
  }
  std::string expect_name(const char* what = "a name") {
    if (cur().type != Tok::Name) error(cur(), std::string("expected ") + what + ", got " + describe(cur()));
    std::string n = cur().text;
    next();
    return n;
  }
  // Where a block's body starts jinja2 accepts an optional ':' before '%}'.
  void expect_body_start() {
    skip_op(":");
    expect_block_end();
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) error(cur(), "expected end of statement block '%}', got " + describe(cur()));
    next();
  }

  // ------------------------------------------------------------------ AST helpers

  ExprPtr node(K kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  // Sets the node's height from its children; left-deep chains such as 1+1+1+... are
  // built without recursion, so this is where their depth is capped.
  ExprPtr seal(ExprPtr e) {
    int d = 0;
    for (const auto& a : e->args)
      if (a) d = std::max(d, a->depth);
    for (const auto& kv : e->kwargs) d = std::max(d, kv.second->depth);
    e->depth = d + 1;
    if (e->depth > kMaxNesting)
      fail_at(e->line, e->col, "expression nested more than " + std::to_string(kMaxNesting) + " levels deep");
    return e;
  }

  ExprPtr unary(K kind, const Token& at, ExprPtr a) {
    auto e = node(kind, at);
    e->args.push_back(std::move(a));
    return seal(std::move(e));
  }
  ExprPtr binary(K kind, const Token& at, ExprPtr a, ExprPtr b, std::string name = {}) {
    auto e = node(kind, at);
    e->name = std::move(name);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return seal(std::move(e));
  }

  // ------------------------------------------------------------------ statements

  // Statements up to a block tag whose name is in `ends` (its name is consumed and
  // stored in *found), or up to the end of the template when `ends` is empty.
  Body parse_body(std::initializer_list<std::string_view> ends, std::string* found) {
    Body body;
    while (true) {
      const Token& tok = cur();
      if (tok.type == Tok::Data) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Text;
        s->line = tok.line;
        s->col = tok.col;
        s->text = tok.text;
        body.push_back(std::move(s));
        next();
      } else if (tok.type == Tok::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Output;
        s->line = tok.line;
        s->col = tok.col;
        next();
        s->expr = parse_tuple(true, false, {});
        if (cur().type != Tok::VarEnd) error(cur(), "expected end of print statement '}}', got " + describe(cur()));
        next();
        body.push_back(std::move(s));
      } else if (tok.type == Tok::BlockBegin) {
        next();
        if (cur().type != Tok::Name) error(cur(), "expected a tag name after '{%', got " + describe(cur()));
        if (std::find(ends.begin(), ends.end(), cur().text) != ends.end()) {
          *found = cur().text;
          next();
          return body;
        }
        body.push_back(parse_statement(tok));
      } else if (tok.type == Tok::Eof) {
        if (ends.size() != 0) {
          const OpenBlock& b = open_.back();
          error(tok, "unexpected end of template: the '" + b.tag + "' block opened on line " + std::to_string(b.line) +
                         " is not closed (expected " + expected(ends) + ")");
        }
        return body;
      } else {
        error(tok, "unexpected " + describe(tok));
      }
    }
  }

  static std::string expected(std::initializer_list<std::string_view> ends) {
    std::string s;
    for (auto e : ends) {
      if (!s.empty()) s += " or ";
      s += '\'';
      s += e;
      s += '\'';
    }
    return s;
  }

  void open_block(const std::string& tag, const Token& at) {
    if (open_.size() >= static_cast<size_t>(kMaxNesting))
      error(at, "blocks nested more than " + std::to_string(kMaxNesting) + " levels deep");
    open_.push_back({tag, at.line});
  }

  StmtPtr parse_statement(const Token& begin) {
    const Token& name_tok = cur();
    const std::string name = name_tok.text;
    auto s = std::make_unique<Stmt>();
    s->line = begin.line;
    s->col = begin.col;
    next();
    if (name == "if") {
      parse_if(*s, name_tok);
    } else if (name == "for") {
      parse_for(*s, name_tok);
    } else if (name == "set") {
      parse_set(*s, name_tok);
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) error(name_tok, "'" + name + "' outside of a loop");
      s->kind = name == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      expect_block_end();
    } else if (name == "generation") {
      // transformers' {% generation %} marks assistant text for masks; it renders as is.
      s->kind = Stmt::Kind::Block;
      expect_body_start();
      open_block(name, name_tok);
      std::string found;
      SoftScope soft(soft_, 0);
      s->body = parse_body({"endgeneration"}, &found);
      open_.pop_back();
      expect_block_end();
    } else {
      static const char* const kUnsupported[] = {"macro",   "call",  "filter", "include",    "import", "from",
                                                 "extends", "block", "with",   "autoescape", "do",     "trans"};
      static const char* const kInner[] = {"elif",   "else",     "endif",   "endfor",    "endset",   "endgeneration",
                                           "endraw", "endmacro", "endcall", "endfilter", "endblock", "endwith"};
      for (const char* u : kUnsupported)
        if (name == u) error(name_tok, "'" + name + "' tags are not supported by this chat-template renderer");
      for (const char* u : kInner)
        if (name == u) {
          std::string where = open_.empty() ? std::string(" at top level")
                                            : " inside the '" + open_.back().tag + "' block opened on line " +
                                                  std::to_string(open_.back().line);
          error(name_tok, "unexpected '" + name + "'" + where);
        }
      error(name_tok, "unknown tag '" + name + "'");
    }
    return s;
  }

  void parse_if(Stmt& s, const Token& at) {
    s.kind = Stmt::Kind::If;
    open_block("if", at);
    SoftScope soft(soft_, soft_ + 1);
    while (true) {
      ExprPtr cond = parse_tuple(false, false, {});
      expect_body_start();
      std::string found;
      Body body = parse_body({"elif", "else", "endif"}, &found);
      s.branches.emplace_back(std::move(cond), std::move(body));
      if (found == "elif") continue;
      if (found == "else") {
        expect_body_start();
        s.else_body = parse_body({"endif"}, &found);
      }
      expect_block_end();
      break;
    }
    open_.pop_back();
  }

  // Loop/unpacking targets: `x`, `a, b`, `(a, b)`.
  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    bool paren = skip_op("(");
    do {
      const Token& t = cur();
      std::string n = expect_name("a variable name");
      check_assignable(n, t);
      names.push_back(n);
    } while (skip_op(",") && cur().type == Tok::Name);
    if (paren) expect_op(")");
    return names;
  }

  void check_assignable(const std::string& n, const Token& at) const {
    static const char* const kConst[] = {"true", "false", "none", "True", "False", "None"};
    for (const char* c : kConst)
      if (n == c) error(at, "can't assign to '" + n + "'");
  }

  void parse_for(Stmt& s, const Token& at) {
    s.kind = Stmt::Kind::For;
    s.targets = parse_targets();
    if (!skip_name("in")) error(cur(), "expected 'in' in for loop, got " + describe(cur()));
    s.expr = parse_tuple(false, false, {"recursive"});
    SoftScope soft(soft_, 0);  // the loop's filter and bodies are not "inside the if"
    if (skip_name("if")) s.filter = parse_expression(true);
    if (is_name("recursive")) error(cur(), "recursive for loops are not supported by this chat-template renderer");
    expect_body_start();
    open_block("for", at);
    std::string found;
    ++loop_depth_;
    s.body = parse_body({"endfor", "else"}, &found);
    --loop_depth_;
    if (found == "else") {
      expect_body_start();
      // The else branch runs outside the loop: break/continue there are errors.
      int saved = loop_depth_;
      loop_depth_ = 0;
      s.else_body = parse_body({"endfor"}, &found);
      loop_depth_ = saved;
    }
    expect_block_end();
    open_.pop_back();
  }

  void parse_set(Stmt& s, const Token& at) {
    const Token& first = cur();
    std::string name = expect_name("a variable name");
    check_assignable(name, first);
    s.targets.push_back(name);
    if (skip_op(".")) {
      s.kind = Stmt::Kind::SetAttr;
      s.attr = expect_name("an attribute name");
      expect_op("=");
      s.expr = parse_tuple(true, false, {});
      expect_block_end();
      return;
    }
    while (skip_op(",")) {
      const Token& t = cur();
      std::string n = expect_name("a variable name");
      check_assignable(n, t);
      s.targets.push_back(n);
    }
    if (skip_op("=")) {
      s.kind = Stmt::Kind::Set;
      s.expr = parse_tuple(true, false, {});
      expect_block_end();
      return;
    }
    if (s.targets.size() != 1) error(cur(), "expected '=' after the set targets, got " + describe(cur()));
    if (is_op("|")) error(cur(), "filtered block set is not supported by this chat-template renderer");
    s.kind = Stmt::Kind::SetBlock;
    expect_body_start();
    open_block("set", at);
    SoftScope soft(soft_, 0);
    std::string found;
    s.body = parse_body({"endset"}, &found);
    expect_block_end();
    open_.pop_back();
  }

  // ------------------------------------------------------------------ expressions

  bool is_tuple_end(std::initializer_list<std::string_view> extra) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || cur().type == Tok::Eof || is_op(")")) return true;
    return cur().type == Tok::Name && std::find(extra.begin(), extra.end(), cur().text) != extra.end();
  }

  // A bare comma list is a tuple, as in `{% set a, b = 1, 2 %}` and `{{ 1, 2 }}`.
  ExprPtr parse_tuple(bool with_condexpr, bool explicit_parens, std::initializer_list<std::string_view> extra) {
    const Token start = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra)) break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) error(cur(), "expected an expression, got " + describe(cur()));
    }
    auto e = node(K::Tuple, start);
    e->args = std::move(items);
    return seal(std::move(e));
  }

  ExprPtr parse_expression(bool with_condexpr = true) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      const Token at = cur();
      next();
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (skip_name("else")) {
        Guard g(*this);
        other = parse_condexpr();
      }
      auto e = node(K::Cond, at);
      e->args.push_back(std::move(expr));
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(other));
      expr = seal(std::move(e));
      mark_soft(*expr);
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const Token at = cur();
      next();
      left = binary(K::Or, at, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const Token at = cur();
      next();
      left = binary(K::And, at, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Guard g(*this);
      const Token at = cur();
      next();
      return unary(K::Not, at, parse_not());
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token start = cur();
    ExprPtr first = parse_math1();
    auto e = node(K::Compare, start);
    while (true) {
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        e->ops.push_back(cur().text);
        next();
      } else if (is_name("in")) {
        e->ops.push_back("in");
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        e->ops.push_back("notin");
        next();
        next();
      } else {
        break;
      }
      if (e->args.empty()) e->args.push_back(std::move(first));
      e->args.push_back(parse_math1());
    }
    if (e->ops.empty()) return first;
    return seal(std::move(e));
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = cur();
      next();
      left = binary(K::Binary, at, std::move(left), parse_concat(), at.text);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const Token at = cur();
      next();
      left = binary(K::Binary, at, std::move(left), parse_math2(), "~");
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = cur();
      next();
      left = binary(K::Binary, at, std::move(left), parse_pow(), at.text);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {  // left-associative in jinja2
      const Token at = cur();
      next();
      left = binary(K::Binary, at, std::move(left), parse_unary(true), "**");
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    Guard g(*this);
    ExprPtr e;
    const Token at = cur();
    if (is_op("-")) {
      next();
      e = unary(K::Neg, at, parse_unary(false));
    } else if (is_op("+")) {
      next();
      e = unary(K::Pos, at, parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr constant(const Token& at, Value v) {
    auto e = node(K::Const, at);
    e->value = std::move(v);
    return seal(std::move(e));
  }

  ExprPtr parse_primary() {
    const Token tok = cur();
    switch (tok.type) {
      case Tok::Name: {
        next();
        if (tok.text == "true" || tok.text == "True") return constant(tok, Value(true));
        if (tok.text == "false" || tok.text == "False") return constant(tok, Value(false));
        if (tok.text == "none" || tok.text == "None") return constant(tok, Value(None{}));
        auto e = node(K::Name, tok);
        e->name = tok.text;
        return seal(std::move(e));
      }
      case Tok::String: {  // adjacent literals concatenate: 'a' "b"
        std::string s;
        while (cur().type == Tok::String) {
          s += cur().text;
          if (s.size() > kMaxStringBytes) error(cur(), "string literal too long");
          next();
        }
        return constant(tok, Value(std::move(s)));
      }
      case Tok::Int: next(); return constant(tok, Value(tok.ival));
      case Tok::Float: next(); return constant(tok, Value(tok.fval));
      case Tok::Op:
        if (tok.text == "(") {
          next();
          ExprPtr e = parse_tuple(true, true, {});
          expect_op(")");
          return e;
        }
        if (tok.text == "[") {
          next();
          auto e = node(K::List, tok);
          while (!is_op("]")) {
            if (!e->args.empty()) {
              expect_op(",");
              if (is_op("]")) break;
            }
            e->args.push_back(parse_expression());
          }
          next();
          return seal(std::move(e));
        }
        if (tok.text == "{") {
          next();
          auto e = node(K::Dict, tok);
          while (!is_op("}")) {
            if (!e->args.empty()) {
              expect_op(",");
              if (is_op("}")) break;
            }
            e->args.push_back(parse_expression());
            expect_op(":");
            e->args.push_back(parse_expression());
          }
          next();
          return seal(std::move(e));
        }
        break;
      default: break;
    }
    error(tok, "unexpected " + describe(tok));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("["))
        e = parse_subscript(std::move(e));
      else if (is_op("("))
        e = parse_call(std::move(e));
      else
        return e;
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|"))
        e = parse_filter(std::move(e));
      else if (is_name("is"))
        e = parse_test(std::move(e));
      else if (is_op("("))
        e = parse_call(std::move(e));
      else
        return e;
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token at = cur();
    next();
    if (at.text == ".") {
      const Token attr = cur();
      if (attr.type == Tok::Name) {
        next();
        auto e = node(K::GetAttr, at);
        e->name = attr.text;
        e->args.push_back(std::move(obj));
        return seal(std::move(e));
      }
      if (attr.type == Tok::Int) {  // messages.0 is messages[0]
        next();
        return binary(K::GetItem, at, std::move(obj), constant(attr, Value(attr.ival)));
      }
      error(attr, "expected an attribute name after '.', got " + describe(attr));
    }
    // '[': an index or a slice start:stop:step with any part left out.
    ExprPtr parts[3];
    bool slice = false;
    if (is_op("]")) {  // x[] subscripts with an empty tuple: always undefined
      next();
      return binary(K::GetItem, at, std::move(obj), seal(node(K::Tuple, at)));
    }
    if (!is_op(":")) parts[0] = parse_expression();
    if (skip_op(":")) {
      slice = true;
      if (!is_op("]") && !is_op(",") && !is_op(":")) parts[1] = parse_expression();
      if (skip_op(":") && !is_op("]") && !is_op(",")) parts[2] = parse_expression();
    }
    if (!slice && is_op(",")) {  // x[a, b] subscripts with a tuple (never found in lists or dicts here)
      auto t = node(K::Tuple, at);
      t->args.push_back(std::move(parts[0]));
      while (skip_op(",") && !is_op("]")) t->args.push_back(parse_expression());
      parts[0] = seal(std::move(t));
    }
    if (slice && is_op(","))
      error(cur(), "tuple subscripts with slices are not supported by this chat-template renderer");
    expect_op("]");
    if (!slice) return binary(K::GetItem, at, std::move(obj), std::move(parts[0]));
    auto e = node(K::Slice, at);
    e->args.push_back(std::move(obj));
    for (auto& p : parts) e->args.push_back(std::move(p));
    return seal(std::move(e));
  }

  // `(a, b, key=value)`; appends to e->args / e->kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) {
        expect_op(",");
        if (is_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**"))
        error(cur(), "*args and **kwargs are not supported by this chat-template renderer");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        const Token key = cur();
        next();
        next();
        for (const auto& kv : e.kwargs)
          if (kv.first == key.text) error(key, "keyword argument '" + key.text + "' repeated");
        e.kwargs.emplace_back(key.text, parse_expression());
      } else {
        if (!e.kwargs.empty()) error(cur(), "positional argument follows keyword argument");
        e.args.push_back(parse_expression());
      }
    }
    next();
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = node(K::Call, cur());
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return seal(std::move(e));
  }

  std::string dotted_name(const char* what) {
    std::string name = expect_name(what);
    while (is_op(".") && peek().type == Tok::Name) {
      next();
      name += "." + cur().text;
      next();
    }
    return name;
  }

  void note_unknown(Expr& e, bool supported) {
    if (supported) return;
    e.unknown = true;
    if (soft_ > 0)
      e.soft = true;
    else
      unknown_.push_back(&e);
  }

  ExprPtr parse_filter(ExprPtr subject) {
    next();  // '|'
    const Token at = cur();
    auto e = node(K::Filter, at);
    e->name = dotted_name("a filter name");
    note_unknown(*e, is_supported_filter(e->name));
    e->args.push_back(std::move(subject));
    if (is_op("(")) parse_call_args(*e);
    return seal(std::move(e));
  }

  ExprPtr parse_test(ExprPtr subject) {
    next();  // 'is'
    auto e = node(K::Test, cur());
    e->negated = skip_name("not");
    const Token at = cur();
    e->name = dotted_name("a test name");
    e->line = at.line;
    e->col = at.col;
    note_unknown(*e, is_supported_test(e->name));
    e->args.push_back(std::move(subject));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                cur().type == Tok::Float || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      // One argument without parentheses: `x is divisibleby 3`, `x is sameas none`.
      if (is_name("is")) error(cur(), "you cannot chain multiple tests with 'is'");
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return seal(std::move(e));
  }
};

}  // namespace

std::unique_ptr<Template> parse_template(const std::string& source) { return Parser(lex_template(source)).parse(); }

}  // namespace tern::jinja
