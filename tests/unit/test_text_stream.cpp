// Streaming UTF-8 decoding and stop strings: output must not depend on how the input
// is split into pushes, ill-formed bytes become U+FFFD like Python's errors='replace',
// and stop strings are cut exactly, never printed.
#include "runtime/text_stream.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace tern {
namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

std::mt19937 rng_for_test() { return std::mt19937(std::random_device{}()); }

std::string decode_whole(std::string_view s) {
  Utf8StreamDecoder d;
  std::string out = d.push(s);
  return out + d.flush();
}

// Decodes `s` pushed in the given pieces.
std::string decode_pieces(const std::vector<std::string>& pieces) {
  Utf8StreamDecoder d;
  std::string out;
  for (const auto& p : pieces) out += d.push(p);
  return out + d.flush();
}

// `s` cut at random points (empty pieces included).
std::vector<std::string> random_split(std::mt19937& rng, const std::string& s) {
  std::vector<std::string> pieces;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = std::uniform_int_distribution<size_t>(0, 4)(rng);
    pieces.push_back(s.substr(i, n));
    i += n;
  }
  return pieces;
}

TEST(Utf8StreamDecoder, EverySplitGivesTheWholeText) {
  const std::vector<std::string> texts = {
      "plain ascii",
      "caf\xC3\xA9",                                              // é: 2 bytes
      "\xE2\x82\xAC" "5",                                         // €: 3 bytes
      "\xF0\x9D\x84\x9E",                                         // 𝄞: 4 bytes
      // 👨‍👩‍👧: man, ZWJ, woman, ZWJ, girl
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
      "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z",  // all lengths in a row
  };
  for (const auto& t : texts) {
    EXPECT_EQ(decode_whole(t), t);
    for (size_t cut = 0; cut <= t.size(); ++cut) {
      EXPECT_EQ(decode_pieces({t.substr(0, cut), t.substr(cut)}), t) << "cut " << cut;
    }
    std::vector<std::string> bytes;
    for (char c : t) bytes.push_back(std::string(1, c));
    EXPECT_EQ(decode_pieces(bytes), t);
  }
}

TEST(Utf8StreamDecoder, HoldsIncompleteCharacterUntilCompleted) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.push("x\xE2"), "x");
  EXPECT_EQ(d.push("\x82"), "");
  EXPECT_EQ(d.push("\xAC!"), "\xE2\x82\xAC!");
  EXPECT_EQ(d.flush(), "");
}

TEST(Utf8StreamDecoder, IllFormedBytesBecomeReplacementCharacters) {
  // Expected outputs are Python's bytes.decode('utf-8', errors='replace').
  struct Case {
    std::string in, want;
  };
  const std::vector<Case> cases = {
      {"\x80", kFFFD},                                       // continuation, no lead
      {"a\xBF" "b", "a" + kFFFD + "b"},                      //
      {"\xC0\xAF", kFFFD + kFFFD},                           // C0: always overlong
      {"\xE0\x80\x80", kFFFD + kFFFD + kFFFD},               // overlong 3-byte
      {"\xED\xA0\x80", kFFFD + kFFFD + kFFFD},               // surrogate U+D800
      {"\xF4\x90\x80\x80", kFFFD + kFFFD + kFFFD + kFFFD},   // above U+10FFFF
      {"\xF5", kFFFD},                                       //
      {"\xFF", kFFFD},                                       //
      {"\xE2\x82" "A", kFFFD + "A"},                         // truncated, then ASCII
      {"\xE2\x82\xE2\x82\xAC", kFFFD + "\xE2\x82\xAC"},      // truncated, then a valid char
      {"\xF1\x80\x80\xE1\x80\xC0", kFFFD + kFFFD + kFFFD},   // maximal subparts
      {"\xF0\x9F\x98", kFFFD},                               // incomplete at end of stream
      {"\xE0\xA0", kFFFD},                                   //
  };
  for (const auto& c : cases) {
    EXPECT_EQ(decode_whole(c.in), c.want) << testing::PrintToString(c.in);
    for (size_t cut = 0; cut <= c.in.size(); ++cut) {
      EXPECT_EQ(decode_pieces({c.in.substr(0, cut), c.in.substr(cut)}), c.want);
    }
  }
}

TEST(Utf8StreamDecoder, FlushEmitsReplacementForHeldBytesOnlyOnce) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.push("ok\xF0\x9F"), "ok");
  EXPECT_EQ(d.flush(), kFFFD);
  EXPECT_EQ(d.flush(), "");
  EXPECT_EQ(d.push("\x98\x80"), kFFFD + kFFFD);  // a fresh stream: stray continuations
}

TEST(Utf8StreamDecoder, RandomBytesDoNotDependOnSplitting) {
  auto rng = rng_for_test();
  // Bytes biased towards UTF-8 structure so that valid and invalid sequences both occur.
  const std::vector<unsigned char> alphabet = {'a', 0x80, 0x9F, 0xA0, 0xBF, 0xC2, 0xDF, 0xE0, 0xED,
                                               0xEF, 0xF0, 0xF4, 0xF5, 0xC0, 0xFF, 0x8F, 0x90};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string s;
    const int n = std::uniform_int_distribution<int>(0, 24)(rng);
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(alphabet[rng() % alphabet.size()]));
    const std::string whole = decode_whole(s);
    ASSERT_EQ(decode_pieces(random_split(rng, s)), whole);
  }
}

TEST(Utf8StreamDecoder, RandomValidTextPassesThrough) {
  auto rng = rng_for_test();
  const std::vector<std::string> chars = {"a", " ", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                                          "\xE2\x80\x8D", "\xEF\xBF\xBF", "\xF4\x8F\xBF\xBF"};
  for (int trial = 0; trial < 500; ++trial) {
    std::string s;
    for (int i = 0; i < 20; ++i) s += chars[rng() % chars.size()];
    ASSERT_EQ(decode_pieces(random_split(rng, s)), s);
  }
}

// Pushes the pieces and returns everything printed (including the final flush).
std::string stream(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += m.push(p);
  return out + m.flush();
}

TEST(StopMatcher, StopAcrossPushesIsNeverPrinted) {
  StopMatcher m({"<|end|>"});
  EXPECT_EQ(m.push("Hello <|e"), "Hello ");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("nd|"), "");
  EXPECT_EQ(m.push(">after"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopInsideOnePush) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("abcSTOPdef"), "abc");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, HeldPrefixIsReleasedWhenItDoesNotComplete) {
  StopMatcher m({"<|end|>"});
  EXPECT_EQ(m.push("a<|"), "a");
  EXPECT_EQ(m.push("en"), "");
  EXPECT_EQ(m.push("x"), "<|enx");
  EXPECT_EQ(m.push("<"), "");
  EXPECT_EQ(m.flush(), "<");  // end of stream: never became a stop string
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, OverlappingPrefixes) {
  StopMatcher m({"aab"});
  std::string out;
  for (char c : std::string("aaab")) out += m.push(std::string(1, c));
  EXPECT_EQ(out, "a");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, FirstCompletedOfSeveralStopsWins) {
  StopMatcher a({"World", "lo W", "xyz"});
  EXPECT_EQ(stream(a, {"Hel", "lo Wor", "ld"}), "Hel");
  EXPECT_TRUE(a.stopped());
  // "bac" starts first, but "a" is complete first: generation would stop there, and so
  // must a single push of the same text.
  for (const auto& pieces : std::vector<std::vector<std::string>>{{"xbac"}, {"x", "b", "a", "c"}}) {
    StopMatcher b({"bac", "a"});
    EXPECT_EQ(stream(b, pieces), "xb");
  }
  // Two ending at the same place: the longer one is cut, so none of it is printed.
  StopMatcher c({"c", "abc"});
  EXPECT_EQ(stream(c, {"xab", "c"}), "x");
}

TEST(StopMatcher, EmptyStopListPassesEverythingThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.push("any <|end|> text"), "any <|end|> text");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
  StopMatcher only_empty({""});  // an empty stop string would match at once: ignored
  EXPECT_EQ(stream(only_empty, {"abc"}), "abc");
  EXPECT_FALSE(only_empty.stopped());
}

TEST(StopMatcher, RandomTextMatchesReference) {
  auto rng = rng_for_test();
  for (int trial = 0; trial < 3000; ++trial) {
    auto word = [&](int max_len) {
      std::string w;
      const int n = std::uniform_int_distribution<int>(1, max_len)(rng);
      for (int i = 0; i < n; ++i) w.push_back("abc"[rng() % 3]);
      return w;
    };
    std::vector<std::string> stops;
    for (int i = rng() % 3; i > 0; --i) stops.push_back(word(4));
    const std::string text = word(30);
    // Reference: scan end positions left to right; cut before the longest stop string
    // ending at the first position where any ends.
    size_t cut = std::string::npos;
    for (size_t end = 1; end <= text.size() && cut == std::string::npos; ++end) {
      for (const auto& s : stops) {
        if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0) {
          cut = std::min(cut, end - s.size());
        }
      }
    }
    StopMatcher m(stops);
    ASSERT_EQ(stream(m, random_split(rng, text)), text.substr(0, cut));
    ASSERT_EQ(m.stopped(), cut != std::string::npos);
  }
}

}  // namespace
}  // namespace tern
