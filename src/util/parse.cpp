#include "util/parse.h"

#include <sstream>

#include "tern/error.h"

namespace tern {

std::vector<int64_t> parse_int_list(const std::string& s, const std::string& flag, int64_t lo, int64_t hi) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const size_t b = part.find_first_not_of(' '), e = part.find_last_not_of(' ');
    const std::string tok = b == std::string::npos ? "" : part.substr(b, e - b + 1);
    try {
      size_t used = 0;
      const long long x = std::stoll(tok, &used);
      if (used != tok.size() || x < lo || x > hi) throw std::invalid_argument(tok);
      v.push_back(x);
    } catch (const std::exception&) {
      fail("{}: '{}' is not a number in [{}, {}]", flag, tok, lo, hi);
    }
  }
  if (v.empty()) fail("{}: expected a comma-separated list of numbers", flag);
  return v;
}

}  // namespace tern
