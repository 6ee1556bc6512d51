// util/thread_pool: every index of every loop is run exactly once, whether the workers are
// still spinning when the next loop comes (back to back, as in decode) or have gone to
// sleep on the condition variable (a pause longer than the spin), with odd sizes and
// grains, and chunk boundaries on multiples of the grain.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "util/thread_pool.h"

namespace tern {
namespace {

void check_loops(ThreadPool& pool, int loops, std::chrono::microseconds pause) {
  for (int k = 0; k < loops; ++k) {
    const int64_t n = 1 + (k * 37) % 1000, grain = 1 + k % 7;
    std::vector<std::atomic<int>> hits(n);
    std::atomic<bool> aligned{true};
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      if (b % grain != 0) aligned = false;
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
    }, grain);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "loop " << k << " index " << i;
    EXPECT_TRUE(aligned.load()) << "loop " << k;
    if (pause.count() > 0) std::this_thread::sleep_for(pause);
  }
}

TEST(ThreadPool, EveryIndexOnceBackToBack) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    check_loops(pool, 2000, std::chrono::microseconds(0));
  }
}

TEST(ThreadPool, EveryIndexOnceAfterWorkersSleep) {
  ThreadPool pool(3);
  check_loops(pool, 20, std::chrono::milliseconds(2));  // longer than the 200 us spin
}

// thread_index(): in range, the caller's is 0, and one index is always the same thread.
TEST(ThreadPool, ThreadIndexNamesOneThreadEach) {
  ThreadPool pool(3);
  std::vector<std::atomic<std::thread::id>> owner(3);
  std::atomic<bool> ok{true};
  EXPECT_EQ(ThreadPool::thread_index(), 0);
  owner[0] = std::this_thread::get_id();
  for (int k = 0; k < 200; ++k) {
    pool.parallel_for(64, [&](int64_t, int64_t) {
      const int i = ThreadPool::thread_index();
      if (i < 0 || i >= 3) {
        ok = false;
        return;
      }
      std::thread::id none{}, me = std::this_thread::get_id();
      if (!owner[i].compare_exchange_strong(none, me) && none != me) ok = false;
    });
  }
  EXPECT_TRUE(ok.load());
}

// A thread that is done with its own share takes work from the others' back ends: here
// the caller's share (the first half) is slow, so the worker, done with the second half,
// must run some of the first.
TEST(ThreadPool, IdleThreadsTakeFromTheOthersShares) {
  ThreadPool pool(2);
  const int64_t n = 64;
  std::vector<std::atomic<int>> hits(n), who(n);
  pool.parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (i < n / 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      hits[i].fetch_add(1);
      who[i] = ThreadPool::thread_index();
    }
  });
  int stolen = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(hits[i].load(), 1) << "index " << i;
    if (i < n / 2 && who[i].load() == 1) ++stolen;
  }
  EXPECT_GT(stolen, 0) << "the worker took none of the caller's slow share";
  EXPECT_EQ(who[n / 2].load(), 1) << "the worker starts at its own share's front";
}

TEST(ThreadPool, DestroyedWhileWorkersSpinOrSleep) {
  for (int pause_us : {0, 2000}) {
    ThreadPool pool(4);
    std::atomic<int64_t> sum{0};
    pool.parallel_for(100, [&](int64_t b, int64_t e) { sum += e - b; });
    EXPECT_EQ(sum.load(), 100);
    std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
  }  // the destructor must stop and join them either way
}

}  // namespace
}  // namespace tern
