// CUDA implementations of the public entries of kernels/fused.h
// (kernels/cuda/fused.cu), referenced by the dispatcher in CUDA builds only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry. Every pointer is a device pointer; `stream` is the
// cudaStream_t to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_FUSED_H_
#define LOCKSTEP_KERNELS_CUDA_FUSED_H_

#include "absl/status/status.h"
#include "kernels/fused.h"

namespace lockstep::kernels::cuda {

absl::Status AddRmsNorm(const AddRmsNormArgs& args, void* stream);
absl::Status HeadNormRope(const HeadNormRopeArgs& args, void* stream);
absl::Status SiluMulRound(const SiluMulRoundArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_FUSED_H_
