// CUDA implementations of the public entries of kernels/sampling.h
// (kernels/cuda/sampling.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (per-row parameters,
// targets, adjustment offsets and entries) are this implementation's to
// check. Every pointer is a device pointer; `stream` is the cudaStream_t to
// queue on.
//
// Sample gives every row the bits of tokens_out, logprobs_out and
// last_kept_out that kernels/cpu/sampling.cc gives it (both use
// kernels/sampling_math.h; this library is built with -fmad=false), alone or
// in any batch.
//
// Device-resident values are read back and checked exactly as the CPU checks
// them (the same INVALID_ARGUMENT, before anything is written; the stream is
// synchronised for it) unless the stream is being captured into a graph.
// Under capture a row with a bad value gets token -1, logprob NaN and
// last_kept -1 (a bad adjustment token is never used as an index); the other
// rows are unaffected. Adjustment tokens of a row must be distinct and
// ascending (checked with the rest; under capture, duplicates give an
// unspecified row).
#ifndef LOCKSTEP_KERNELS_CUDA_SAMPLING_H_
#define LOCKSTEP_KERNELS_CUDA_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace lockstep::kernels::cuda {

// Steps 1-8 of kernels/sampling.h for args.rows rows. With adjustments,
// args.workspace ([rows, vocab] fp32, device) receives the adjusted rows.
absl::Status Sample(const SampleArgs& args, void* stream);

// tokens_out [rows] = lowest index of the maximum of each row of logits
// [rows, ld] (NaN never wins unless the whole row is NaN: then 0).
absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out, void* stream);

// out [count] (device) = PhiloxUniform(key, position, i) for i in
// [0, count), computed by the device's Philox (the arithmetic Sample uses).
// For the CPU-equality test.
absl::Status PhiloxUniformDevice(uint64_t key, int64_t position, int64_t count,
                                 double* out, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_SAMPLING_H_
