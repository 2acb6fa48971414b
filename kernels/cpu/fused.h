// CPU implementation of kernels/fused.h.
#ifndef LOCKSTEP_KERNELS_CPU_FUSED_H_
#define LOCKSTEP_KERNELS_CPU_FUSED_H_

#include "absl/status/status.h"
#include "kernels/fused.h"

namespace lockstep::kernels::cpu {

// The contracts of kernels/fused.h, rows split over the worker pool. `args`
// must already be validated by the public entry. HeadNormRope returns
// INVALID_ARGUMENT for a negative position or a bad frequency (as ApplyRope);
// the others always return OK.
absl::Status AddRmsNorm(const AddRmsNormArgs& args);
absl::Status HeadNormRope(const HeadNormRopeArgs& args);
absl::Status SiluMulRound(const SiluMulRoundArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_FUSED_H_
