// CPU implementation of kernels/softmax.h.
#ifndef LOCKSTEP_KERNELS_CPU_SOFTMAX_H_
#define LOCKSTEP_KERNELS_CPU_SOFTMAX_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/softmax.h"

namespace lockstep::kernels::cpu {

// (max, sum of expf(x - max)) of x[0..n) in index order. An empty range, or
// one whose max is -inf, gives {-inf, 0}.
SoftmaxStats LeafStats(const float* x, int64_t n);

// Combines two stats with the contract's formula. A side whose max is -inf
// contributes 0 (so two empty sides give {-inf, 0}, never NaN).
SoftmaxStats CombineStats(SoftmaxStats a, SoftmaxStats b);

// Reduces `count` (1, 2, 4 or 8) stats, the leaves of an aligned subtree, by
// the fixed tree of tree_reduce.h: adjacent pairs level by level.
SoftmaxStats TreeStats(const SoftmaxStats* leaves, int count);

// Log-softmax with the contract of kernels/softmax.h, rows split over the
// worker pool. Shapes and pointers must already be validated by the public
// entry. INVALID_ARGUMENT, before anything is written, if a target is outside
// [0, vocab).
absl::Status LogSoftmax(const LogSoftmaxArgs& args);

// A rank's subtree stats. Arguments must already be validated. Returns OK.
absl::Status SegmentStats(const SegmentStatsArgs& args);

// lse_out[i] = m + logf(z) of the tree-combined gathered[0..t) stats of row i.
// Arguments must already be validated. Returns OK.
absl::Status CombineSegmentStats(const SoftmaxStats* gathered, int t,
                                 int64_t rows, float* lse_out);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_SOFTMAX_H_
