// CPU implementation of kernels/sampling.h.
//
// Kept set of a row with temperature T > 0. Let O be the order "logit
// descending, ties lower index first" (NaN logits last). The kept set is the
// first n entries of O, n = min(k, n_p):
//  - k = top_k when 0 < top_k < vocab, else vocab;
//  - n_p = length of the shortest prefix of O whose running fp32 sum of
//    probabilities reaches top_p (vocab if it never does; not applied when
//    top_p == 1), with probabilities softmax(x / T) over the whole vocabulary:
//    e_j = expf(x_j/T - max), summed in index order, p_j = e_j / sum.
// Probabilities never increase along O, so n_p is the prefix length of the
// order "probability descending, ties lower index first" as well; when
// probabilities tie but logits do not, the larger logit is kept first. The
// set is never empty.
#ifndef LOCKSTEP_KERNELS_CPU_SAMPLING_H_
#define LOCKSTEP_KERNELS_CPU_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace lockstep::kernels::cpu {

// The uniform that PhiloxUniform derives from one Philox output word w:
// ((w >> 9) + 0.5) * 2^-23, exact in fp32 and strictly inside (0, 1).
float UniformFromWord(uint32_t w);

// Gumbel-max sampling with the contract of kernels/sampling.h and the kept
// set above, rows split over the worker pool. Shapes and pointers must
// already be validated by the public entry. Checks every row's parameters
// first: INVALID_ARGUMENT, before anything is written, on a negative or
// non-finite temperature, top_p outside (0, 1] (or NaN) or top_k < 0.
absl::Status Sample(const SampleArgs& args);

// Greedy argmax: lowest index of the maximum; NaN never wins unless the whole
// row is NaN (then 0). Arguments must already be validated. Returns OK.
absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_SAMPLING_H_
