#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "tern/error.h"

namespace tern {

void validate(const SamplingParams& p) {
  // Written as !(ok) so that NaN fails too.
  if (!(p.temp >= 0)) fail("--temp must be >= 0, got {}", p.temp);
  if (p.top_k < 0) fail("--top-k must be >= 0 (0 = off), got {}", p.top_k);
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("--top-p must be in (0, 1], got {}", p.top_p);
  if (!(p.min_p >= 0 && p.min_p <= 1)) fail("--min-p must be in [0, 1], got {}", p.min_p);
  if (!(p.repeat_penalty > 0)) fail("--repeat-penalty must be > 0, got {}", p.repeat_penalty);
  if (p.repeat_last_n < -1) {
    fail("--repeat-last-n must be >= -1 (-1 = whole history), got {}", p.repeat_last_n);
  }
}

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kNoToken = std::numeric_limits<int32_t>::max();  // ends penalized_

// Up to this k, top-k keeps a heap while scanning the logits (almost every token is
// rejected by one comparison); beyond it, nth_element over all candidates is cheaper.
constexpr size_t kHeapTopK = 1024;
// Up to this many candidates, top-p simply sorts them.
constexpr size_t kSortTopP = 4096;
// Top-p histogram: bins of width kRange / kBins below the maximum logit; the last bin
// also takes everything further down (weights under e^-40 of the maximum).
constexpr int kBins = 1024;
constexpr double kRange = 40.0;

// A strict total order (higher logit first, then lower id) so that heaps, nth_element
// and sort give the same order on every standard library, which keeps draws portable.
struct Better {
  template <class C>
  bool operator()(const C& a, const C& b) const {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  }
};

uint64_t random_seed() {
  std::random_device rd;  // 32 bits a call
  return (static_cast<uint64_t>(rd()) << 32) | rd();
}

// Histogram bin of a candidate `below` = max_logit - logit (>= 0) below the maximum.
int bin_of(double below) {
  const double b = below * (kBins / kRange);
  return b >= kBins - 1 ? kBins - 1 : static_cast<int>(b);
}

// Makes v[0, m) the m best of v in Better order, given that v[0, sorted) already is:
// only the new part is selected (nth_element) and sorted.
template <class C>
void sort_prefix(std::vector<C>& v, size_t& sorted, size_t m) {
  m = std::min(m, v.size());
  if (m <= sorted) return;
  auto first = v.begin() + static_cast<ptrdiff_t>(sorted);
  auto mid = v.begin() + static_cast<ptrdiff_t>(m);
  if (mid != v.end()) std::nth_element(first, mid, v.end(), Better{});
  std::sort(first, mid, Better{});
  sorted = m;
}

}  // namespace

Sampler::Sampler(const SamplingParams& p, int64_t vocab)
    : p_(p), vocab_(vocab), seed_(p.seed_set ? p.seed : random_seed()), rng_(seed_) {
  validate(p_);
  if (vocab_ <= 0 || vocab_ >= kNoToken) {
    fail("sampler: vocab size must be in [1, 2^31 - 1), got {}", vocab_);
  }
  const auto n = static_cast<size_t>(vocab_);
  cand_.reserve(n);
  edge_.reserve(n);
  weight_.reserve(n);
  bin_mass_.resize(kBins);
  penalized_.reserve(static_cast<size_t>(std::max(p_.repeat_last_n, 0)) + 1);  // + end mark
}

int32_t Sampler::sample(const float* logits, std::span<const int32_t> history) {
  if (logits == nullptr) fail("sampler: null logits");

  // The distinct ids of the penalty window, so a token repeated in it is penalized once.
  penalized_.clear();
  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
    size_t take = history.size();
    if (p_.repeat_last_n > 0) take = std::min(take, static_cast<size_t>(p_.repeat_last_n));
    for (int32_t t : history.last(take)) {
      if (t < 0 || t >= vocab_) fail("sampler: history token {} outside vocab [0, {})", t, vocab_);
      penalized_.push_back(t);
    }
    std::sort(penalized_.begin(), penalized_.end());
    penalized_.erase(std::unique(penalized_.begin(), penalized_.end()), penalized_.end());
  }
  penalized_.push_back(kNoToken);

  if (p_.temp <= 0) return greedy(logits);

  // The chain: penalties (inside the gathers) -> top-k -> top-p -> min-p -> temp -> draw.
  const size_t k = static_cast<size_t>(p_.top_k);
  if (k > 0 && k <= kHeapTopK && k < static_cast<size_t>(vocab_)) {
    gather_top_k(logits, k);
  } else {
    gather(logits);
    if (k > 0 && k < cand_.size()) {
      sort_prefix(cand_, sorted_, k);
      cand_.resize(k);
    }
  }

  float max_logit = cand_[0].logit;
  for (const Candidate& c : cand_) max_logit = std::max(max_logit, c.logit);
  if (p_.top_p < 1.0f) {
    if (sorted_ == cand_.size() || cand_.size() <= kSortTopP) {
      top_p_min_p_sorted(max_logit);
    } else {
      top_p_min_p_histogram(max_logit);
    }
  } else if (p_.min_p > 0.0f) {
    min_p_only(max_logit);
  }
  return draw();
}

float Sampler::logit_at(const float* logits, int32_t i, const int32_t*& next) const {
  float l = logits[i];
  if (i == *next) {
    ++next;
    // CTRL rule as in llama.cpp: dividing a negative logit would raise it, so
    // non-positive logits are multiplied instead.
    l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
  }
  return l;
}

// Argmax of the penalized logits; the strict > keeps the lowest id among ties.
int32_t Sampler::greedy(const float* logits) {
  const int32_t* next = penalized_.data();
  int32_t best = -1;
  float best_logit = -kInf;
  for (int32_t i = 0; i < static_cast<int32_t>(vocab_); ++i) {
    const float l = logit_at(logits, i, next);
    if (std::isnan(l)) fail("logits contain NaN");
    if (l > best_logit) best = i, best_logit = l;
  }
  if (best < 0) fail("logits are all -inf: no token can be sampled");
  return best;
}

// All candidates in id order, penalized, -inf (impossible tokens) left out.
void Sampler::gather(const float* logits) {
  const int32_t* next = penalized_.data();
  cand_.clear();
  sorted_ = 0;
  bool has_pos_inf = false;
  for (int32_t i = 0; i < static_cast<int32_t>(vocab_); ++i) {
    const float l = logit_at(logits, i, next);
    if (std::isnan(l)) fail("logits contain NaN");
    if (l == -kInf) continue;
    has_pos_inf |= l == kInf;
    cand_.push_back({i, l});
  }
  if (cand_.empty()) fail("logits are all -inf: no token can be sampled");
  if (has_pos_inf) keep_only_pos_inf();
}

// The k best candidates (Better order), found with a heap whose top is the worst kept.
// Ids arrive in increasing order, so a logit equal to the worst kept one loses the tie.
void Sampler::gather_top_k(const float* logits, size_t k) {
  const int32_t* next = penalized_.data();
  cand_.clear();
  float worst = -kInf;  // admission bar once the heap is full
  for (int32_t i = 0; i < static_cast<int32_t>(vocab_); ++i) {
    const float l = logit_at(logits, i, next);
    if (std::isnan(l)) fail("logits contain NaN");
    if (l == -kInf) continue;
    if (cand_.size() < k) {
      cand_.push_back({i, l});
      std::push_heap(cand_.begin(), cand_.end(), Better{});
    } else if (l > worst) {
      std::pop_heap(cand_.begin(), cand_.end(), Better{});
      cand_.back() = {i, l};
      std::push_heap(cand_.begin(), cand_.end(), Better{});
    } else {
      continue;
    }
    if (cand_.size() == k) worst = cand_.front().logit;
  }
  if (cand_.empty()) fail("logits are all -inf: no token can be sampled");
  std::sort(cand_.begin(), cand_.end(), Better{});
  sorted_ = cand_.size();
  if (cand_[0].logit == kInf) keep_only_pos_inf();
}

// +inf would make the softmax NaN. Such tokens outrank everything else, so keep only
// them and let them share the probability equally.
void Sampler::keep_only_pos_inf() {
  std::erase_if(cand_, [](const Candidate& c) { return c.logit != kInf; });
  for (Candidate& c : cand_) c.logit = 0;
  sorted_ = cand_.size();  // both gathers leave them in id order: Better order for ties
}

// top-p keeps the smallest prefix (by logit) whose probability reaches top_p; min-p then
// drops tokens with p < min_p * p_max. Both use temperature-1 probabilities over the
// top-k survivors, because llama.cpp runs temperature after them. Each keeps a prefix
// of the candidates sorted by logit, so together they keep the shorter prefix.
void Sampler::top_p_min_p_sorted(float max_logit) {
  sort_prefix(cand_, sorted_, cand_.size());
  double z = 0;
  for (const Candidate& c : cand_) z += std::exp(double(c.logit) - max_logit);
  const double target = double(p_.top_p) * z;
  const double min_rel = p_.min_p > 0 ? std::log(double(p_.min_p)) : -HUGE_VAL;
  double cum = 0;
  size_t keep = 0;
  for (; keep < cand_.size(); ++keep) {
    const double rel = double(cand_[keep].logit) - max_logit;
    if (rel < min_rel) break;  // min-p: p / p_max = exp(rel) < min_p
    cum += std::exp(rel);
    if (cum >= target) {
      ++keep;  // the token that reaches top_p is part of the nucleus
      break;
    }
  }
  cand_.resize(std::max<size_t>(keep, 1));  // the best token always survives
}

// Same result as top_p_min_p_sorted without sorting the vocabulary: bin the candidates
// by logit, find the bin where the cumulative probability reaches top_p, and sort only
// that bin. Survivors end up in id order (bins above) then Better order (that bin):
// deterministic, which is all the draw needs.
void Sampler::top_p_min_p_histogram(float max_logit) {
  const double min_rel = p_.min_p > 0 ? std::log(double(p_.min_p)) : -HUGE_VAL;
  std::fill(bin_mass_.begin(), bin_mass_.end(), 0.0);
  double z = 0;  // over all top-k survivors, including those min-p drops
  for (const Candidate& c : cand_) {
    const double rel = double(c.logit) - max_logit;
    const double w = std::exp(rel);
    z += w;
    if (rel >= min_rel) bin_mass_[bin_of(-rel)] += w;
  }
  const double target = double(p_.top_p) * z;
  double cum = 0;
  int edge_bin = 0;
  for (; edge_bin < kBins && cum + bin_mass_[edge_bin] < target; ++edge_bin) {
    cum += bin_mass_[edge_bin];
  }
  if (edge_bin == kBins) {  // min-p is the tighter cut (or rounding kept everything)
    min_p_only(max_logit);
    return;
  }

  edge_.clear();
  size_t out = 0;
  for (const Candidate& c : cand_) {
    const double rel = double(c.logit) - max_logit;
    if (rel < min_rel) continue;
    const int b = bin_of(-rel);
    if (b < edge_bin) {
      cand_[out++] = c;
    } else if (b == edge_bin) {
      edge_.push_back(c);
    }
  }
  cand_.resize(out);
  sorted_ = 0;
  // The edge bin is usually small, but holds everything for a flat distribution, so
  // it too is sorted only as far as the walk gets.
  size_t edge_sorted = 0, i = 0;
  for (size_t m = 64;; m *= 4) {
    sort_prefix(edge_, edge_sorted, m);
    for (; i < edge_sorted; ++i) {
      cand_.push_back(edge_[i]);
      cum += std::exp(double(edge_[i].logit) - max_logit);
      if (cum >= target) return;
    }
    if (edge_sorted == edge_.size()) return;  // rounding: the whole bin is kept
  }
}

void Sampler::min_p_only(float max_logit) {
  if (p_.min_p <= 0) return;
  // p / p_max = exp(logit - max_logit) >= min_p, compared in the log domain.
  const double min_rel = std::log(double(p_.min_p));
  auto drop = [&](const Candidate& c) { return double(c.logit) - max_logit < min_rel; };
  // Dropped tokens are the smallest, so the sorted prefix loses only its tail.
  size_t kept_sorted = 0;
  while (kept_sorted < sorted_ && !drop(cand_[kept_sorted])) ++kept_sorted;
  std::erase_if(cand_, drop);  // keeps the order of the rest
  sorted_ = kept_sorted;
}

// Temperature, softmax and one draw. The candidate order is deterministic here, so the
// same uniform number always maps to the same token.
int32_t Sampler::draw() {
  float max_logit = cand_[0].logit;
  for (const Candidate& c : cand_) max_logit = std::max(max_logit, c.logit);
  const double inv_temp = 1.0 / p_.temp;

  weight_.resize(cand_.size());
  double sum = 0;
  for (size_t i = 0; i < cand_.size(); ++i) {
    weight_[i] = std::exp((double(cand_[i].logit) - max_logit) * inv_temp);
    sum += weight_[i];
  }

  // sum >= 1 (the maximum contributes exp(0)), and the running sum below repeats the
  // same additions, so it ends at exactly `sum` > target: the loop always returns.
  const double target = uniform01() * sum;
  double cum = 0;
  for (size_t i = 0; i < cand_.size(); ++i) {
    cum += weight_[i];
    if (cum > target) return cand_[i].id;  // strict: a zero-weight token is never picked
  }
  for (size_t i = cand_.size(); i-- > 0;) {
    if (weight_[i] > 0) return cand_[i].id;
  }
  return cand_[0].id;
}

// Uniform in [0, 1) from the top 53 bits of the engine output: exact and portable.
double Sampler::uniform01() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

}  // namespace tern
