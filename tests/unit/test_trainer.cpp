// The training loop (train/trainer.h) on a synthetic tiny model: with --optimizer sgd,
// weight decay 0, a constant schedule, no clipping and no dropout, one step moves every
// LoRA parameter by exactly -lr * grad, where grad is the mean-token gradient of the
// batch computed independently with train/lora_model.h.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset.h"
#include "train/lora_adapter.h"
#include "train/lora_model.h"
#include "train/trainer.h"

namespace tern {
namespace {

namespace fs = std::filesystem;

TEST(Trainer, SgdStepIsExactlyMinusLrTimesGrad) {
  Model m = synth_model(parse_shape("tiny"), 3);
  ASSERT_FALSE(m.tokenizer.empty());
  const std::string dir = testing::TempDir() + "/tern_trainer_sgd";
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream f(dir + "/data.jsonl");
    f << "{\"instruction\": \"Say hello\", \"output\": \"hello hello\"}\n"
      << "{\"text\": \"some plain text to model\"}\n"
      << "{\"instruction\": \"Count\", \"input\": \"to three\", \"output\": \"one two three\"}\n";
  }
  LoraAdapter init = random_lora_adapter(m.config, 4, 8.0f, {Proj::Q, Proj::V, Proj::Down}, 7, 0.05f);
  save_peft_adapter(init, dir + "/init", "synth");

  TrainConfig cfg;
  cfg.data = dir + "/data.jsonl";
  cfg.out_dir = dir + "/out";
  cfg.init_adapter = dir + "/init";
  cfg.optimizer.kind = OptimizerKind::Sgd;
  cfg.schedule = LrSchedule::Constant;
  cfg.lr = 0.1;
  cfg.max_grad_norm = 0;
  cfg.dropout = 0;
  cfg.batch_size = 3;
  cfg.max_steps = 1;
  cfg.threads = 2;
  train_lora(m, cfg, [](const StepMetrics&) {});
  const LoraAdapter after = load_peft_adapter(cfg.out_dir, m.config);

  // The same batch (same batcher settings), the same per-row gradients summed in row order.
  Tokenizer tok(m.tokenizer);
  DatasetOptions dopt;
  dopt.max_len = cfg.max_len;
  const auto examples = load_dataset(cfg.data, tok, m.tokenizer, dopt);
  Batcher batcher(examples, BatcherOptions{cfg.batch_size, cfg.seed, true, false, pad_token_for(m.tokenizer)});
  const Batch b = batcher.next();
  const auto p = train::lora_set_from<float>(init);
  auto g = train::zeros_like(p);
  for (int64_t r = 0; r < b.rows; ++r) {
    auto gr = train::zeros_like(p);
    train::lora_loss_and_grad<float>(m, p, b.tokens.data() + r * b.seq_len, b.labels.data() + r * b.seq_len, b.lengths[r],
                                     b.trained_tokens, {}, &gr);
    for (size_t l = 0; l < g.A.size(); ++l) {
      for (int pr = 0; pr < kProjCount; ++pr) {
        for (size_t i = 0; i < g.A[l][pr].size(); ++i) g.A[l][pr][i] += gr.A[l][pr][i];
        for (size_t i = 0; i < g.B[l][pr].size(); ++i) g.B[l][pr][i] += gr.B[l][pr][i];
      }
    }
  }
  const float lr = 0.1f;
  int64_t checked = 0, moved = 0;
  for (size_t l = 0; l < init.layers.size(); ++l) {
    for (int pr = 0; pr < kProjCount; ++pr) {
      if (!init.layers[l][pr]) continue;
      for (int which = 0; which < 2; ++which) {
        const auto& before = which ? init.layers[l][pr]->B : init.layers[l][pr]->A;
        const auto& got = which ? after.layers[l][pr]->B : after.layers[l][pr]->A;
        const auto& grad = which ? g.B[l][pr] : g.A[l][pr];
        for (size_t i = 0; i < before.size(); ++i) {
          volatile float step = lr * grad[i];  // two roundings, no fma
          const float want = before[i] - step;
          ASSERT_EQ(got[i], want) << "layer " << l << " " << proj_name(static_cast<Proj>(pr)) << (which ? " B" : " A") << "[" << i << "]";
          ++checked;
          moved += got[i] != before[i];
        }
      }
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_GT(moved, checked / 2) << "the step should move most parameters";
}

}  // namespace
}  // namespace tern
