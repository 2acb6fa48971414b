// CUDA implementations of the public entries of kernels/sampling.h
// (kernels/cuda/sampling.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
//
// Device-resident parameters are read back and checked (INVALID_ARGUMENT, as
// on the CPU) unless the stream is being captured into a graph; under capture
// a row with bad parameters gets token -1. Top-p masses are exact integers
// (2^-40 resolution), see sampling.cu.
#ifndef LOCKSTEP_KERNELS_CUDA_SAMPLING_H_
#define LOCKSTEP_KERNELS_CUDA_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace lockstep::kernels::cuda {

absl::Status Sample(const SampleArgs& args, void* stream);

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out, void* stream);

// out[i] = PhiloxUniform(seed, position, i) for i in [0, count), computed by
// the device's Philox (the one Sample uses). For the CPU-equality test.
absl::Status PhiloxUniformDevice(uint64_t seed, int64_t position,
                                 int64_t count, float* out, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_SAMPLING_H_
