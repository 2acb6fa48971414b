// CUDA implementation of the public entry of kernels/matmul.h, referenced by
// the dispatcher in CUDA builds only. Arguments arrive validated; every
// pointer is a device pointer; `stream` is the cudaStream_t to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_MATMUL_H_
#define LOCKSTEP_KERNELS_CUDA_MATMUL_H_

#include "absl/status/status.h"
#include "kernels/matmul.h"

namespace lockstep::kernels::cuda {

absl::Status Matmul(const MatmulArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_MATMUL_H_
