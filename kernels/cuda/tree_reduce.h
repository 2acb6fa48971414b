// CUDA implementations of the public entries of kernels/tree_reduce.h,
// referenced by the dispatcher in CUDA builds only. Arguments arrive
// validated; every pointer is a device pointer; `stream` is the cudaStream_t
// to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_TREE_REDUCE_H_
#define LOCKSTEP_KERNELS_CUDA_TREE_REDUCE_H_

#include "absl/status/status.h"
#include "kernels/tree_reduce.h"

namespace lockstep::kernels::cuda {

absl::Status TreeMatmulPartial(const TreeMatmulArgs& args, void* stream);

absl::Status TreeCombine(const TreeCombineArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_TREE_REDUCE_H_
