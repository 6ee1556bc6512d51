// Parsing of user-supplied number lists ("128,512", "1, 2, 3") with errors that name the flag.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tern {

// Comma-separated integers in [lo, hi], spaces around entries allowed. Throws
// tern::Error "FLAG: 'x' is not a number in [lo, hi]".
std::vector<int64_t> parse_int_list(const std::string& s, const std::string& flag, int64_t lo, int64_t hi);

}  // namespace tern
