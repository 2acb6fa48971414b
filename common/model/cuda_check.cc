#include "common/model/cuda_check.h"

#include <string>

#if LOCKSTEP_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace lockstep::common {

#if LOCKSTEP_WITH_CUDA
namespace {
absl::Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

absl::Status SetCudaDevice(int device) { return FromCuda(cudaSetDevice(device), "cudaSetDevice"); }

absl::Status CudaSynchronize() {
  return FromCuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}
#else
int CudaDeviceCount() { return 0; }

absl::Status SetCudaDevice(int) {
  return absl::FailedPreconditionError("this lockstep build has no CUDA support");
}

absl::Status CudaSynchronize() { return absl::OkStatus(); }
#endif

}  // namespace lockstep::common
