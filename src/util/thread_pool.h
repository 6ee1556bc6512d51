// A fixed pool of worker threads for data-parallel loops. parallel_for splits [0, n)
// into kPartsPerThread contiguous parts per thread, which the threads (the caller
// among them) take in turn from a shared counter, and blocks until all are done; a pool
// of 1 thread runs everything inline. Threads spin briefly for the next loop (or for the
// others to finish) before they sleep.
// No allocation per loop: the callable is passed by reference as a (context, function
// pointer) pair, not wrapped in a std::function (a lambda capturing more than two
// references would be copied to the heap; a decode step runs ~500 loops).
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
  void run_parts(Job job, void* ctx, int64_t n, int64_t grain);
  // Parts per thread and loop. With one half per thread, decode on 2 vCPUs lost ~7 % of
  // each loop to the half that finished later (per-loop timers: loop wall time against
  // each thread's busy time; 16 parts a thread left ~3.5 %). Decode is bandwidth-bound,
  // so the tail cost about half that: 1 vs 4 parts alternated on one binary gave a median
  // tg64 ratio of 1.13 (means +4 %, a noisy VM); prefill unchanged; 3 and 16 parts alike.
  static constexpr int kPartsPerThread = 4;
  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  Job job_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_n_ = 0, job_grain_ = 1;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> next_part_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace tern
