// A fixed pool of worker threads for data-parallel loops. parallel_for gives each thread
// (the caller is thread 0) one contiguous share of [0, n), which it runs front to back in
// shrinking pieces; a thread done with its share takes halves of what is left of the
// others' from their back ends. It blocks until all are done; a pool of 1 thread runs
// everything inline. Threads spin briefly for the next loop (or for the others to finish)
// before they sleep.
// No allocation per loop: the callable is passed by reference as a (context, function
// pointer) pair, not wrapped in a std::function (a lambda capturing more than two
// references would be copied to the heap; a decode step runs ~150 loops).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
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
  void run_pieces(int me, Job job, void* ctx, int64_t n, int64_t grain);  // me: 0 the caller, else the worker
  // Why contiguous shares: decode is ~150 short bandwidth-bound loops a token, and every
  // jump to a new place in memory restarts a hardware prefetch stream (~0.3 us lost per
  // piece of a streamed read in interleaved 64 KB pieces). Pieces handed out from one
  // shared counter (guided) made each thread's reads ~20 jumps a loop; a share read front
  // to back is one stream. Why stealing: a thread that finishes first idles its share of
  // the bandwidth until the other is done, and fixed halves lost ~7 % a loop to that.
  static uint64_t pack(uint64_t lo, uint64_t hi) { return lo | hi << 32; }
  // Takes units [b, e) of thread t's share: from its front (its owner) or its back.
  bool claim(int t, bool front, uint64_t& b, uint64_t& e);
  struct alignas(64) Range {
    std::atomic<uint64_t> units{0};  // [low 32 bits, high 32 bits): units not yet taken
  };
  std::unique_ptr<Range[]> ranges_;  // one per thread, a cache line each
  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  Job job_ = nullptr;
  void* job_ctx_ = nullptr;
  int64_t job_n_ = 0, job_grain_ = 1;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace tern
