// CPU implementation of kernels/rope.h.
#ifndef LOCKSTEP_KERNELS_CPU_ROPE_H_
#define LOCKSTEP_KERNELS_CPU_ROPE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/rope.h"

namespace lockstep::kernels::cpu {

// Applies RoPE in place with the contract of kernels/rope.h, tokens split over
// the worker pool. Shapes and pointers must already be validated by the
// public entry (rotary_dim already resolved or 0 for head_dim). Checks the
// positions itself: INVALID_ARGUMENT, before anything is written, if any is
// negative.
absl::Status ApplyRope(const RopeArgs& args);

// The fp32 cos and sin [half] of position `pos` (>= 0) for inv_freq [half]
// and attention factor `scale`, as ApplyRope computes them.
void RopeCosSin(int32_t pos, const double* inv_freq, int64_t half, double scale,
                float* cos_v, float* sin_v);
// Rotates one head xh [2 * half..] in place by cos_v/sin_v [half], as
// ApplyRope does (rotary_dim = 2 * half).
void RopeRotateHead(float* xh, int64_t half, const float* cos_v, const float* sin_v);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_ROPE_H_
