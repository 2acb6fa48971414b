// CreateCudaBackend of builds without the CUDA kernels (LOCKSTEP_CUDA=OFF):
// the harness's CUDA tests skip.
#include "tests/kernels/backend_ops_backend.h"

namespace lockstep::kernels::backend_ops {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend() {
  return absl::UnavailableError(
      "this build has no CUDA kernels (configure with -DLOCKSTEP_CUDA=ON)");
}

}  // namespace lockstep::kernels::backend_ops
