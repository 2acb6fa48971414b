// Kernel timing shared by the CUDA kernel benchmarks (gemm_cuda_bench,
// attention_cuda_bench): each contender is timed over L rotated input sets,
// by default as ONE CUDA graph of L launches (launch i reads set i), so that
// launch overhead is amortised and small problems measure the kernel, and
// the sets together exceed the L2 (no launch reads a cached input).
//
// Method, Timing::kGraph: the contender is launched once eagerly (cuBLAS
// handles, shared-memory opt-ins, SDPA's first call), captured as one graph
// of L launches on the current (pool) stream, replayed twice to warm up;
// each Sample() is one replay timed with CUDA events, divided by L.
// Timing::kEager (the older method, kept for comparison): each Sample() is
// one launch timed alone with CUDA events (3 warm-ups), which at small sizes
// includes the launch gap.
#ifndef LOCKSTEP_BENCH_LAUNCH_TIMER_H_
#define LOCKSTEP_BENCH_LAUNCH_TIMER_H_

#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace at::cuda {
class CUDAGraph;
}  // namespace at::cuda

namespace lockstep::bench {

enum class Timing { kGraph, kEager };

// The process's timing method (--timing=graph|eager; graph by default).
Timing& TimingMode();

// One line naming the method, with `reps` timed samples per contender.
std::string TimingDescription(int reps);

// The current CUDA stream (a pool stream set by the bench's main: capture
// needs a non-default stream).
cudaStream_t Stream();

// Input sets (= launches per graph) so that sets of `set_bytes` each
// together exceed 3x the 50 MB L2: between 8 and 64.
int LaunchCount(double set_bytes);

// Queues one launch of a contender on Stream(), reading input set i.
using Launch = std::function<void(int)>;

// Times one contender by TimingMode() on Stream(). May throw what the
// launch throws (LibTorch peers); capture is always ended first.
class LaunchTimer {
 public:
  // Runs launch(0) eagerly; in graph mode then captures launch(0..launches-1)
  // into one graph. Then runs the warm-up samples.
  LaunchTimer(Launch launch, int launches);
  ~LaunchTimer();
  LaunchTimer(const LaunchTimer&) = delete;
  LaunchTimer& operator=(const LaunchTimer&) = delete;

  // One timed sample: microseconds per launch.
  double Sample();

 private:
  void Capture();

  Launch launch_;
  int launches_;
  std::unique_ptr<at::cuda::CUDAGraph> graph_;  // null in eager mode
  int next_set_ = 0;                            // eager mode
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

// Median microseconds per launch of each timer over `reps` samples, the
// timers' samples interleaved.
std::vector<double> MedianUs(const std::vector<LaunchTimer*>& timers, int reps);

// Device-to-device copy bandwidth (bytes read + written per second) of a
// 1 GiB cudaMemcpyAsync, always timed eagerly (a graph's memcpy node is
// slower than the eager copy).
double MeasureCopyBandwidth();

// Runs fn() and returns the first line of what it threw ("" when nothing),
// clearing a pending CUDA error.
std::string Guarded(const std::function<void()>& fn);

// Takes --quick and --timing=graph|eager out of argv (the rest go to Google
// Benchmark); false, with a message, on an unknown --timing value.
bool ParseTimingFlags(int& argc, char** argv, bool& quick);

}  // namespace lockstep::bench

#endif  // LOCKSTEP_BENCH_LAUNCH_TIMER_H_
