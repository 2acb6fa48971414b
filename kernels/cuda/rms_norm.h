// CUDA implementations of the public entries of kernels/rms_norm.h
// (kernels/cuda/rms_norm.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_RMS_NORM_H_
#define LOCKSTEP_KERNELS_CUDA_RMS_NORM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/rms_norm.h"

namespace lockstep::kernels::cuda {

absl::Status RmsNorm(const RmsNormArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_RMS_NORM_H_
