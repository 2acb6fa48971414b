// The CPU kernels' worker pool. Work is split over independent rows or
// columns, never over a reduction, so the thread count never changes bits.
#ifndef LOCKSTEP_KERNELS_CPU_THREADING_H_
#define LOCKSTEP_KERNELS_CPU_THREADING_H_

#include <cstdint>
#include <functional>

namespace lockstep::kernels {

// Threads the CPU kernels use (>= 1). Initially LOCKSTEP_NUM_THREADS if set,
// else the number of hardware threads.
int NumThreads();

// Sets the thread count for subsequent kernel calls (values < 1 mean 1).
void SetNumThreads(int n);

// Runs fn(begin, end) over [0, n) split into at most NumThreads() contiguous
// chunks whose boundaries are multiples of `grain` (except the last), and
// waits for all of them. Nested calls from inside fn run inline.
void ParallelFor(int64_t n, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& fn);

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_CPU_THREADING_H_
