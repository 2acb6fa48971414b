// CPU implementation of kernels/sampling.h: steps 1-8 row by row (rows split
// over the worker pool), with the shared arithmetic of
// kernels/sampling_math.h. The kept set is found by sorting only as far as
// needed (a growing head under the strict order O), so its size never
// depends on the head size.
#ifndef LOCKSTEP_KERNELS_CPU_SAMPLING_H_
#define LOCKSTEP_KERNELS_CPU_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace lockstep::kernels::cpu {

// Sampling (or scoring of args.targets) with the contract of
// kernels/sampling.h. Shapes and pointers must already be validated by the
// public entry; parameter, adjustment and target values are checked here,
// every row before anything is written (INVALID_ARGUMENT).
absl::Status Sample(const SampleArgs& args);

// Greedy argmax: lowest index of the maximum; NaN never wins unless the whole
// row is NaN (then 0). Arguments must already be validated. Returns OK.
absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_SAMPLING_H_
