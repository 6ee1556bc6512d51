// Several sequences in one CPU engine: each sequence's logits are exactly those of a
// fresh single-sequence engine fed the same calls, whatever the other sequences do
// and in whatever order decode() lists them; bad calls throw and advance nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "model/model.h"
#include "runtime/engine.h"
#include "tern/error.h"
#include "test_util.h"

namespace tern {
namespace {

Model small_model() { return synth_model(parse_shape("256,512,2,4,2,300"), 13); }

std::vector<int32_t> some_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

std::unique_ptr<Engine> engine(const Model& m, int n_seq, int64_t ctx) {
  EngineOptions eo;
  eo.threads = 2;
  eo.ctx = ctx;
  eo.n_seq = n_seq;
  return make_cpu_engine(m, eo);
}

// What one sequence saw: a prefilled prompt, then single tokens through decode().
struct Trace {
  std::vector<int32_t> prompt, decoded;
  std::vector<std::vector<float>> rows;  // logits after the prompt and after each decoded token
};

// The same calls on a fresh one-sequence engine: prefill, then forward() one token at a time.
std::vector<std::vector<float>> single_sequence_rows(const Model& m, const Trace& t) {
  const int64_t V = m.config.vocab;
  auto e = engine(m, 1, 64);
  std::vector<std::vector<float>> rows;
  std::vector<float> row(V);
  e->forward(t.prompt, row.data(), Logits::Last);
  rows.push_back(row);
  for (int32_t tok : t.decoded) {
    e->forward(std::span<const int32_t>(&tok, 1), row.data(), Logits::Last);
    rows.push_back(row);
  }
  return rows;
}

TEST(MultiSeq, DecodeMatchesSingleSequenceEngines) {
  Model m = small_model();
  const int64_t V = m.config.vocab;
  auto e = engine(m, 3, 64);
  EXPECT_EQ(e->n_seq(), 3);
  std::vector<Trace> tr(3);
  const int64_t lens[3] = {5, 1, 9};
  std::vector<float> row(V);
  for (int s = 0; s < 3; ++s) {
    tr[s].prompt = some_tokens(lens[s], V, 100 + s);
    e->forward(s, tr[s].prompt, row.data(), Logits::Last);
    tr[s].rows.push_back(row);
  }
  for (int s = 0; s < 3; ++s) EXPECT_EQ(e->position(s), lens[s]);

  // All three, a permutation, a subset, another subset: logits and argmax together.
  const std::vector<std::vector<int>> steps = {{0, 1, 2}, {2, 0, 1}, {1}, {2, 0}, {0, 1, 2}};
  std::mt19937 rng(7);
  for (const auto& seqs : steps) {
    std::vector<int32_t> toks;
    for (int s : seqs) {
      toks.push_back(static_cast<int32_t>(rng() % V));
      tr[s].decoded.push_back(toks.back());
    }
    std::vector<float> lg(seqs.size() * V);
    std::vector<int32_t> am(seqs.size(), -1);
    e->decode(seqs, toks, lg.data(), am.data());
    for (size_t i = 0; i < seqs.size(); ++i) {
      tr[seqs[i]].rows.emplace_back(lg.begin() + i * V, lg.begin() + (i + 1) * V);
      EXPECT_EQ(am[i], tern::argmax(lg.data() + i * V, V));
    }
  }
  for (int s = 0; s < 3; ++s) {
    SCOPED_TRACE("sequence " + std::to_string(s));
    auto want = single_sequence_rows(m, tr[s]);
    ASSERT_EQ(tr[s].rows.size(), want.size());
    for (size_t r = 0; r < want.size(); ++r) EXPECT_EQ(tr[s].rows[r], want[r]) << "row " << r;
    EXPECT_EQ(e->position(s), lens[s] + static_cast<int64_t>(tr[s].decoded.size()));
  }

  // Argmax only (no logits buffer), then neither: both still advance the sequences.
  std::vector<int> seqs = {1, 0, 2};
  std::vector<int32_t> toks = {3, 4, 5}, am(3, -1);
  e->decode(seqs, toks, nullptr, am.data());
  for (size_t i = 0; i < seqs.size(); ++i) {
    Trace t = tr[seqs[i]];
    t.decoded.push_back(toks[i]);
    auto want = single_sequence_rows(m, t).back();
    EXPECT_EQ(am[i], tern::argmax(want.data(), V)) << "sequence " << seqs[i];
  }
  e->decode(seqs, toks, nullptr, nullptr);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(e->position(s), lens[s] + static_cast<int64_t>(tr[s].decoded.size()) + 2);
  // An empty step is a no-op.
  e->decode({}, {}, nullptr, nullptr);
  EXPECT_EQ(e->position(1), lens[1] + static_cast<int64_t>(tr[1].decoded.size()) + 2);
}

// Positions of every sequence, to check that a failed call moved none.
std::vector<int64_t> positions(const Engine& e) {
  std::vector<int64_t> p;
  for (int s = 0; s < e.n_seq(); ++s) p.push_back(e.position(s));
  return p;
}

TEST(MultiSeq, BadCallsThrowAndAdvanceNothing) {
  Model m = small_model();
  const int64_t V = m.config.vocab;
  auto e = engine(m, 3, 8);
  std::vector<float> lg(3 * V);
  const auto p0 = some_tokens(3, V, 1), p1 = some_tokens(8, V, 2);
  e->forward(0, p0, nullptr, Logits::None);
  e->forward(1, p1, nullptr, Logits::None);  // sequence 1 is full
  const std::vector<int64_t> before = {3, 8, 0};
  ASSERT_EQ(positions(*e), before);

  const std::vector<int32_t> one = {1}, two = {1, 2};
  std::string msg = test::error_of([&] { e->forward(3, one, lg.data(), Logits::Last); });
  EXPECT_NE(msg.find("sequence 3"), std::string::npos) << msg;
  EXPECT_NE(test::error_of([&] { e->forward(-1, one, lg.data(), Logits::Last); }), "");
  EXPECT_NE(test::error_of([&] { e->forward(1, one, lg.data(), Logits::Last); }).find("context"), std::string::npos);
  EXPECT_NE(test::error_of([&] { e->position(3); }), "");
  EXPECT_NE(test::error_of([&] { e->reset(3); }), "");
  EXPECT_NE(test::error_of([&] { e->truncate(-1, 0); }), "");

  const std::vector<int32_t> in_vocab = {1, 2}, bad_token = {1, static_cast<int32_t>(V)};
  struct Case {
    std::vector<int> seqs;
    std::vector<int32_t> toks;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {{0, 3}, in_vocab, "sequence 3"},         // out of range
      {{-1, 0}, in_vocab, "sequence -1"},       // negative
      {{2, 2}, in_vocab, "more than once"},     // duplicate
      {{0, 2}, one, "2 sequences but 1 tokens"},  // size mismatch
      {{0}, two, "1 sequences but 2 tokens"},
      {{0, 2}, bad_token, "vocabulary"},        // the second token is out of range
      {{0, 2, 1}, {1, 2, 3}, "context length"},  // sequence 1 is full, checked last
  };
  for (const Case& c : cases) {
    msg = test::error_of([&] { e->decode(c.seqs, c.toks, lg.data(), nullptr); });
    EXPECT_NE(msg.find(c.needle), std::string::npos) << "'" << c.needle << "' not in '" << msg << "'";
    EXPECT_EQ(positions(*e), before) << c.needle;
  }

  // The caches are intact: sequence 0 continues exactly like a fresh engine.
  auto ref = engine(m, 1, 8);
  std::vector<float> want(V), got(V);
  ref->forward(p0, nullptr, Logits::None);
  ref->forward(one, want.data(), Logits::Last);
  e->decode(std::vector<int>{0}, one, got.data(), nullptr);
  EXPECT_EQ(got, want);
}

TEST(MultiSeq, ResetAndTruncateTouchOneSequence) {
  Model m = small_model();
  const int64_t V = m.config.vocab;
  auto e = engine(m, 3, 16);
  const auto a = some_tokens(6, V, 3), b = some_tokens(4, V, 4), c = some_tokens(5, V, 5);
  e->forward(0, a, nullptr, Logits::None);
  e->forward(1, b, nullptr, Logits::None);
  e->forward(2, c, nullptr, Logits::None);
  e->reset(1);
  e->truncate(2, 2);
  e->truncate(0, 100);  // past the end: no-op
  EXPECT_EQ(positions(*e), (std::vector<int64_t>{6, 0, 2}));

  // Sequence 0 untouched; 1 starts over; 2 continues from its first two tokens.
  const std::vector<int32_t> next = {7};
  auto last = [&](std::vector<int32_t> toks) {
    auto r = engine(m, 1, 16);
    std::vector<float> out(V);
    r->forward(toks, out.data(), Logits::Last);
    return out;
  };
  std::vector<float> lg(3 * V);
  e->decode(std::vector<int>{0, 1, 2}, std::vector<int32_t>{7, 7, 7}, lg.data(), nullptr);
  std::vector<int32_t> a7 = a, c7 = {c[0], c[1]};
  a7.push_back(7), c7.push_back(7);
  // Prefill of all tokens vs cache + one decoded token: equal to rounding, not bitwise.
  EXPECT_LT(test::rel_l2(lg.data(), last(a7).data(), V), 1e-5);
  EXPECT_EQ(std::vector<float>(lg.begin() + V, lg.begin() + 2 * V), last(next));
  EXPECT_LT(test::rel_l2(lg.data() + 2 * V, last(c7).data(), V), 1e-5);
}

TEST(MultiSeq, SequenceZeroWrappersAndOptions) {
  Model m = small_model();
  auto e = engine(m, 2, 8);
  const std::vector<int32_t> t = {1, 2};
  e->forward(t, nullptr, Logits::None);
  EXPECT_EQ(e->position(), 2);
  EXPECT_EQ(e->position(0), 2);
  EXPECT_EQ(e->position(1), 0);
  e->truncate(1);
  EXPECT_EQ(e->position(0), 1);
  e->reset();
  EXPECT_EQ(e->position(0), 0);
  EXPECT_NE(test::error_of([&] { engine(m, 0, 8); }).find("sequence"), std::string::npos);
}

TEST(MultiSeq, DecodeShapeChecks) {
  const std::vector<int32_t> none;
  EXPECT_EQ(test::error_of([&] { check_decode_shape(1, {}, none); }), "");
  const std::vector<int> s = {0, 1};
  const std::vector<int32_t> t = {5, 6};
  EXPECT_EQ(test::error_of([&] { check_decode_shape(2, s, t); }), "");
  EXPECT_NE(test::error_of([&] { check_decode_shape(1, s, t); }).find("sequence 1"), std::string::npos);
  const std::vector<int> dup = {1, 1};
  EXPECT_NE(test::error_of([&] { check_decode_shape(2, dup, t); }).find("more than once"), std::string::npos);
}

TEST(MultiSeq, ArgmaxFirstMaxAndNanNeverWins) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  auto am = [](std::vector<float> v) { return tern::argmax(v.data(), static_cast<int64_t>(v.size())); };
  EXPECT_EQ(am({1, 3, 3, 2}), 1);
  EXPECT_EQ(am({nan, 1, 2}), 2);
  EXPECT_EQ(am({nan, -inf, nan}), 1);
  EXPECT_EQ(am({-2, nan, -1, nan}), 2);
  EXPECT_EQ(am({5, nan, 5}), 0);
  EXPECT_EQ(am({nan, nan}), 0);
  EXPECT_EQ(am({-inf, -inf}), 0);
  EXPECT_EQ(am({0, inf, inf}), 1);
  EXPECT_EQ(am({7}), 0);
}

}  // namespace
}  // namespace tern
