// Token sampling with llama.cpp's semantics and flag names, so numbers users know from
// llama-cli mean the same here. The chain is llama.cpp's default order restricted to
// the samplers we support (common/common.h `samplers`, applied by common/sampling.cpp):
//
//   repetition penalty -> top-k -> top-p -> min-p -> temperature -> softmax -> draw
//
// top-p and min-p see the temperature-1 distribution of the top-k survivors, because
// temperature comes after them in llama.cpp's chain. temp <= 0 is greedy.
//
// Reproducible: the same seed, logits and history give the same token everywhere. The
// engine is std::mt19937_64 (its output is fixed by the standard), the uniform double
// is built from its raw output here (std::uniform_real_distribution is not portable),
// and every step that reorders candidates breaks ties by token id. The one libm call,
// std::exp on doubles, may differ in the last bit between C libraries (or CPU-specific
// variants of one); that moves a draw only if the uniform number lands within ~1e-16 of
// a boundary. No expression here is of the a * b + c form that FMA contraction alters.
//
// Speed: one pass over the logits for greedy and for top-k (a k-element heap), and
// histogram selection instead of a full sort when top-p has the whole vocabulary.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace tern {

struct SamplingParams {
  float temp = 0.8f;            // --temp; <= 0: greedy
  int top_k = 40;               // --top-k; 0: off
  float top_p = 0.95f;          // --top-p; 1: off
  float min_p = 0.05f;          // --min-p; 0: off
  float repeat_penalty = 1.0f;  // --repeat-penalty; 1: off
  int repeat_last_n = 64;       // --repeat-last-n; 0: off, -1: whole history
  uint64_t seed = 0;            // --seed
  bool seed_set = false;        // false: pick a random seed (reported by Sampler::seed())
};

// Throws tern::Error naming the offending flag.
void validate(const SamplingParams& p);

class Sampler {
 public:
  // Validates `p`; `vocab` is the length of every logits row passed to sample().
  Sampler(const SamplingParams& p, int64_t vocab);

  // Picks the next token from logits[0 .. vocab). `history` is every token so far
  // (prompt and generated); the last repeat_last_n of them are penalized. Throws
  // tern::Error if the logits contain NaN, are all -inf, or history holds an id
  // outside the vocabulary.
  int32_t sample(const float* logits, std::span<const int32_t> history);

  // The seed in use: the one given, or the random one picked when none was.
  uint64_t seed() const { return seed_; }

 private:
  struct Candidate {
    int32_t id;
    float logit;
  };

  int32_t greedy(const float* logits);
  void gather(const float* logits);
  void gather_top_k(const float* logits, size_t k);
  void keep_only_pos_inf();
  void top_p_min_p_sorted(float max_logit);
  void top_p_min_p_histogram(float max_logit);
  void min_p_only(float max_logit);
  int32_t draw();
  double uniform01();

  // The penalized logit of token i. `next` walks penalized_ (sorted) along with i, so
  // a scan in id order pays one comparison per token.
  float logit_at(const float* logits, int32_t i, const int32_t*& next) const;

  SamplingParams p_;
  int64_t vocab_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<Candidate> cand_;     // capacity vocab, reserved once, reused every call
  std::vector<Candidate> edge_;     // top-p: the candidates of the histogram bin it ends in
  std::vector<int32_t> penalized_;  // distinct ids of the penalty window, sorted
  std::vector<double> weight_;      // draw: unnormalized probabilities of cand_
  std::vector<double> bin_mass_;    // top-p: probability mass per histogram bin
  size_t sorted_ = 0;               // cand_[0, sorted_) holds the best, in Better order
};

}  // namespace tern
