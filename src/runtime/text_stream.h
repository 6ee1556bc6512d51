// Streaming text output. Tokens decode to byte strings that may end inside a UTF-8
// character (byte-level BPE splits multi-byte characters across tokens), and a stop
// string may arrive split over several tokens. These classes turn a stream of such
// pieces into text that is safe to print as it comes.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace tern {

// Returns only complete UTF-8 characters; an incomplete trailing sequence is held until
// the next push. Ill-formed input becomes U+FFFD, one per maximal subpart (the Unicode
// recommended practice, which Python's decode(errors='replace') and so HF follow), as
// soon as it is clear it can never complete: bad lead bytes, stray continuation bytes,
// overlong forms, surrogates and code points above U+10FFFF.
class Utf8StreamDecoder {
 public:
  std::string push(std::string_view bytes);
  // Ends the stream: a held incomplete sequence becomes U+FFFD.
  std::string flush();

 private:
  void feed(unsigned char b, std::string& out);

  std::string pending_;  // bytes of the incomplete character so far (at most 3)
  int need_ = 0;         // continuation bytes still expected
  unsigned char lo_ = 0x80, hi_ = 0xBF;  // allowed range of the next continuation byte
};

// Holds back text that might be the start of a stop string, and cuts the stream where a
// stop string first becomes complete (reading left to right; with overlapping stop
// strings, the one that ends first). Stop strings are never printed; the text before
// one is printed exactly once. The result does not depend on how text is split.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);  // empty strings are ignored

  // Returns the part of (held text + `text`) that is safe to print now. After a stop
  // string appears, returns the text before it, sets stopped(), and ignores later input.
  std::string push(std::string_view text);
  // Ends the stream: releases held text that never became a stop string.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace tern
