// Routes a validated kernel call to its CPU or CUDA implementation. The only
// place (with common/cuda_check.h) that tests LOCKSTEP_WITH_CUDA.
#ifndef LOCKSTEP_KERNELS_DISPATCH_H_
#define LOCKSTEP_KERNELS_DISPATCH_H_

#include "absl/status/status.h"
#include "kernels/device.h"

namespace lockstep::kernels {

// Error returned when a CUDA call is asked of a build without CUDA kernels.
absl::Status CudaNotBuilt();

}  // namespace lockstep::kernels

// LOCKSTEP_DISPATCH(ctx, cpu_call, cuda_call): evaluates cpu_call for
// Device::kCpu and cuda_call for Device::kCuda (only compiled in CUDA builds).
#if LOCKSTEP_WITH_CUDA
#define LOCKSTEP_DISPATCH(ctx, cpu_call, cuda_call)                  \
  ((ctx).device == ::lockstep::kernels::Device::kCuda ? (cuda_call) \
                                                     : (cpu_call))
#else
#define LOCKSTEP_DISPATCH(ctx, cpu_call, cuda_call)                  \
  ((ctx).device == ::lockstep::kernels::Device::kCuda                \
       ? ::lockstep::kernels::CudaNotBuilt()                         \
       : (cpu_call))
#endif

#endif  // LOCKSTEP_KERNELS_DISPATCH_H_
