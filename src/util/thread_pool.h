// A fixed pool of worker threads for data-parallel loops. parallel_for hands out [0, n)
// in shrinking pieces (guided self-scheduling: each take is a 1 / (2 x threads) share of
// what is left, at least one grain) from a shared counter to the threads, the caller among
// them, and blocks until all are done; a pool of 1 thread runs everything inline. Threads
// spin briefly for the next loop (or for the others to finish) before they sleep.
// No allocation per loop: the callable is passed by reference as a (context, function
// pointer) pair, not wrapped in a std::function (a lambda capturing more than two
// references would be copied to the heap; a decode step runs ~150 loops).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>

namespace tern {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // <= 0: hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // Inside fn: which of the pool's threads runs it, 0 .. size() - 1 (0: the caller of
  // parallel_for, and any thread outside a pool). For per-thread scratch: with parts taken
  // in turn, a thread cannot know from (begin, end) which buffer is its own.
  static int thread_index();
  // fn(begin, end) over disjoint chunks covering [0, n), on any thread, in any order.
  // Chunks are multiples of `grain` (except the last) so callers can keep SIMD-friendly
  // boundaries.
  template <class F>
  void parallel_for(int64_t n, F&& fn, int64_t grain = 1) {
    using Fn = std::remove_reference_t<F>;
    run(n, grain, [](void* f, int64_t b, int64_t e) { (*static_cast<Fn*>(f))(b, e); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using Job = void (*)(void*, int64_t, int64_t);
  void run(int64_t n, int64_t grain, Job job, void* ctx);
  void worker(int index);
  void run_pieces(Job job, void* ctx, int64_t n, int64_t grain);
  // Why shrinking pieces: decode is ~150 short bandwidth-bound loops a token, and a thread
  // that finishes first idles its share of the bandwidth until the other is done. Halves
  // lost ~7 % a loop to that (per-loop timers), four fixed parts a thread ~3.5 %; guided
  // pieces end within about one grain of each other for ~2 log(n) takes a loop.
  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  Job job_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_n_ = 0, job_grain_ = 1;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int64_t> next_unit_{0};  // grains of the current loop handed out
  std::atomic<bool> stop_{false};
};

}  // namespace tern
