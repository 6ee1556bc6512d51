// Evaluator of the Jinja2-subset chat-template renderer: walks the AST with jinja2's
// runtime semantics (default Undefined, for-loop scoping, namespace objects, Python
// operators) plus the builtins transformers' chat templates use: jinja2's filters and
// tests (the supported subset), range, namespace, dict, and transformers' globals
// raise_exception and strftime_now and its tojson override.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja_parser.h"

namespace tern::jinja {

// The parser rejects filters and tests outside these sets at parse time, as jinja2 does.
bool is_supported_filter(std::string_view name);
bool is_supported_test(std::string_view name);

// Renders `t` with the given variables (messages, add_generation_prompt, ...). Throws
// tern::Error("chat template: line L col C: ...") on runtime errors, and
// tern::Error("chat template: MESSAGE") from raise_exception(MESSAGE).
std::string render(const Template& t, const std::vector<std::pair<std::string, Value>>& variables);

}  // namespace tern::jinja
