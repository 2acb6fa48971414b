// CUDA implementations of the public entries of kernels/rope.h
// (kernels/cuda/rope.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
//
// A negative position (checked on the device, without synchronising) gives
// NaN in that token's rotated pairs.
#ifndef LOCKSTEP_KERNELS_CUDA_ROPE_H_
#define LOCKSTEP_KERNELS_CUDA_ROPE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/rope.h"

namespace lockstep::kernels::cuda {

absl::Status ApplyRope(const RopeArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_ROPE_H_
