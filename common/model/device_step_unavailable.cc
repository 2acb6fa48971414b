// Builds whose LibTorch has no CUDA: no device-resident step (a CUDA Model
// cannot be created there anyway).
#include "common/model/device_step.h"

namespace lockstep::common {

absl::Status ReleaseCachedDeviceMemory(kernels::Device device) {
  if (device == kernels::Device::kCuda) {
    return absl::FailedPreconditionError("this build's LibTorch has no CUDA");
  }
  return absl::OkStatus();
}

absl::StatusOr<DeviceMemory> DeviceMemoryInfo(kernels::Device device) {
  if (device == kernels::Device::kCuda) {
    return absl::FailedPreconditionError("this build's LibTorch has no CUDA");
  }
  return DeviceMemory();
}

absl::StatusOr<std::unique_ptr<DeviceStep>> DeviceStep::Create(DeviceStepOptions) {
  return absl::UnimplementedError("this build's LibTorch has no CUDA: no device-resident step");
}

}  // namespace lockstep::common
