// CUDA implementations of the public entries of kernels/embedding.h
// (kernels/cuda/embedding.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
//
// Ids are read back and checked (INVALID_ARGUMENT) unless the stream is
// being captured into a CUDA graph; under capture a bad id gives a NaN row.
#ifndef LOCKSTEP_KERNELS_CUDA_EMBEDDING_H_
#define LOCKSTEP_KERNELS_CUDA_EMBEDDING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/embedding.h"

namespace lockstep::kernels::cuda {

absl::Status Embedding(const EmbeddingArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_EMBEDDING_H_
