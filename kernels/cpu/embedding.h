// CPU implementation of kernels/embedding.h.
#ifndef LOCKSTEP_KERNELS_CPU_EMBEDDING_H_
#define LOCKSTEP_KERNELS_CPU_EMBEDDING_H_

#include "absl/status/status.h"
#include "kernels/embedding.h"

namespace lockstep::kernels::cpu {

// Gathers table rows into out (bf16 widened exactly). Shapes and pointers
// must already be validated by the public entry. Checks the ids itself:
// INVALID_ARGUMENT, before anything is written, if any is outside [0, vocab).
absl::Status Embedding(const EmbeddingArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_EMBEDDING_H_
