// Per-tensor work of the weight paths (checksums, copies, checks) spread
// over a few threads: tensors are independent, so the results do not depend
// on the split.
#ifndef LOCKSTEP_COMMON_WIRE_PARALLEL_TENSORS_H_
#define LOCKSTEP_COMMON_WIRE_PARALLEL_TENSORS_H_

#include <cstddef>
#include <functional>

#include "absl/status/status.h"

namespace lockstep::common {

// Runs fn(i) for every i in [0, n) on up to min(8, hardware threads)
// threads (the caller's among them) and waits for all. Returns the error of
// the lowest i that failed (every i runs regardless), or OK.
absl::Status ForEachTensorInParallel(size_t n, const std::function<absl::Status(size_t)>& fn);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_WIRE_PARALLEL_TENSORS_H_
