// Embedding gather: out[i] = table[ids[i]] widened to fp32.
#ifndef LOCKSTEP_KERNELS_EMBEDDING_H_
#define LOCKSTEP_KERNELS_EMBEDDING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace lockstep::kernels {

struct EmbeddingArgs {
  const void* table = nullptr;   // [vocab, dim], row stride ld_table
  DType table_dtype = DType::kF32;
  int64_t ld_table = 0;
  int64_t vocab = 0;
  const int32_t* ids = nullptr;  // [tokens]; INVALID_ARGUMENT if any id is
                                 // outside [0, vocab)
  float* out = nullptr;          // [tokens, dim], row stride ld_out
  int64_t ld_out = 0;
  int64_t tokens = 0;
  int64_t dim = 0;
};

absl::Status Embedding(const EmbeddingArgs& args, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_EMBEDDING_H_
