#include "kernels/cpu/threading.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace lockstep::kernels {
namespace {

constexpr int kMaxThreads = 256;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

int InitialNumThreads() {
  if (const char* env = std::getenv("LOCKSTEP_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 1) {
      return static_cast<int>(std::min<long>(v, kMaxThreads));
    }
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(std::min<unsigned>(hw, kMaxThreads));
}

// 0 until first use so the environment is read after main() starts.
std::atomic<int> g_num_threads{0};

// Set on pool workers for their whole life and on a caller while it runs its
// share of a job, so that a ParallelFor issued from inside `fn` runs inline
// instead of waiting for workers that are busy running its parent.
thread_local bool t_in_parallel = false;

// A persistent pool. One job at a time: a caller that finds another job in
// flight (another application thread, e.g. a tensor-parallel rank, is using
// the pool) runs its own work inline rather than queueing behind it, which
// keeps latency bounded and can never deadlock.
class Pool {
 public:
  // Runs `fn` over `chunks` chunks using the pool; false if the pool is busy.
  bool TryRun(int64_t n, int64_t grain, int chunks,
              const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> dispatch(dispatch_mu_, std::try_to_lock);
    if (!dispatch.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // A new worker must treat the job being published now as unseen even
      // if it first runs after this caller has moved on to a later job.
      const uint64_t before = generation_.load(std::memory_order_relaxed);
      while (static_cast<int>(workers_.size()) < chunks - 1) {
        try {
          workers_.emplace_back([this, before] { WorkerLoop(before); });
        } catch (const std::system_error&) {
          break;  // out of threads: the caller claims the remaining chunks
        }
      }
      fn_ = &fn;
      n_ = n;
      grain_ = grain;
      grains_ = (n + grain - 1) / grain;
      chunks_ = chunks;
#if defined(__x86_64__) || defined(__i386__)
      mxcsr_ = _mm_getcsr();
#endif
      next_chunk_.store(0, std::memory_order_relaxed);
      done_chunks_.store(0, std::memory_order_relaxed);
      open_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();

    t_in_parallel = true;
    RunChunks();
    t_in_parallel = false;

    // Chunks are claimed dynamically, so the caller has already done every
    // chunk no worker picked up; what remains is finishing chunks only.
    for (int spins = 0;
         done_chunks_.load(std::memory_order_acquire) < chunks; ++spins) {
      if (spins < 1 << 14) {
        CpuRelax();
      } else {
        std::this_thread::yield();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = false;
    }
    // Workers that joined this job may still be on their way out of
    // RunChunks(); the job fields must not change under them.
    while (active_.load(std::memory_order_acquire) != 0) {
      std::this_thread::yield();
    }
    return true;
  }

 private:
  void RunChunks() {
    for (;;) {
      const int c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks_) break;
      const int64_t g0 = grains_ * c / chunks_;
      const int64_t g1 = grains_ * (c + 1) / chunks_;
      const int64_t begin = g0 * grain_;
      const int64_t end = std::min(n_, g1 * grain_);
      if (begin < end) (*fn_)(begin, end);
      done_chunks_.fetch_add(1, std::memory_order_release);
    }
  }

  void WorkerLoop(uint64_t seen) {
    t_in_parallel = true;
    for (;;) {
      // Kernels of one forward pass follow each other within microseconds;
      // a short spin avoids a futex wake-up per kernel.
      for (int i = 0; i < kSpinIterations &&
                      generation_.load(std::memory_order_acquire) == seen;
           ++i) {
        CpuRelax();
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return generation_.load(std::memory_order_acquire) != seen;
      });
      seen = generation_.load(std::memory_order_acquire);
      if (!open_) continue;
      active_.fetch_add(1, std::memory_order_acq_rel);
#if defined(__x86_64__) || defined(__i386__)
      // Denormal handling (FTZ/DAZ) is per thread; a chunk must round exactly
      // as it would on the calling thread, or the bits would depend on which
      // thread ran it.
      _mm_setcsr(mxcsr_);
#endif
      lock.unlock();
      RunChunks();
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  static constexpr int kSpinIterations = 4096;

  std::mutex dispatch_mu_;  // held by the caller whose job is in flight
  std::mutex mu_;           // guards workers_, open_ and the job fields
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  bool open_ = false;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  int64_t grains_ = 0;
  int chunks_ = 0;
  unsigned mxcsr_ = 0;
  std::atomic<int> next_chunk_{0};
  std::atomic<int> done_chunks_{0};
  std::atomic<int> active_{0};
};

Pool& GlobalPool() {
  // Leaked on purpose: workers block on its condition variable until the
  // process exits, and no static destructor may run under them.
  static Pool* pool = new Pool();
  return *pool;
}

}  // namespace

int NumThreads() {
  int n = g_num_threads.load(std::memory_order_acquire);
  if (n == 0) {
    int expected = 0;
    g_num_threads.compare_exchange_strong(expected, InitialNumThreads(),
                                          std::memory_order_acq_rel);
    n = g_num_threads.load(std::memory_order_acquire);
  }
  return n;
}

void SetNumThreads(int n) {
  g_num_threads.store(std::clamp(n, 1, kMaxThreads),
                      std::memory_order_release);
}

void ParallelFor(int64_t n, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t grains = (n + grain - 1) / grain;
  const int chunks =
      static_cast<int>(std::min<int64_t>(NumThreads(), grains));
  if (chunks <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  if (!GlobalPool().TryRun(n, grain, chunks, fn)) fn(0, n);
}

}  // namespace lockstep::kernels
