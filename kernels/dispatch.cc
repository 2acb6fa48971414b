#include "kernels/dispatch.h"

namespace lockstep::kernels {

absl::Status CudaNotBuilt() {
  return absl::FailedPreconditionError(
      "this lockstep build has no CUDA kernels (configure with -DLOCKSTEP_CUDA=ON)");
}

bool CudaKernelsBuilt() { return LOCKSTEP_WITH_CUDA != 0; }

}  // namespace lockstep::kernels
