// Built only when CMake finds NCCL (see common/CMakeLists.txt).
#include "common/model/nccl_communicator.h"

#include <cstdlib>
#include <string>

#include <cuda_runtime.h>
#include <nccl.h>

#include "absl/strings/str_cat.h"
#include "common/model/cuda_check.h"

namespace lockstep::common {
namespace {

absl::Status FromNccl(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  kernels::Device device() const override { return kernels::Device::kCuda; }

  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    return FromNccl(ncclAllGather(send, recv, bytes, ncclChar, comm_, /*stream=*/nullptr),
                    "ncclAllGather");
  }

  absl::Status AllReduceSum(float* data, size_t count) override {
    return FromNccl(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, nullptr),
                    "ncclAllReduce");
  }

 private:
  ncclComm_t comm_;
  int rank_;
  int size_;
};

}  // namespace

bool NcclBuilt() { return true; }

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateNcclGroup(int size) {
  if (size < 1) return absl::InvalidArgumentError("NCCL group size must be >= 1");
  if (CudaDeviceCount() < size) {
    return absl::FailedPreconditionError(absl::StrCat("TP size ", size, " needs ", size,
                                                      " GPUs; ", CudaDeviceCount(), " visible"));
  }
  // Never NVLink multicast (DESIGN.md §6); an explicit setting wins.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  std::vector<ncclComm_t> comms(size);
  std::vector<int> devices(size);
  for (int i = 0; i < size; ++i) devices[i] = i;
  absl::Status st = FromNccl(ncclCommInitAll(comms.data(), size, devices.data()), "ncclCommInitAll");
  if (!st.ok()) return st;
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<NcclCommunicator>(comms[r], r, size));
  return out;
}

}  // namespace lockstep::common
