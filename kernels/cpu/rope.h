// CPU implementation of kernels/rope.h.
#ifndef LOCKSTEP_KERNELS_CPU_ROPE_H_
#define LOCKSTEP_KERNELS_CPU_ROPE_H_

#include "absl/status/status.h"
#include "kernels/rope.h"

namespace lockstep::kernels::cpu {

// Applies RoPE in place with the contract of kernels/rope.h, tokens split over
// the worker pool. Shapes and pointers must already be validated by the
// public entry (rotary_dim already resolved or 0 for head_dim). Checks the
// positions itself: INVALID_ARGUMENT, before anything is written, if any is
// negative.
absl::Status ApplyRope(const RopeArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_ROPE_H_
