// Built when CMake finds no NCCL: the group factory reports it.
#include "common/model/nccl_communicator.h"

namespace lockstep::common {

bool NcclBuilt() { return false; }

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateNcclGroup(int) {
  return absl::FailedPreconditionError(
      "this lockstep build has no NCCL (configure with CUDA and NCCL available)");
}

}  // namespace lockstep::common
