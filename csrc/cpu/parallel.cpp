// mdssd::parallel_for: see parallel.h for the rule. A small pool of helper threads that sleep on
// a condition variable; a loop is a Job whose chunks are claimed from an atomic counter by the
// caller and by whichever helpers get to run. After a loop, a helper watches for the next one for
// a short while (helper_spin_ns(), 100 us) before it sleeps: waking a sleeping thread costs tens to hundreds
// of microseconds (a futex wake, and in a VM an interrupt to an idle virtual CPU), as much as a
// whole chunk of the small loops, which then gained nothing from a second thread. The caller
// never spins (parallel.h).
#include "cpu/parallel.h"

#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mdssd {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// How long a helper watches for the next loop before sleeping: about the gap between two of a
// model's consecutive small kernels; MDSSD_HELPER_SPIN_US overrides it (0: sleep at once).
int64_t helper_spin_ns() {
  static const int64_t ns = [] {
    const char* v = std::getenv("MDSSD_HELPER_SPIN_US");
    const long us = v && *v ? std::strtol(v, nullptr, 10) : 100;
    return std::clamp<int64_t>(us, 0, 100'000) * 1000;
  }();
  return ns;
}

thread_local bool t_in_loop = false;  // set while this thread runs chunks of a loop

struct Job {
  const std::function<void(int64_t, int64_t)>* fn;  // valid while unfinished chunks remain
  int64_t begin, end, chunk;
  std::atomic<int64_t> next;       // first item not yet claimed
  std::atomic<int64_t> unfinished;  // items claimed or unclaimed that are not done
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // the first exception, written under done_mutex
  std::mutex done_mutex;
  std::condition_variable done_cv;

  Job(const std::function<void(int64_t, int64_t)>* f, int64_t b, int64_t e, int64_t c)
      : fn(f), begin(b), end(e), chunk(c), next(b), unfinished(e - b) {}

  // Claims and runs chunks until none are left; returns the number of items this thread ran.
  // Only a thread that claimed a chunk touches fn, and the caller does not return before every
  // claimed chunk is done, so fn stays valid.
  int64_t work() {
    const bool was_in_loop = t_in_loop;
    t_in_loop = true;
    c10::ParallelGuard guard(true);  // at::parallel_for inside a chunk runs inline
    int64_t ran = 0;
    for (;;) {
      const int64_t lo = next.fetch_add(chunk, std::memory_order_relaxed);
      if (lo >= end) break;
      const int64_t hi = std::min(end, lo + chunk);
      ran += hi - lo;
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*fn)(lo, hi);
        } catch (...) {
          std::lock_guard<std::mutex> lock(done_mutex);
          if (!error) error = std::current_exception();
          failed.store(true, std::memory_order_relaxed);
        }
      }
      if (unfinished.fetch_sub(hi - lo, std::memory_order_acq_rel) == hi - lo) {
        std::lock_guard<std::mutex> lock(done_mutex);
        done_cv.notify_all();
      }
    }
    t_in_loop = was_in_loop;
    return ran;
  }

  void wait_done() {
    std::unique_lock<std::mutex> lock(done_mutex);
    done_cv.wait(lock, [&] { return unfinished.load(std::memory_order_acquire) == 0; });
  }
};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Back-off from late helpers. Beside another process that keeps the cores busy, the OS may
// deschedule a helper in the middle of its chunk, and the caller, done with its share, then
// waits for that chunk until the helper runs again: up to a scheduler timeslice (several ms),
// which makes a loop of 1-2 ms slower than running it on one thread (issue 12: l2norm_sum
// backward on [8,256,19,19] bfloat16 took 3.7 ms at 2 threads beside a busy neighbour against
// 1.8 ms on one). After every parallel loop the caller compares the loop's time with what it
// would have taken alone (its own time per item times the whole range); when going parallel did
// not pay, loops run on the calling thread for a back-off period, doubled on every further late
// loop (kMinBackoffNs .. kMaxBackoffNs), and then a loop probes the helpers again. A loop that
// paid halves the period, so on an idle machine loops keep their parallel speed-up, and a
// transient neighbour costs at most kMaxBackoffNs of serial loops after it has gone.
constexpr int64_t kMinBackoffNs = 5'000'000, kMaxBackoffNs = 200'000'000;

class Backoff {
 public:
  bool serial_now() const {
    const int64_t until = serial_until_ns_.load(std::memory_order_relaxed);
    return until != 0 && now_ns() < until;
  }

  // One parallel loop's outcome: `elapsed_ns` from the caller starting its share to the last
  // chunk done, `alone_ns` the caller's estimate of the whole loop on its own.
  void record(int64_t elapsed_ns, double alone_ns, int64_t end_ns) {
    int64_t backoff = backoff_ns_.load(std::memory_order_relaxed);
    if (static_cast<double>(elapsed_ns) > alone_ns) {
      backoff = std::clamp<int64_t>(2 * backoff, kMinBackoffNs, kMaxBackoffNs);
      serial_until_ns_.store(end_ns + backoff, std::memory_order_relaxed);
    } else {
      backoff = backoff / 2 < kMinBackoffNs ? 0 : backoff / 2;
    }
    backoff_ns_.store(backoff, std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t> serial_until_ns_{0};
  std::atomic<int64_t> backoff_ns_{0};
};

Backoff g_backoff;

class Pool {
 public:
  // Runs the job on the caller and up to `helpers` helper threads. Returns false, having done
  // nothing, when another caller holds the pool.
  bool run(const std::shared_ptr<Job>& job, int helpers) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(threads_.size()) < helpers) {
        const int index = static_cast<int>(threads_.size());
        threads_.emplace_back([this, index] { helper_main(index); });
        threads_.back().detach();  // the pool lives until the process exits
      }
      job_ = job;
      engaged_ = helpers;
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    wake_.notify_all();
    const int64_t start = now_ns();
    const int64_t own_items = job->work();
    const int64_t own_done = now_ns();
    job->wait_done();
    const int64_t all_done = now_ns();
    if (own_items > 0) {  // the caller's time per item, times every item: the loop alone
      const double alone = double(own_done - start) * double(job->end - job->begin) / double(own_items);
      g_backoff.record(all_done - start, alone, all_done);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_.reset();  // late helpers see no job; the shared_ptr keeps it alive for those inside
    }
    return true;
  }

 private:
  void helper_main(int index) {
    uint64_t seen = 0;
    for (;;) {
      // Watch for the next loop for a while, then sleep until it comes.
      const int64_t spin_ns = helper_spin_ns();
      if (spin_ns > 0) {
        const int64_t until = now_ns() + spin_ns;
        while (published_.load(std::memory_order_acquire) == seen && now_ns() < until) cpu_relax();
      }
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index < engaged_) job = job_;
      }
      if (job) job->work();
    }
  }

  std::mutex busy_;   // held by the one caller using the pool
  std::mutex mutex_;  // guards the fields below
  std::condition_variable wake_;
  std::vector<std::thread> threads_;
  std::shared_ptr<Job> job_;
  int engaged_ = 0;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> published_{0};  // generation_, read without the mutex by spinning helpers
};

// Leaked on purpose: helpers block in it until the process exits. A forked child (DataLoader
// workers) has none of the parent's threads, so it starts a fresh pool.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  auto* fresh = new Pool();
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *p;
}

}  // namespace

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (begin >= end) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t range = end - begin;
  const int threads = at::get_num_threads();
  const bool inline_only = range < 2 * grain || threads <= 1 || t_in_loop ||
                           at::in_parallel_region() || g_backoff.serial_now();
  if (!inline_only) {
    // Chunks of at least `grain` items; at most 64 per thread (claiming a chunk is one atomic).
    const int64_t chunk = std::max(grain, (range + 64 * threads - 1) / (64 * threads));
    const int64_t chunks = (range + chunk - 1) / chunk;
    const int helpers = static_cast<int>(std::min<int64_t>(threads, chunks)) - 1;
    auto job = std::make_shared<Job>(&fn, begin, end, chunk);
    if (pool().run(job, helpers)) {
      if (job->error) std::rethrow_exception(job->error);
      return;
    }
  }
  // Inline: a plain call, so that a nested loop (e.g. one large group of batched_nms) may still
  // go parallel on its own.
  fn(begin, end);
}

}  // namespace mdssd
