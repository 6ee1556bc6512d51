// Python str semantics on UTF-8 text for the chat-template renderer: strings index by
// code point, whitespace is Python's (str.isspace), and case mapping covers ASCII,
// Latin-1, Latin Extended-A, Greek and Cyrillic one-to-one pairs (plus sharp s); other
// characters keep their case, where Python maps all of Unicode with a few context rules
// (final sigma, dotted I). Chat templates change the case of role names, which are ASCII.
// Errors are EvalError.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace tern::jinja {

std::string py_upper(std::string s);            // str.upper()
std::string py_lower(std::string s);            // str.lower()
std::string py_capitalize(std::string s);       // str.capitalize(): first title-cased, rest lower
std::string py_title(const std::string& s);     // str.title()
std::string jinja_title(const std::string& s);  // jinja2's title filter (different word rules)
bool is_cased(char32_t c);                      // a letter that has case

// str.strip/lstrip/rstrip(chars); chars absent or None strips whitespace.
std::string py_strip(const std::string& s, const std::optional<Value>& chars, bool left, bool right);
// str.split(sep, maxsplit); sep absent or None splits on runs of whitespace.
std::vector<Value> py_split(const std::string& s, const std::optional<Value>& sep, int64_t maxsplit);
// str.replace(old, new, count); count < 0 replaces all.
std::string py_replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count);
std::vector<std::string> py_splitlines(const std::string& s, bool keepends);

// int(text, base) and float(text); nullopt where Python raises ValueError.
std::optional<int64_t> parse_py_int(const std::string& text, int base);
std::optional<double> parse_py_float(const std::string& text);

}  // namespace tern::jinja
