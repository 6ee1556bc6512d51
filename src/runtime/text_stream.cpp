#include "runtime/text_stream.h"

#include <algorithm>
#include <utility>

namespace tern {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
}  // namespace

std::string Utf8StreamDecoder::push(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() + pending_.size());
  for (char c : bytes) feed(static_cast<unsigned char>(c), out);
  return out;
}

std::string Utf8StreamDecoder::flush() {
  std::string out;
  if (need_ > 0) out = kReplacement;
  pending_.clear();
  need_ = 0;
  return out;
}

// One step of the UTF-8 well-formedness table (Unicode 15, table 3-7). The first
// continuation byte has a narrowed range after E0, ED, F0 and F4; that is what rules
// out overlong forms, surrogates and values above U+10FFFF at the earliest byte.
void Utf8StreamDecoder::feed(unsigned char b, std::string& out) {
  if (need_ > 0) {
    if (b >= lo_ && b <= hi_) {
      pending_.push_back(static_cast<char>(b));
      lo_ = 0x80, hi_ = 0xBF;
      if (--need_ == 0) {
        out += pending_;
        pending_.clear();
      }
      return;
    }
    // The held bytes are a maximal subpart that can no longer complete: one U+FFFD
    // for them, then `b` starts afresh (it may be a valid lead or ASCII byte).
    out += kReplacement;
    pending_.clear();
    need_ = 0;
  }

  lo_ = 0x80, hi_ = 0xBF;
  if (b < 0x80) {
    out.push_back(static_cast<char>(b));
    return;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    need_ = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need_ = 2;
    if (b == 0xE0) lo_ = 0xA0;  // below: overlong
    if (b == 0xED) hi_ = 0x9F;  // above: UTF-16 surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need_ = 3;
    if (b == 0xF0) lo_ = 0x90;  // below: overlong
    if (b == 0xF4) hi_ = 0x8F;  // above: beyond U+10FFFF
  } else {
    // 80..BF: continuation with no lead; C0, C1: always overlong; F5..FF: never valid.
    out += kReplacement;
    return;
  }
  pending_.push_back(static_cast<char>(b));
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  held_ += text;

  // Stop at the first point where a stop string is complete, as a byte-at-a-time scan
  // would: the occurrence that ends first, the longest one if several end there. This
  // makes the result independent of how the text is split into pushes, and matches
  // generation, which must end as soon as any stop string has appeared. held_ contains
  // no whole stop string between calls, so every match found here ends in new text.
  size_t cut = std::string::npos, cut_end = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = held_.find(s);
    if (at == std::string::npos) continue;
    const size_t end = at + s.size();
    if (end < cut_end || (end == cut_end && at < cut)) cut = at, cut_end = end;
  }
  if (cut != std::string::npos) {
    std::string out = held_.substr(0, cut);
    held_.clear();
    stopped_ = true;
    return out;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string; it may
  // still grow into one. Everything before it can never be part of a stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  if (stopped_) return {};
  return std::exchange(held_, {});
}

}  // namespace tern
