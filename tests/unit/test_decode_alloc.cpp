// The CPU engine's decode path allocates nothing (issue 6): after the first steps have
// sized every buffer, decoding a token touches no heap, in the calling thread or in the
// pool's workers. This test binary replaces the global operator new / delete with
// counting versions (malloc / free underneath); they count only while `counting` is on.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "model/model.h"
#include "runtime/engine.h"
#include "train/lora_adapter.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace tern {
namespace {

// The model's F16 embedding widened to F32 (the other head path).
void widen_head(Model& m) {
  const FloatMatrix& e = m.embedding;
  auto f = std::make_shared<std::vector<float>>(static_cast<size_t>(e.rows * e.cols));
  for (int64_t r = 0; r < e.rows; ++r) e.row_to_f32(r, f->data() + r * e.cols);
  m.embedding = {FloatType::F32, e.rows, e.cols, f->data(), f};
}

long decode_allocations(const Model& m, int threads, LmHead head, bool lora) {
  EngineOptions eo;
  eo.threads = threads;
  eo.ctx = 64;
  eo.lm_head = head;
  if (lora) {
    eo.loras.push_back({std::make_shared<LoraAdapter>(random_lora_adapter(m.config, 4, 8.0f, {Proj::Q, Proj::O, Proj::Down}, 3, 0.1f)), 1.0f});
  }
  auto e = make_cpu_engine(m, eo);
  const int64_t V = m.config.vocab;
  std::vector<float> logits(V);
  const std::vector<int32_t> prompt = {1, 5, 9, 2, 7, 3, 11};
  e->forward(prompt, logits.data(), Logits::Last);
  const int seq[1] = {0};
  int32_t tok[1] = {4}, best[1] = {0};
  // Warm-up: one step of each kind sizes the one-token buffers.
  e->decode(seq, tok, logits.data(), nullptr);
  e->decode(seq, tok, nullptr, best);
  e->forward(std::span<const int32_t>(tok, 1), logits.data(), Logits::Last);
  allocations.store(0);
  counting.store(true);
  for (int i = 0; i < 6; ++i) {
    e->decode(seq, tok, logits.data(), nullptr);
    e->decode(seq, tok, nullptr, best);
    tok[0] = best[0];
    e->forward(std::span<const int32_t>(tok, 1), logits.data(), Logits::Last);
  }
  counting.store(false);
  return allocations.load();
}

TEST(DecodeAlloc, CpuDecodeAllocatesNothing) {
  Model f16 = synth_model(parse_shape("256,512,2,4,2,300"), 5);
  Model f32 = synth_model(parse_shape("256,512,2,4,2,300"), 5);
  widen_head(f32);
  for (int threads : {1, 2, 3}) {
    EXPECT_EQ(decode_allocations(f16, threads, LmHead::Exact, false), 0) << "F16 head, threads " << threads;
    EXPECT_EQ(decode_allocations(f32, threads, LmHead::Exact, false), 0) << "F32 head, threads " << threads;
    EXPECT_EQ(decode_allocations(f16, threads, LmHead::Int8, false), 0) << "int8 head, threads " << threads;
    EXPECT_EQ(decode_allocations(f16, threads, LmHead::Exact, true), 0) << "LoRA, threads " << threads;
  }
}

// The counter itself works (a test that could not fail would prove nothing).
TEST(DecodeAlloc, CounterSeesAllocations) {
  allocations.store(0);
  counting.store(true);
  auto* v = new std::vector<int>(100);
  counting.store(false);
  delete v;
  EXPECT_GE(allocations.load(), 2);
}

}  // namespace
}  // namespace tern
