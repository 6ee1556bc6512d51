#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "tern/error.h"
#include "test_util.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

namespace tern {
namespace {

using Ids = std::vector<int32_t>;

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string_view> views;
  pretokenize(text, views);
  return {views.begin(), views.end()};
}

using test::error_of;

// A temporary directory removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("tern_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name, const std::string& contents) const {
    std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary) << contents;
    return p;
  }
};

const std::vector<std::string>& varied_texts() {
  static const std::vector<std::string> texts = {
      "Hello world",
      "The quick brown fox jumps over the lazy dog.",
      "I'M here, don't worry; you'LL see it's fine. WE'VE DONE IT'S",
      "int main() {\n    return x == 42 ? foo(a, b) : bar[i++];\n}\n",
      "tabs\tand   spaces   \t\n\n\n   end  ",
      "windows\r\nline\r\n\r\nendings\r\n",
      "emoji 👍🏽 family 👨‍👩‍👧‍👦 flag 🇩🇪 done",
      "中文字符和日本語のテキスト、한국어도",
      "العربية نص من اليمين إلى اليسار",
      "combining: e\u0301 a\u0308 n\u0303 and Zalgo z\u0336\u0337",
      "numbers 1234567 3.14159 -0.5e10 1,000,000",
      "   leading spaces and trailing   ",
      "",
      " ",
      "\n",
      "a",
      "mixed <|begin_of_text|> specials <|eot_id|><|end_of_text|>",
  };
  return texts;
}

TEST(Tokenizer, ByteTableIsBijection) {
  std::set<uint32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const std::string& s = bytelevel::byte_to_unicode(uint8_t(b));
    size_t i = 0;
    uint32_t cp = bytelevel::next_codepoint(s, i);
    EXPECT_EQ(i, s.size()) << "byte " << b << " must map to exactly one character";
    EXPECT_EQ(bytelevel::unicode_to_byte(cp), b);
    EXPECT_TRUE(seen.insert(cp).second) << "code point used twice: " << cp;
  }
  EXPECT_EQ(seen.size(), 256u);
  EXPECT_EQ(bytelevel::byte_to_unicode('A'), "A");
  EXPECT_EQ(bytelevel::byte_to_unicode(' '), "Ġ");   // U+0120
  EXPECT_EQ(bytelevel::byte_to_unicode('\n'), "Ċ");  // U+010A
  EXPECT_EQ(bytelevel::byte_to_unicode(0xAD), "Ń");  // soft hyphen is not printable
  EXPECT_EQ(bytelevel::unicode_to_byte(0x4E2D), -1);
  std::string raw, mapped, back;
  for (int b = 0; b < 256; ++b) raw += char(b);
  bytelevel::encode(raw, mapped);
  ASSERT_TRUE(bytelevel::decode(mapped, back));
  EXPECT_EQ(back, raw);
}

TEST(Tokenizer, PreTokenizerSpotChecks) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("123456"), (V{"123", "456"}));
  EXPECT_EQ(pieces("  hi"), (V{" ", " hi"}));
  EXPECT_EQ(pieces("it's"), (V{"it", "'s"}));
  EXPECT_EQ(pieces("a\n\nb"), (V{"a", "\n\n", "b"}));
  EXPECT_EQ(pieces("I'M DON'T"), (V{"I", "'M", " DON", "'T"}));
  EXPECT_EQ(pieces("x = 1234;"), (V{"x", " =", " ", "123", "4", ";"}));
  EXPECT_EQ(pieces("end.  \n"), (V{"end", ".", "  \n"}));
  EXPECT_EQ(pieces("a\r\nb"), (V{"a", "\r\n", "b"}));
  EXPECT_EQ(pieces("hi  "), (V{"hi", "  "}));
  EXPECT_EQ(pieces("?!\n\nx"), (V{"?!\n\n", "x"}));
  EXPECT_EQ(pieces("$hello"), (V{"$hello"}));
  EXPECT_EQ(pieces("中文 字"), (V{"中文", " 字"}));
  EXPECT_TRUE(pieces("").empty());
  for (const std::string& t : varied_texts()) {  // pieces always tile the text
    std::string joined;
    for (const auto& p : pieces(t)) joined += p;
    EXPECT_EQ(joined, t);
  }
}

// A hand-built vocabulary where the ids can be worked out on paper.
TokenizerData tiny_vocab() {
  TokenizerData d;
  d.model = "gpt2";
  //           0    1    2    3    4    5     6     7       8        9     10    11
  d.tokens = {"h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello", "el", "lo", "Ġh"};
  d.merges = {"h e", "l l", "he ll", "hell o", "e l", "Ġ h"};
  return d;
}

TEST(Tokenizer, HandBuiltMergesFollowRank) {
  Tokenizer tok(tiny_vocab());
  EXPECT_EQ(tok.encode("hello", false), (Ids{8}));
  EXPECT_EQ(tok.encode("helloo", false), (Ids{8, 3}));
  // "l l" (rank 1) beats "e l" (rank 4) although "e l" is further left.
  EXPECT_EQ(tok.encode("ell", false), (Ids{1, 6}));
  // Equal ranks: the leftmost pair merges first.
  EXPECT_EQ(tok.encode("lll", false), (Ids{6, 2}));
  // "h e" (rank 0) takes the h before "Ġ h" (rank 5) can.
  EXPECT_EQ(tok.encode(" hello", false), (Ids{4, 8}));
  EXPECT_EQ(tok.encode("hello hello", false), (Ids{8, 4, 8}));
  EXPECT_EQ(tok.encode("lol", false), (Ids{2, 3, 2}));
  EXPECT_EQ(tok.decode(Ids{4, 8, 3}), " helloo");
}

TEST(Tokenizer, IgnoreMergesEmitsWholeVocabWords) {
  Tokenizer tok(tiny_vocab());
  // No merge builds "lo", but the whole pre-token is a token, so it is used directly.
  EXPECT_EQ(tok.encode("lo", false), (Ids{10}));
  // Inside a longer word only merges apply.
  EXPECT_EQ(tok.encode("elo", false), (Ids{9, 3}));
  // " h" is a token (11) reached directly, although "Ġ h" would also build it.
  EXPECT_EQ(tok.encode(" h", false), (Ids{11}));
}

TEST(Tokenizer, MissingByteTokenNamesThePiece) {
  Tokenizer tok(tiny_vocab());
  std::string msg = error_of([&] { tok.encode("hex", false); });
  EXPECT_NE(msg.find("\"x\""), std::string::npos) << msg;
}

TEST(Tokenizer, RoundTripVariedText) {
  Tokenizer tok(synth_tokenizer(2000));
  for (const std::string& t : varied_texts()) {
    Ids ids = tok.encode(t, false);
    EXPECT_EQ(tok.decode(ids), t);
    std::string by_token;
    for (int32_t id : ids) by_token += tok.token_bytes(id);
    EXPECT_EQ(by_token, t);
    Ids with_bos = tok.encode(t, true);
    ASSERT_EQ(with_bos.size(), ids.size() + 1);
    EXPECT_EQ(with_bos[0], tok.bos());
    Ids raw = tok.encode(t, false, /*parse_special=*/false);
    EXPECT_EQ(tok.decode(raw), t);
  }
  // Long runs stress the regex backtracking and the merge heap.
  for (const std::string& t : {std::string(100000, ' ') + "x", std::string(50000, 'a'),
                               std::string(30000, '\n') + "\r\n", std::string(20000, '7')}) {
    EXPECT_EQ(tok.decode(tok.encode(t, false)), t);
  }
}

TEST(Tokenizer, TrainedMergesCompressEnglish) {
  Tokenizer tok(synth_tokenizer(2000));
  std::string text = "The model reads the words and then writes the tokens";
  Ids ids = tok.encode(text, false);
  EXPECT_LE(ids.size(), 12u) << "common words should be single tokens";
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(Tokenizer, SpecialTokensMatched) {
  TokenizerData d = synth_tokenizer(2000);
  Tokenizer tok(d);
  const int32_t bos = d.bos, eot = d.eot, eos = d.eos;
  Ids ids = tok.encode("<|begin_of_text|>Hi<|eot_id|><|end_of_text|>", false);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), bos);
  EXPECT_EQ(ids[ids.size() - 2], eot);
  EXPECT_EQ(ids.back(), eos);
  EXPECT_EQ(Ids(ids.begin() + 1, ids.end() - 2), tok.encode("Hi", false));
  EXPECT_EQ(tok.decode(ids), "<|begin_of_text|>Hi<|eot_id|><|end_of_text|>");
  // The regex runs on each side separately: "a " before a special keeps its space alone.
  EXPECT_EQ(tok.encode("a <|eot_id|>", false), [&] {
    Ids v = tok.encode("a ", false);
    v.push_back(eot);
    return v;
  }());

  Ids plain = tok.encode("<|eot_id|>", false, /*parse_special=*/false);
  EXPECT_GT(plain.size(), 1u);
  for (int32_t id : plain) EXPECT_NE(id, eot);
  EXPECT_EQ(tok.decode(plain), "<|eot_id|>");

  std::string reserved = "<|reserved_special_token_7|>";
  EXPECT_EQ(tok.encode(reserved, false),
            (Ids{int32_t(std::find(d.tokens.begin(), d.tokens.end(), reserved) - d.tokens.begin())}));
}

TEST(Tokenizer, SpecialMatchingIsLongestFirstAndUserDefinedAlwaysMatch) {
  TokenizerData d = synth_tokenizer(300);
  d.tokens.push_back("<|eot_id|>++");  // user-defined (type 4), longer than <|eot_id|>
  d.token_types.push_back(4);
  const int32_t longer = int32_t(d.tokens.size() - 1);
  Tokenizer tok(d);
  Ids a = tok.encode("x", false);
  EXPECT_EQ(tok.encode("x<|eot_id|>++x", false), (Ids{a[0], longer, a[0]}));
  Ids shorter = tok.encode("<|eot_id|>+", false);
  EXPECT_EQ(shorter.front(), d.eot);
  // HF and llama.cpp skip only control tokens when specials are not parsed.
  EXPECT_EQ(tok.encode("<|eot_id|>++", false, false), (Ids{longer}));
  EXPECT_NE(tok.encode("<|eot_id|>+", false, false).front(), d.eot);

  // Without token types, <|...|> tokens count as specials.
  TokenizerData untyped = synth_tokenizer(300);
  untyped.token_types.clear();
  Tokenizer tok2(untyped);
  EXPECT_EQ(tok2.encode("<|eot_id|>", false), (Ids{untyped.eot}));
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  Tokenizer tok(synth_tokenizer(300));
  struct Case {
    std::string text;
    size_t at;
  };
  for (const Case& c : {Case{"\xff", 0}, Case{"abc\xc3", 3}, Case{"ab\xc0\xaf", 2}, Case{"x\xed\xa0\x80", 1},
                        Case{"\xf4\x90\x80\x80", 0}, Case{"ok \xe2\x82", 3}, Case{"\x80", 0}}) {
    std::string msg = error_of([&] { tok.encode(c.text, false); });
    EXPECT_EQ(msg, "invalid UTF-8 in input at byte " + std::to_string(c.at));
  }
  EXPECT_NO_THROW(tok.encode("\xf4\x8f\xbf\xbf \xed\x9f\xbf", false));  // U+10FFFF, U+D7FF
}

TEST(Tokenizer, UnknownIdIsAnError) {
  Tokenizer tok(synth_tokenizer(2000));
  EXPECT_EQ(error_of([&] {
              tok.decode(Ids{1, 2000});
            }),
            "token id 2000 is outside the vocabulary (size 2000)");
  EXPECT_EQ(error_of([&] { tok.token_bytes(-1); }), "token id -1 is outside the vocabulary (size 2000)");
  EXPECT_EQ(tok.vocab_size(), 2000);
}

TEST(Tokenizer, SynthTokenizerShape) {
  for (int64_t v : {int64_t(260), int64_t(2000), int64_t(128256)}) {
    TokenizerData d = synth_tokenizer(v);
    ASSERT_EQ(int64_t(d.tokens.size()), v);
    ASSERT_EQ(d.token_types.size(), d.tokens.size());
    for (int b = 0; b < 256; ++b) ASSERT_EQ(d.tokens[b], bytelevel::byte_to_unicode(uint8_t(b)));
    EXPECT_EQ(d.tokens[d.bos], "<|begin_of_text|>");
    EXPECT_EQ(d.tokens[d.eos], "<|end_of_text|>");
    EXPECT_EQ(d.tokens[d.eot], "<|eot_id|>");
    EXPECT_EQ(d.token_types[d.bos], 3);
    EXPECT_EQ(std::set<std::string>(d.tokens.begin(), d.tokens.end()).size(), d.tokens.size())
        << "unique tokens";
    EXPECT_GE(d.merges.size(), size_t(d.bos - 256));
  }
  EXPECT_EQ(synth_tokenizer(260).tokens.back(), "<|eot_id|>");
  EXPECT_EQ(synth_tokenizer(128256).tokens.back().substr(0, 25), "<|reserved_special_token_");
  EXPECT_EQ(synth_tokenizer(2000).merges, synth_tokenizer(2000).merges) << "deterministic";
  EXPECT_THROW(synth_tokenizer(259), Error);
  Tokenizer big(synth_tokenizer(128256));
  EXPECT_EQ(big.vocab_size(), 128256);
}

TEST(Tokenizer, TokenizerJsonRoundTrip) {
  TempDir dir;
  TokenizerData d = synth_tokenizer(2000);
  d.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
  d.eos = d.eot;  // an instruct model ending turns on <|eot_id|>
  dir.file("tokenizer_config.json", to_tokenizer_config_json(d));
  TokenizerData back = load_tokenizer_json(dir.file("tokenizer.json", to_tokenizer_json(d)));
  EXPECT_EQ(back.tokens, d.tokens);
  EXPECT_EQ(back.token_types, d.token_types);
  EXPECT_EQ(back.merges, d.merges);
  EXPECT_EQ(back.bos, d.bos);
  EXPECT_EQ(back.eos, d.eos);
  EXPECT_EQ(back.eot, d.eot);
  EXPECT_TRUE(back.add_bos);
  EXPECT_EQ(back.chat_template, d.chat_template);
  EXPECT_EQ(back.pre, "llama-bpe");
  Tokenizer a(d), b(back);
  for (const std::string& t : varied_texts()) EXPECT_EQ(a.encode(t, true), b.encode(t, true));

  // Without the config file, BOS comes from the post_processor and eos from its name.
  std::filesystem::remove(dir.path / "tokenizer_config.json");
  TokenizerData bare = load_tokenizer_json((dir.path / "tokenizer.json").string());
  EXPECT_TRUE(bare.add_bos);
  EXPECT_EQ(bare.eos, d.bos + 1);  // found by name: <|end_of_text|>
  d.add_bos = false;
  EXPECT_FALSE(load_tokenizer_json(dir.file("tokenizer.json", to_tokenizer_json(d))).add_bos);
}

TEST(Tokenizer, TokenizerJsonSpecialsInTheMiddleStayInVocab) {
  // HF numbers added tokens missing from model.vocab after the vocab, so a special in
  // the middle must also be written into model.vocab to keep its id.
  TokenizerData d = tiny_vocab();
  d.tokens.insert(d.tokens.begin() + 2, "<|mid|>");
  d.merges = {};
  d.token_types.assign(d.tokens.size(), 1);
  d.token_types[2] = 3;
  TempDir dir;
  std::string json = to_tokenizer_json(d);
  EXPECT_NE(json.find("\"<|mid|>\": 2"), std::string::npos);
  TokenizerData back = load_tokenizer_json(dir.file("tokenizer.json", json));
  EXPECT_EQ(back.tokens, d.tokens);
  EXPECT_EQ(back.token_types, d.token_types);
}

TEST(Tokenizer, TokenizerJsonFormats) {
  TempDir dir;
  // Newer merges format ([a, b] pairs), dict-style special tokens in the config.
  std::string path = dir.file("tokenizer.json", R"({
    "added_tokens": [{"id": 5, "content": "<|begin_of_text|>", "special": true},
                     {"id": 6, "content": "<tool>", "special": false}],
    "post_processor": null,
    "model": {"type": "BPE", "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4},
              "merges": [["a", "b"], ["Ġ", "ab"]]}})");
  dir.file("tokenizer_config.json", R"({"bos_token": {"content": "<|begin_of_text|>"}, "eos_token": null,
    "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  TokenizerData t = load_tokenizer_json(path);
  EXPECT_EQ(t.merges, (std::vector<std::string>{"a b", "Ġ ab"}));
  EXPECT_EQ(t.token_types, (std::vector<int32_t>{1, 1, 1, 1, 1, 3, 4}));
  EXPECT_EQ(t.bos, 5);
  EXPECT_EQ(t.eos, -1);
  EXPECT_EQ(t.eot, -1);
  EXPECT_FALSE(t.add_bos);  // post_processor null
  EXPECT_EQ(t.chat_template, "D");
  Tokenizer tok(t);
  EXPECT_EQ(tok.encode("ab ab<tool>", true), (Ids{5, 2, 4, 6}));
}

TEST(Tokenizer, TokenizerJsonErrorsNameFileAndField) {
  TempDir dir;
  auto load_error = [&](const std::string& contents) {
    std::string path = dir.file("tokenizer.json", contents);
    std::string msg = error_of([&] { load_tokenizer_json(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    return msg;
  };
  EXPECT_NE(load_error("{\"model\": ").find("invalid JSON"), std::string::npos);
  EXPECT_NE(load_error(R"({"version": "1.0"})").find("\"model\""), std::string::npos);
  EXPECT_NE(load_error(R"({"model": {"type": "WordPiece", "vocab": {}}})").find("model.type"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"model": {"type": "BPE"}})").find("model.vocab"), std::string::npos);
  EXPECT_NE(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2, "c": 3}}})").find("dense"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2, "c": 3}},
                          "added_tokens": [{"id": 3, "content": "c"}]})")
                .find("no token has id 1"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
                          "added_tokens": [{"id": 1, "content": "<s>"}]})")
                .find("used twice"),
            std::string::npos);
  EXPECT_NE(
      load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [3]}})").find("model.merges[0]"),
      std::string::npos);
  EXPECT_NE(error_of([&] { load_tokenizer_json((dir.path / "missing.json").string()); }).find("missing.json"),
            std::string::npos);

  // No post_processor and no config: BOS defaults to on.
  std::string good = dir.file("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})");
  EXPECT_TRUE(load_tokenizer_json(good).add_bos);
  std::string cfg = dir.file("tokenizer_config.json", R"({"bos_token": "<nope>"})");
  std::string msg = error_of([&] { load_tokenizer_json(good); });
  EXPECT_NE(msg.find(cfg), std::string::npos) << msg;
  EXPECT_NE(msg.find("bos_token"), std::string::npos) << msg;
}

TEST(Tokenizer, ConcurrentEncodeAndMove) {
  Tokenizer tok(synth_tokenizer(2000));
  const std::string text = varied_texts()[2] + varied_texts()[3] + varied_texts()[6];
  const Ids expected = tok.encode(text, true);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) ok[t] += tok.encode(text, true) == expected;
    });
  for (auto& th : threads) th.join();
  for (int n : ok) EXPECT_EQ(n, 50);
  Tokenizer moved(std::move(tok));
  EXPECT_EQ(moved.encode(text, true), expected);
}

TEST(Tokenizer, RejectsUnsupportedData) {
  TokenizerData d = synth_tokenizer(300);
  d.model = "llama";
  EXPECT_NE(error_of([&] { Tokenizer t(d); }).find("\"llama\""), std::string::npos);
  d = synth_tokenizer(300);
  d.bos = 300;
  EXPECT_NE(error_of([&] { Tokenizer t(d); }).find("bos"), std::string::npos);
}

}  // namespace
}  // namespace tern
