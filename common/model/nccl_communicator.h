// NCCL implementation of the TP communicator: one rank per GPU of this
// process (ranks run as threads, rank r on CUDA device r). The invariant
// path uses AllGather only (ncclAllGather of bytes, in rank order), so no
// reduction arithmetic happens inside NCCL; AllReduceSum (ncclAllReduce,
// ncclSum) serves standard mode. Buffers are device pointers on the rank's
// GPU and calls are queued on the legacy default stream, in order with the
// kernels and LibTorch ops of that thread. NVLink multicast (NVLS) must stay
// off: the services set NCCL_NVLS_ENABLE=0 unless the environment sets it.
#ifndef LOCKSTEP_COMMON_MODEL_NCCL_COMMUNICATOR_H_
#define LOCKSTEP_COMMON_MODEL_NCCL_COMMUNICATOR_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/communicator.h"

namespace lockstep::common {

// True when this build links NCCL.
bool NcclBuilt();

// Creates communicators for GPUs 0..size-1. FAILED_PRECONDITION without
// NCCL in the build or with fewer than `size` GPUs; INTERNAL on NCCL errors.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateNcclGroup(int size);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_NCCL_COMMUNICATOR_H_
