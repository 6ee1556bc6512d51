#include "train/grad_engine.h"

#include <algorithm>

#include "tern/error.h"
#include "util/thread_pool.h"

namespace tern::train {

namespace {

template <class F>
void for_each_pair(LoraSet<float>& a, const LoraSet<float>& b, F f) {
  for (size_t l = 0; l < a.A.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      f(a.A[l][p], b.A[l][p]);
      f(a.B[l][p], b.B[l][p]);
    }
  }
}

// One sequence per thread (lora_loss_and_grad), each row into its own accumulator,
// summed in row order: deterministic for any thread count.
class CpuGradEngine final : public GradEngine {
 public:
  CpuGradEngine(const Model& m, int threads) : m_(m), pool_(threads) {}
  std::string name() const override { return "cpu"; }

  void set_params(const LoraSet<float>& p) override {
    params_ = p;
    if (grads_.A.size() != p.A.size()) grads_ = zeros_like(p);
  }
  void zero_grads() override {
    for_each_pair(grads_, grads_, [](std::vector<float>& a, const std::vector<float>&) { std::fill(a.begin(), a.end(), 0.0f); });
  }

  double run(const Batch& b, int64_t n_norm, float dropout, std::span<const uint64_t> seeds, bool grad) override {
    if (grad && static_cast<int64_t>(row_grads_.size()) < b.rows) row_grads_.resize(b.rows, zeros_like(params_));
    std::vector<double> losses(b.rows, 0.0);
    pool_.parallel_for(b.rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        StepOptions o;
        if (grad) {
          o.dropout = dropout;
          o.dropout_seed = seeds[r];
          zero(row_grads_[r]);
        }
        losses[r] = lora_loss_and_grad<float>(m_, params_, b.tokens.data() + r * b.seq_len, b.labels.data() + r * b.seq_len, b.lengths[r],
                                              n_norm, o, grad ? &row_grads_[r] : nullptr);
      }
    });
    double loss = 0;
    for (int64_t r = 0; r < b.rows; ++r) {
      if (grad) {
        for_each_pair(grads_, row_grads_[r], [](std::vector<float>& a, const std::vector<float>& s) {
          for (size_t i = 0; i < a.size(); ++i) a[i] += s[i];
        });
      }
      loss += losses[r];
    }
    return loss;
  }

  void get_grads(LoraSet<float>& g) override { g = grads_; }

 private:
  static void zero(LoraSet<float>& g) {
    for_each_pair(g, g, [](std::vector<float>& a, const std::vector<float>&) { std::fill(a.begin(), a.end(), 0.0f); });
  }

  const Model& m_;
  ThreadPool pool_;
  LoraSet<float> params_, grads_;
  std::vector<LoraSet<float>> row_grads_;
};

}  // namespace

double GradEngine::optimizer_step(const OptimizerOptions&, double, double, int64_t) { fail("{}: no device optimizer", name()); }
void GradEngine::get_params(LoraSet<float>&) { fail("{}: no device optimizer", name()); }
void GradEngine::get_moments(std::vector<float>&, std::vector<float>&) { fail("{}: no device optimizer", name()); }
void GradEngine::set_moments(const std::vector<float>&, const std::vector<float>&) { fail("{}: no device optimizer", name()); }

std::unique_ptr<GradEngine> make_cpu_grad_engine(const Model& m, int threads) { return std::make_unique<CpuGradEngine>(m, threads); }

#ifndef TERN_HAVE_CUDA
std::unique_ptr<GradEngine> make_cuda_grad_engine(const Model&, const LoraSet<float>&, int64_t, int64_t, bool) {
  fail("--backend cuda: this build of tern has no CUDA support");
}
#endif

}  // namespace tern::train
