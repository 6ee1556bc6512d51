// splitmix64: fast, seedable, reproducible on every platform; ample quality for random
// weights and adapter initialisation (model/synth.cpp, train/lora_adapter.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tern {

struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // [0, 1) from the top 24 bits (float) or 53 bits (double).
  float uniform_f() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  double uniform_d() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  // Box-Muller, one value per call.
  float normal_f() {
    const float u1 = std::max(uniform_f(), 1e-7f), u2 = uniform_f();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
  double normal_d() {
    const double u1 = std::max(uniform_d(), 1e-300), u2 = uniform_d();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace tern
