// CUDA implementations of the public entries of kernels/activation.h
// (kernels/cuda/activation.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_ACTIVATION_H_
#define LOCKSTEP_KERNELS_CUDA_ACTIVATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/activation.h"

namespace lockstep::kernels::cuda {

absl::Status SiluMul(const SiluMulArgs& args, void* stream);

absl::Status RoundRowsToBF16(float* x, int64_t ld, int64_t rows, int64_t n,
                             void* stream);

absl::Status AddInPlace(float* y, int64_t ldy, const float* x, int64_t ldx,
                        int64_t rows, int64_t n, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_ACTIVATION_H_
