// The peft gradient fixture (tests/fixtures/lora, made by tools/make_lora_fixtures.py on
// the GPU machine): the tiny packed model's token ids and peft's LoRA gradients of the
// causal-LM loss, shared by the CPU and CUDA gradient tests.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "train/lora_adapter.h"
#include "train/lora_model.h"

namespace tern::test {

inline std::string lora_fixture_dir() { return std::string(TERN_FIXTURES) + "/lora"; }

// The first line of tests/fixtures/tiny/tokens.txt (comma-separated ids).
inline std::vector<int32_t> tiny_fixture_tokens() {
  std::ifstream in(std::string(TERN_FIXTURES) + "/tiny/tokens.txt");
  std::string line, part;
  std::getline(in, line);
  std::vector<int32_t> toks;
  std::stringstream ss(line);
  while (std::getline(ss, part, ',')) toks.push_back(std::stoi(part));
  return toks;
}

// Relative L2 of every gradient in g against peft's (lora/grads.safetensors); each tensor
// must have peft's name and size and, on its own, be within tensor_tol.
inline double rel_l2_vs_peft_grads(const train::LoraSet<float>& g, double tensor_tol = 1e-2) {
  const std::string file = lora_fixture_dir() + "/grads.safetensors";
  const st::Reader want = st::Reader::open_file(file);
  double num = 0, err = 0;
  for (size_t l = 0; l < g.A.size(); ++l) {
    for (int pr = 0; pr < kProjCount; ++pr) {
      for (bool b : {false, true}) {
        const auto& v = b ? g.B[l][pr] : g.A[l][pr];
        if (v.empty()) continue;
        const std::string name = peft_tensor_name(static_cast<int64_t>(l), static_cast<Proj>(pr), b);
        const st::TensorInfo& t = want.get(name, file);
        if (t.dtype != st::DType::F32 || t.n_elements() != v.size()) {
          ADD_FAILURE() << name << ": not F32 with " << v.size() << " elements";
          return 1.0;
        }
        const float* w = reinterpret_cast<const float*>(t.data);
        double tn = 0, te = 0;
        for (size_t i = 0; i < v.size(); ++i) {
          tn += double(w[i]) * w[i];
          te += (double(v[i]) - w[i]) * (double(v[i]) - w[i]);
        }
        EXPECT_LT(std::sqrt(te / std::max(tn, 1e-30)), tensor_tol) << name;
        num += tn, err += te;
      }
    }
  }
  return std::sqrt(err / std::max(num, 1e-300));
}

}  // namespace tern::test
