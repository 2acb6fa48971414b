// Tensor-parallel communicator. The invariant path only moves bytes
// (AllGather in rank order); reduction arithmetic happens in the kernels'
// fixed tree, never inside the collective. AllReduceSum exists for standard
// mode only.
#ifndef LOCKSTEP_COMMON_MODEL_COMMUNICATOR_H_
#define LOCKSTEP_COMMON_MODEL_COMMUNICATOR_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "kernels/device.h"

namespace lockstep::common {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Where the buffers passed to AllGather/AllReduceSum live: host memory for
  // the in-process group, the rank's GPU for NCCL.
  virtual kernels::Device device() const { return kernels::Device::kCpu; }
  // recv [size() * bytes]: rank r's `bytes` bytes of `send` land at
  // recv + r * bytes. Collective: every rank must call it.
  virtual absl::Status AllGather(const void* send, size_t bytes,
                                 void* recv) = 0;
  // data[i] = sum over ranks of data[i] (standard mode; order unspecified).
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
};

// Creates `size` communicators of one in-process group; rank r's must be used
// by one thread at a time (ranks run as threads).
std::vector<std::unique_ptr<Communicator>> CreateInProcessGroup(int size);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_COMMUNICATOR_H_
