// CUDA implementations of the public entries of kernels/softmax.h
// (kernels/cuda/softmax.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
//
// Targets are read back and checked (INVALID_ARGUMENT) unless the stream is
// being captured; under capture a bad target gives a NaN target logprob.
#ifndef LOCKSTEP_KERNELS_CUDA_SOFTMAX_H_
#define LOCKSTEP_KERNELS_CUDA_SOFTMAX_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/softmax.h"

namespace lockstep::kernels::cuda {

absl::Status LogSoftmax(const LogSoftmaxArgs& args, void* stream);

absl::Status SegmentStats(const SegmentStatsArgs& args, void* stream);

absl::Status CombineSegmentStats(const SoftmaxStats* gathered, int t,
                                 int64_t rows, float* lse_out, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_SOFTMAX_H_
