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

// One row of RmsNorm: y [n] = the contract's norm of x [n] with weight [n]
// of `weight_dtype` (kF32 or kBF16); y may equal x. The arithmetic of
// RmsNorm above, so fused kernels (kernels/cpu/fused.cc) share its bits.
void RmsNormRow(const float* x, const void* weight, DType weight_dtype, float* y,
                int64_t n, float eps);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_RMS_NORM_H_
