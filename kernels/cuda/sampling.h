// CUDA implementations of the public entries of kernels/sampling.h
// (kernels/cuda/sampling.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
#ifndef LOCKSTEP_KERNELS_CUDA_SAMPLING_H_
#define LOCKSTEP_KERNELS_CUDA_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace lockstep::kernels::cuda {

absl::Status Sample(const SampleArgs& args, void* stream);

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_SAMPLING_H_
