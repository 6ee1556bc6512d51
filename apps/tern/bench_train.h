// `tern bench --train`: LoRA training throughput, a full optimizer step (forward,
// backward, gradient clipping, AdamW, new parameters to the device) on random tokens.
#pragma once
#include <string>

#include "model/model.h"

namespace tern::cli {

struct TrainBenchOptions {
  std::string backend = "auto";
  int64_t batch = 8, seq_len = 512;
  int rank = 16;
  std::string targets = "all";
  int reps = 3, threads = 0;
  bool tf32 = true;
  bool json = false;
};

int run_train_bench(const Model& m, const TrainBenchOptions& o);

}  // namespace tern::cli
