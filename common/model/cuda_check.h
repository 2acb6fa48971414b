// The CUDA runtime calls common/ needs, behind a LibTorch- and CUDA-header-free
// interface. With kernels/dispatch.h, the only place testing
// LOCKSTEP_WITH_CUDA.
#ifndef LOCKSTEP_COMMON_MODEL_CUDA_CHECK_H_
#define LOCKSTEP_COMMON_MODEL_CUDA_CHECK_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lockstep::common {

// Number of visible CUDA devices (0 in builds without CUDA or without a GPU).
int CudaDeviceCount();

// Makes `device` the calling thread's current CUDA device (kernels launch on
// it). FAILED_PRECONDITION in builds without CUDA; INTERNAL on CUDA errors.
absl::Status SetCudaDevice(int device);

// Waits for all work queued on the current device.
absl::Status CudaSynchronize();

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_CUDA_CHECK_H_
