// Sampler: reproducibility, each filter's guarantee on randomized logits, the chain
// order (filters see temperature-1 probabilities), repetition penalty, bad input, speed.
#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tern/error.h"

namespace tern {
namespace {

std::mt19937 rng_for_test() { return std::mt19937(std::random_device{}()); }

std::vector<float> random_logits(std::mt19937& rng, int64_t n, float scale = 3.0f) {
  std::normal_distribution<float> nd(0, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  return x;
}

SamplingParams seeded(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  p.seed_set = true;
  return p;
}

SamplingParams no_filters(uint64_t seed) {
  SamplingParams p = seeded(seed);
  p.temp = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  return p;
}

// Temperature-1 probabilities, sorted descending, as (prob, id).
std::vector<std::pair<double, int32_t>> sorted_probs(const std::vector<float>& logits) {
  double mx = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float l : logits) z += std::exp(l - mx);
  std::vector<std::pair<double, int32_t>> p;
  for (size_t i = 0; i < logits.size(); ++i) {
    p.push_back({std::exp(logits[i] - mx) / z, static_cast<int32_t>(i)});
  }
  std::sort(p.begin(), p.end(), [](auto& a, auto& b) { return a.first > b.first; });
  return p;
}

// Generates n tokens feeding each back into the history, as a decode loop does.
std::vector<int32_t> run(Sampler& s, const std::vector<float>& logits, int n) {
  std::vector<int32_t> hist;
  for (int i = 0; i < n; ++i) hist.push_back(s.sample(logits.data(), hist));
  return hist;
}

void expect_error(const SamplingParams& p, const std::string& want) {
  try {
    validate(p);
    ADD_FAILURE() << "no error, expected: " << want;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  EXPECT_THROW(Sampler(p, 10), Error);
}

TEST(Sampler, SeededRunsAreReproducible) {
  auto rng = rng_for_test();
  const auto logits = random_logits(rng, 1000, 1.0f);
  SamplingParams p = seeded(rng());
  p.repeat_penalty = 1.3f;  // history matters too
  Sampler a(p, 1000), b(p, 1000);
  EXPECT_EQ(a.seed(), p.seed);
  EXPECT_EQ(run(a, logits, 200), run(b, logits, 200));
}

TEST(Sampler, DifferentSeedsDiffer) {
  auto rng = rng_for_test();
  const auto logits = random_logits(rng, 1000, 0.5f);
  const uint64_t s = rng();
  Sampler a(no_filters(s), 1000), b(no_filters(s + 1), 1000);
  EXPECT_NE(run(a, logits, 100), run(b, logits, 100));
}

TEST(Sampler, UnsetSeedIsRandomAndReported) {
  auto rng = rng_for_test();
  const auto logits = random_logits(rng, 1000, 0.5f);
  SamplingParams p = no_filters(0);
  p.seed_set = false;
  Sampler a(p, 1000), b(p, 1000);
  EXPECT_NE(a.seed(), b.seed());
  // The reported seed reproduces the run.
  Sampler again(no_filters(a.seed()), 1000);
  EXPECT_EQ(run(a, logits, 100), run(again, logits, 100));
}

// Pins the exact output for fixed inputs: the engine, the uniform double and the
// candidate order are all portable, so this sequence must hold on every platform.
TEST(Sampler, GoldenSequence) {
  std::vector<float> logits(256);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>((i * 37) % 101) / 16.0f;
  SamplingParams p = seeded(1234);
  p.repeat_penalty = 1.1f;
  Sampler s(p, 256);
  const std::vector<int32_t> want = {117, 131, 147, 218, 90,  46,  158, 248,
                                     232, 232, 177, 161, 109, 207, 191, 161};
  EXPECT_EQ(run(s, logits, 16), want);
}

TEST(Sampler, TemperatureZeroIsArgmax) {
  auto rng = rng_for_test();
  for (int trial = 0; trial < 50; ++trial) {
    const auto logits = random_logits(rng, 5000);
    SamplingParams p = seeded(rng());
    p.temp = 0.0f;
    Sampler s(p, 5000);
    const auto want = std::max_element(logits.begin(), logits.end()) - logits.begin();
    EXPECT_EQ(s.sample(logits.data(), {}), want);
  }
  // Ties go to the lowest id.
  SamplingParams p = seeded(1);
  p.temp = 0.0f;
  Sampler s(p, 5);
  const std::vector<float> tied = {1, 3, 2, 3, 3};
  EXPECT_EQ(s.sample(tied.data(), {}), 1);
}

TEST(Sampler, TopKNeverPicksOutsideTheKLargest) {
  auto rng = rng_for_test();
  for (int k : {1, 3, 10}) {
    const auto logits = random_logits(rng, 2000, 1.0f);
    SamplingParams p = no_filters(rng());
    p.top_k = k;
    p.temp = 2.0f;  // flatten, so the tail would be drawn often without top-k
    std::set<int32_t> allowed;
    for (int i = 0; i < k; ++i) allowed.insert(sorted_probs(logits)[i].second);
    Sampler s(p, 2000);
    std::set<int32_t> seen;
    for (int i = 0; i < 3000; ++i) seen.insert(s.sample(logits.data(), {}));
    for (int32_t t : seen) EXPECT_TRUE(allowed.count(t)) << "k=" << k << " token " << t;
    EXPECT_EQ(seen.size(), allowed.size());  // and every one of them does come up
  }
}

TEST(Sampler, TopPNeverPicksOutsideTheNucleus) {
  auto rng = rng_for_test();
  for (float top_p : {0.3f, 0.8f, 0.95f}) {
    const auto logits = random_logits(rng, 300, 1.5f);
    SamplingParams p = no_filters(rng());
    p.top_p = top_p;
    p.temp = 3.0f;
    const auto probs = sorted_probs(logits);
    std::set<int32_t> nucleus;
    double cum = 0;
    for (auto [pr, id] : probs) {
      nucleus.insert(id);
      cum += pr;
      if (cum >= top_p) break;
    }
    Sampler s(p, 300);
    for (int i = 0; i < 3000; ++i) {
      const int32_t t = s.sample(logits.data(), {});
      ASSERT_TRUE(nucleus.count(t)) << "top_p=" << top_p << " token " << t;
    }
  }
}

// Big vocabularies without top-k take another path (histogram selection instead of a
// sort); it must keep exactly the same nucleus, including where the nucleus ends inside
// a tight cluster of logits.
TEST(Sampler, TopPOnALargeVocabKeepsExactlyTheNucleus) {
  auto rng = rng_for_test();
  for (float jitter : {0.5f, 0.01f}) {
    auto logits = random_logits(rng, 20000, 1.0f);
    std::uniform_real_distribution<float> ud(0, jitter);
    for (int i = 0; i < 30; ++i) logits[rng() % logits.size()] = 8.0f + ud(rng);
    for (float min_p : {0.0f, 0.99f}) {
      SamplingParams p = no_filters(rng());
      p.top_p = 0.5f;
      p.min_p = min_p;
      p.temp = 1000.0f;  // flat: every survivor is drawn often
      const auto probs = sorted_probs(logits);
      std::set<int32_t> want;
      double cum = 0;
      for (auto [pr, id] : probs) {
        if (pr < min_p * probs[0].first) break;
        want.insert(id);
        cum += pr;
        if (cum >= p.top_p) break;
      }
      Sampler s(p, 20000);
      std::set<int32_t> seen;
      for (int i = 0; i < 1500; ++i) seen.insert(s.sample(logits.data(), {}));
      EXPECT_EQ(seen, want) << "jitter " << jitter << " min_p " << min_p;
    }
  }
}

// Equal logits are ordered by id, so the nucleus of a flat distribution is the lowest
// ids, on both paths (small vocabulary: sort; large: histogram).
TEST(Sampler, TopPBreaksTiesByLowestId) {
  for (int64_t vocab : {1000, 100000}) {
    std::vector<float> flat(vocab, 0.5f);
    SamplingParams p = no_filters(3);
    p.top_p = 10.0f / vocab - 1e-7f;  // needs exactly 10 tokens
    Sampler s(p, vocab);
    std::set<int32_t> seen;
    for (int i = 0; i < 300; ++i) seen.insert(s.sample(flat.data(), {}));
    EXPECT_EQ(seen, (std::set<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})) << "vocab " << vocab;
  }
}

TEST(Sampler, MinPNeverPicksBelowTheThreshold) {
  auto rng = rng_for_test();
  for (float min_p : {0.02f, 0.1f, 0.5f}) {
    const auto logits = random_logits(rng, 300, 1.5f);
    SamplingParams p = no_filters(rng());
    p.min_p = min_p;
    p.temp = 100.0f;  // flat, so every survivor comes up
    const float mx = *std::max_element(logits.begin(), logits.end());
    std::set<int32_t> want;
    for (int32_t i = 0; i < 300; ++i) {
      if (std::exp(double(logits[i]) - mx) >= min_p) want.insert(i);
    }
    Sampler s(p, 300);
    std::set<int32_t> seen;
    for (int i = 0; i < 4000; ++i) seen.insert(s.sample(logits.data(), {}));
    EXPECT_EQ(seen, want) << "min_p=" << min_p;
  }
}

TEST(Sampler, DefaultChainStaysInsideEveryFilter) {
  auto rng = rng_for_test();
  const auto logits = random_logits(rng, 4000, 1.0f);
  SamplingParams p = seeded(rng());  // top-k 40, top-p 0.95, min-p 0.05
  p.temp = 5.0f;
  // The allowed set by the definitions: the 40 largest; of those, the nucleus of their
  // renormalized temperature-1 probabilities; of those, p >= 0.05 * p_max.
  auto probs = sorted_probs(logits);
  probs.resize(40);
  double z = 0;
  for (auto& [pr, id] : probs) z += pr;
  std::set<int32_t> allowed;
  double cum = 0;
  for (auto& [pr, id] : probs) {
    if (pr < 0.05 * probs[0].first * (1 - 1e-6)) break;
    allowed.insert(id);
    cum += pr / z;
    if (cum >= 0.95) break;
  }
  Sampler s(p, 4000);
  std::set<int32_t> seen;
  for (int i = 0; i < 5000; ++i) seen.insert(s.sample(logits.data(), {}));
  for (int32_t t : seen) EXPECT_TRUE(allowed.count(t)) << "token " << t;
  EXPECT_GT(seen.size(), 1u);
}

// llama.cpp runs temperature after top-p: the nucleus is chosen on temperature-1
// probabilities. At temp 1 the nucleus for top-p 0.6 is {0, 1}; if temperature 0.2 were
// applied first, token 0 alone (p = 0.92) would fill it and token 1 would never appear.
TEST(Sampler, FiltersSeeTemperatureOneProbabilities) {
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f};
  SamplingParams p = no_filters(7);
  p.top_p = 0.6f;
  p.temp = 0.2f;
  Sampler s(p, 3);
  int count[3] = {};
  for (int i = 0; i < 20000; ++i) ++count[s.sample(logits.data(), {})];
  EXPECT_EQ(count[2], 0);
  // Within the nucleus, temperature 0.2 applies: p1 = e^2.5 / (e^5 + e^2.5) = 0.0759.
  EXPECT_NEAR(count[1] / 20000.0, std::exp(2.5) / (std::exp(5.0) + std::exp(2.5)), 0.01);
}

TEST(Sampler, EmpiricalFrequenciesMatchSoftmax) {
  const std::vector<float> logits = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f};
  for (float temp : {1.0f, 0.5f}) {
    SamplingParams p = no_filters(42);
    p.temp = temp;
    Sampler s(p, 5);
    std::vector<double> want(5);
    double z = 0;
    for (int i = 0; i < 5; ++i) z += want[i] = std::exp(logits[i] / temp);
    const int n = 200000;
    std::vector<int> count(5);
    for (int i = 0; i < n; ++i) ++count[s.sample(logits.data(), {})];
    for (int i = 0; i < 5; ++i) {
      EXPECT_NEAR(count[i] / double(n), want[i] / z, 0.01) << "temp " << temp << " token " << i;
    }
  }
}

TEST(Sampler, RepeatPenaltyChangesGreedyChoice) {
  SamplingParams p = seeded(1);
  p.temp = 0.0f;
  p.repeat_penalty = 1.1f;
  Sampler s(p, 4);
  const std::vector<float> pos = {2.0f, 1.9f, 0.0f, -5.0f};
  EXPECT_EQ(s.sample(pos.data(), {}), 0);                       // no history: argmax
  EXPECT_EQ(s.sample(pos.data(), std::vector<int32_t>{0}), 1);  // 2.0 / 1.1 < 1.9
  // Negative logits are multiplied: -1.0 * 1.1 = -1.1 < -1.05.
  const std::vector<float> neg = {-1.0f, -1.05f, -3.0f, -5.0f};
  EXPECT_EQ(s.sample(neg.data(), {}), 0);
  EXPECT_EQ(s.sample(neg.data(), std::vector<int32_t>{0}), 1);
}

TEST(Sampler, RepeatPenaltyAppliesOncePerDistinctToken) {
  SamplingParams p = seeded(1);
  p.temp = 0.0f;
  p.repeat_penalty = 1.1f;
  Sampler s(p, 3);
  // Once: 2.0 / 1.1 = 1.82 > 1.7. Twice would give 1.65 < 1.7.
  const std::vector<float> logits = {2.0f, 1.7f, 0.0f};
  EXPECT_EQ(s.sample(logits.data(), std::vector<int32_t>{0, 0, 0, 2, 0}), 0);
}

TEST(Sampler, RepeatPenaltyWindow) {
  const std::vector<float> logits = {2.0f, 1.9f, 0.0f};
  const std::vector<int32_t> hist = {0, 2, 2};
  SamplingParams p = seeded(1);
  p.temp = 0.0f;
  p.repeat_penalty = 1.1f;
  p.repeat_last_n = 2;  // token 0 is outside the last 2
  EXPECT_EQ(Sampler(p, 3).sample(logits.data(), hist), 0);
  p.repeat_last_n = 3;
  EXPECT_EQ(Sampler(p, 3).sample(logits.data(), hist), 1);
  p.repeat_last_n = -1;  // whole history
  EXPECT_EQ(Sampler(p, 3).sample(logits.data(), hist), 1);
  p.repeat_last_n = 0;  // off
  EXPECT_EQ(Sampler(p, 3).sample(logits.data(), hist), 0);
}

TEST(Sampler, InvalidParamsThrowNamingTheFlag) {
  auto with = [](auto set) {
    SamplingParams p;
    set(p);
    return p;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  expect_error(with([](auto& p) { p.temp = -0.1f; }), "--temp must be >= 0");
  expect_error(with([&](auto& p) { p.temp = nan; }), "--temp must be >= 0");
  expect_error(with([](auto& p) { p.top_p = 0.0f; }), "--top-p must be in (0, 1]");
  expect_error(with([](auto& p) { p.top_p = 1.01f; }), "--top-p must be in (0, 1]");
  expect_error(with([](auto& p) { p.min_p = -0.01f; }), "--min-p must be in [0, 1]");
  expect_error(with([](auto& p) { p.min_p = 1.5f; }), "--min-p must be in [0, 1]");
  expect_error(with([](auto& p) { p.top_k = -1; }), "--top-k must be >= 0");
  expect_error(with([](auto& p) { p.repeat_penalty = 0.0f; }), "--repeat-penalty must be > 0");
  expect_error(with([](auto& p) { p.repeat_last_n = -2; }), "--repeat-last-n");
  EXPECT_NO_THROW(validate(SamplingParams{}));
  SamplingParams all_off = no_filters(0);
  all_off.temp = 0;
  EXPECT_NO_THROW(validate(all_off));
  EXPECT_THROW(Sampler(SamplingParams{}, 0), Error);
}

TEST(Sampler, NonFiniteLogits) {
  const float inf = std::numeric_limits<float>::infinity();
  auto rng = rng_for_test();
  // -inf tokens are never drawn, even with everything flattened.
  std::vector<float> logits(100, -inf);
  logits[17] = -50.0f;
  logits[60] = 3.0f;
  logits[99] = 0.0f;
  SamplingParams p = no_filters(rng());
  p.temp = 100.0f;
  Sampler s(p, 100);
  std::set<int32_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(s.sample(logits.data(), {}));
  EXPECT_EQ(seen, (std::set<int32_t>{17, 60, 99}));

  // +inf wins outright.
  logits[5] = inf;
  EXPECT_EQ(s.sample(logits.data(), {}), 5);
  SamplingParams g = seeded(1);
  g.temp = 0;
  EXPECT_EQ(Sampler(g, 100).sample(logits.data(), {}), 5);

  // NaN and all -inf are errors, for greedy and sampling alike.
  for (float temp : {0.0f, 1.0f}) {
    SamplingParams q = seeded(1);
    q.temp = temp;
    Sampler t(q, 100);
    std::vector<float> bad(100, 0.0f);
    bad[42] = std::numeric_limits<float>::quiet_NaN();
    try {
      t.sample(bad.data(), {});
      ADD_FAILURE() << "NaN accepted";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "logits contain NaN");
    }
    std::vector<float> none(100, -inf);
    EXPECT_THROW(t.sample(none.data(), {}), Error);
  }
}

TEST(Sampler, HistoryOutsideVocabThrows) {
  SamplingParams p = seeded(1);
  p.repeat_penalty = 1.2f;
  Sampler s(p, 10);
  std::vector<float> logits(10, 0.0f);
  EXPECT_THROW(s.sample(logits.data(), std::vector<int32_t>{3, 10}), Error);
  EXPECT_THROW(s.sample(logits.data(), std::vector<int32_t>{-1}), Error);
}

// The bound is loose so sanitizer and debug builds pass; optimized builds take well
// under 1 ms (printed for the record).
TEST(Sampler, FastOnALlama3SizedVocab) {
  auto rng = rng_for_test();
  const int64_t vocab = 128256;
  const auto logits = random_logits(rng, vocab);
  std::vector<int32_t> hist(64);
  for (auto& t : hist) t = static_cast<int32_t>(rng() % vocab);
  struct Case {
    const char* name;
    SamplingParams p;
  };
  SamplingParams def = seeded(1);
  def.repeat_penalty = 1.1f;
  SamplingParams nucleus_only = no_filters(1);  // top-p with no top-k/min-p to narrow it
  nucleus_only.top_p = 0.95f;
  SamplingParams greedy = seeded(1);
  greedy.temp = 0;
  for (const Case& c : {Case{"default", def}, Case{"top-p only", nucleus_only},
                        Case{"no filters", no_filters(1)}, Case{"greedy", greedy}}) {
    Sampler s(c.p, vocab);
    s.sample(logits.data(), hist);  // warm up
    const int n = 50;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) s.sample(logits.data(), hist);
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - t0;
    const double ms = took.count() / n;
    std::printf("  %-10s %.3f ms/token\n", c.name, ms);
    EXPECT_LT(ms, 20.0) << c.name;
  }
}

}  // namespace
}  // namespace tern
