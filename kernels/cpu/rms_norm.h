// CPU implementation of kernels/rms_norm.h.
#ifndef LOCKSTEP_KERNELS_CPU_RMS_NORM_H_
#define LOCKSTEP_KERNELS_CPU_RMS_NORM_H_

#include "absl/status/status.h"
#include "kernels/rms_norm.h"

namespace lockstep::kernels::cpu {

// RMSNorm with the contract of kernels/rms_norm.h, rows split over the worker
// pool. `args` must already be validated by the public entry (pointers
// non-null, strides >= n); rows == 0 is a no-op. Always returns OK.
absl::Status RmsNorm(const RmsNormArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_RMS_NORM_H_
