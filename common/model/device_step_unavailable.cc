// Builds whose LibTorch has no CUDA: no device-resident step (a CUDA Model
// cannot be created there anyway).
#include "common/model/device_step.h"

namespace lockstep::common {

absl::StatusOr<std::unique_ptr<DeviceStep>> DeviceStep::Create(DeviceStepOptions) {
  return absl::UnimplementedError("this build's LibTorch has no CUDA: no device-resident step");
}

}  // namespace lockstep::common
