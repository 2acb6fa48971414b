// What identifies the numerics of this build's kernels, for the learner's
// compatibility check of a rollout (learner_service/learner.cc): two binaries
// whose kernels were compiled differently (another compiler, CUDA toolkit or
// GPU arch list, another lockstep version) may round differently, so the
// learner refuses a rollout whose build id or GPU architecture is not its
// own (proto ModelInfo.kernel_build_id / gpu_architecture).
#ifndef LOCKSTEP_KERNELS_BUILD_ID_H_
#define LOCKSTEP_KERNELS_BUILD_ID_H_

#include <string>

#include "kernels/device.h"

namespace lockstep::kernels {

// A string fixed at compile time, e.g.
//   "lockstep 0.1.0; gcc 12.2.0; cuda none"
//   "lockstep 0.1.0; gcc 12.2.0; cuda 12.4 archs 900"
// (the lockstep version, the C++ compiler and its version, and in CUDA
// builds the nvcc version and the __CUDA_ARCH_LIST__ the kernels were
// compiled for). Equal for every process of one build.
const std::string& KernelBuildId();

// The architecture `device` computes on: "none" for Device::kCpu;
// "sm_<major><minor>" of the current CUDA device for Device::kCuda (e.g.
// "sm_90"), or "unknown" when it cannot be queried (no CUDA in this build,
// no visible GPU).
std::string GpuArchitecture(Device device);

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_BUILD_ID_H_
