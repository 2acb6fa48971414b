// CUDA implementations of the public entries of kernels/attention.h
// (kernels/cuda/attention.cu), referenced by the dispatcher in CUDA builds
// only.
// Arguments arrive with shapes, strides and pointers already validated by the
// public entry; values that live in device memory (ids, slots, positions,
// block tables, per-row parameters) are this implementation's to check.
// Every pointer is a device pointer; `stream` is the cudaStream_t to queue on.
//
// PagedAttention validates positions, sequence ids and block-table entries on
// the device without synchronising: a query whose table points outside the
// cache gets a NaN output row (nothing is read out of place); WriteKv skips
// tokens whose slot is out of range. PrefillAttention and PagedAttention share
// their per-query arithmetic (the SIMT kernel body, or for bf16 K/V with
// head_dim 64/128 the tensor-core block step of attention_tc.h), so a query's
// bits are the same on both paths. Limits:
// head_dim <= 256 and at most 16 query heads per KV head (INVALID_ARGUMENT).
#ifndef LOCKSTEP_KERNELS_CUDA_ATTENTION_H_
#define LOCKSTEP_KERNELS_CUDA_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention.h"

namespace lockstep::kernels::cuda {

absl::Status WriteKv(const KvWriteArgs& args, void* stream);

absl::Status PagedAttention(const PagedAttentionArgs& args, void* stream);

absl::Status PrefillAttention(const PrefillAttentionArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_ATTENTION_H_
