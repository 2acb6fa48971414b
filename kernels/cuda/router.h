// CUDA implementation of kernels/router.h (kernels/cuda/router.cu), referenced
// by the dispatcher in CUDA builds only. Arguments arrive validated; every
// pointer is a device pointer; `stream` is the cudaStream_t to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_ROUTER_H_
#define LOCKSTEP_KERNELS_CUDA_ROUTER_H_

#include "absl/status/status.h"
#include "kernels/router.h"

namespace lockstep::kernels::cuda {

absl::Status RouteTopK(const RouteTopKArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_ROUTER_H_
