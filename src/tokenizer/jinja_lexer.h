// Lexer of the Jinja2-subset chat-template renderer. It splits a template into text
// and tag tokens exactly as jinja2's lexer does with the options transformers uses
// (trim_blocks=True, lstrip_blocks=True), so the whitespace a template emits matches:
//   - `{%- ... -%}`, `{{- ... -}}`, `{#- ... -#}` strip all whitespace on that side;
//   - trim_blocks removes the first newline right after `%}` or `#}`;
//   - lstrip_blocks removes spaces and tabs before `{%` / `{#` when only they precede
//     the tag on its line; `{%+` turns that off for one tag;
//   - one trailing newline of the whole template is dropped (keep_trailing_newline=False);
//   - `{% raw %}...{% endraw %}` is passed through as text.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tern::jinja {

enum class Tok {
  Data,        // template text (already whitespace-processed)
  BlockBegin,  // {%
  BlockEnd,    // %}
  VarBegin,    // {{
  VarEnd,      // }}
  Name,
  String,  // text holds the decoded value
  Int,
  Float,
  Op,  // text holds the operator: + - * / // % ** ~ == != < <= > >= = . : | , ( ) [ ] { } ;
  Eof,
};

struct Token {
  Tok type = Tok::Eof;
  std::string text;
  int64_t ival = 0;
  double fval = 0;
  int line = 1;
  int col = 1;
};

// Throws tern::Error("chat template: line L col C: ...") on a lexical error.
std::vector<Token> lex_template(const std::string& source);

}  // namespace tern::jinja
