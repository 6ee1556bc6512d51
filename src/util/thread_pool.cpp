#include "util/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tern {

namespace {
void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// How long a thread spins for the next event before it sleeps on a condition variable.
// A decode step is ~150 short parallel loops back to back (tens of us apart): a worker
// that slept after each paid a futex wake-up per loop, and on a VM that showed up as 14 %
// of the time in the kernel. Spinning this briefly costs nothing when work is dense and
// ends in sleep when it is not. TERN_SPIN_US overrides it (0: sleep at once).
std::chrono::microseconds spin_time() {
  const char* e = std::getenv("TERN_SPIN_US");
  const int us = e != nullptr ? std::atoi(e) : 200;
  return std::chrono::microseconds(std::clamp(us, 0, 100000));
}
const std::chrono::microseconds kSpin = spin_time();

// Spins until pred() or kSpin has passed; returns pred().
template <class Pred>
bool spin_until(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return pred();
  }
}
}  // namespace

thread_local int tl_thread_index = 0;

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  ranges_.reset(new Range[n_threads_]);
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run(int64_t n, int64_t grain, Job fn, void* ctx) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || n <= grain) {
    fn(ctx, 0, n);
    return;
  }
  // Ranges count units in 32 bits: coarser units for a loop of more than 2^31 of them.
  grain *= (n / grain) / (int64_t{1} << 31) + 1;
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = fn;
    job_ctx_ = ctx;
    job_n_ = n;
    job_grain_ = grain;
    pending_.store(n_threads_ - 1);
    const uint64_t units = static_cast<uint64_t>((n + grain - 1) / grain);
    for (int t = 0; t < n_threads_; ++t) {
      ranges_[t].units.store(pack(units * t / n_threads_, units * (t + 1) / n_threads_), std::memory_order_relaxed);
    }
    generation_.fetch_add(1, std::memory_order_release);  // spinning workers see the job here
  }
  cv_start_.notify_all();  // and sleeping ones here
  run_pieces(0, fn, ctx, n, grain);
  if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [this] { return pending_.load() == 0; });
  }
  job_ = nullptr;
  job_ctx_ = nullptr;
}

bool ThreadPool::claim(int t, bool front, uint64_t& b, uint64_t& e) {
  std::atomic<uint64_t>& r = ranges_[t].units;
  uint64_t v = r.load(std::memory_order_relaxed);
  for (;;) {
    const uint64_t lo = v & 0xffffffffu, hi = v >> 32;
    if (lo >= hi) return false;
    // The owner takes a quarter of what is left (shrinking, so the last piece it holds,
    // which no one else can take, is short); a thief takes half from the back.
    const uint64_t take = std::max<uint64_t>(1, (hi - lo) / (front ? 4 : 2));
    const uint64_t next = front ? pack(lo + take, hi) : pack(lo, hi - take);
    if (r.compare_exchange_weak(v, next, std::memory_order_relaxed)) {
      b = front ? lo : hi - take;
      e = front ? lo + take : hi;
      return true;
    }
  }
}

void ThreadPool::run_pieces(int me, Job job, void* ctx, int64_t n, int64_t grain) {
  auto run_units = [&](uint64_t b, uint64_t e) { job(ctx, static_cast<int64_t>(b) * grain, std::min<int64_t>(n, static_cast<int64_t>(e) * grain)); };
  uint64_t b, e;
  while (claim(me, true, b, e)) run_units(b, e);
  for (int k = 1; k < n_threads_; ++k) {
    while (claim((me + k) % n_threads_, false, b, e)) run_units(b, e);
  }
}

int ThreadPool::thread_index() { return tl_thread_index; }

void ThreadPool::worker(int index) {
  tl_thread_index = index;
  uint64_t seen = 0;
  for (;;) {
    Job job;
    void* ctx;
    int64_t n, grain;
    if (!spin_until([&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; })) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, [&] { return stop_.load() || generation_.load() != seen; });
    }
    {
      std::lock_guard<std::mutex> lk(mu_);  // the job's fields were written under it
      if (stop_.load()) return;
      seen = generation_.load();
      job = job_;
      ctx = job_ctx_;
      n = job_n_;
      grain = job_grain_;
    }
    run_pieces(index, job, ctx, n, grain);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu_);  // a waiter that checked before the decrement is now asleep or will see 0
      cv_done_.notify_one();
    }
  }
}

}  // namespace tern
