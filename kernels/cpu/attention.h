// CPU implementation of kernels/attention.h.
//
// PrefillAttention and PagedAttention run one and the same per-query routine,
// templated only on how the row of key j is found (contiguous stride or
// page-table lookup), so the two produce equal bits by construction. Work is
// split over (query token, query head) pairs; each pair is reduced by one
// thread in the contract's order.
#ifndef LOCKSTEP_KERNELS_CPU_ATTENTION_H_
#define LOCKSTEP_KERNELS_CPU_ATTENTION_H_

#include "absl/status/status.h"
#include "kernels/attention.h"

namespace lockstep::kernels::cpu {

// Writes the rows of args.k / args.v to their slots (rounded to the cache
// dtype). Shapes and pointers must already be validated by the public entry.
// INVALID_ARGUMENT, before anything is written, if a slot is outside
// [0, num_pages * page_size). When a slot repeats, the later token wins.
absl::Status WriteKv(const KvWriteArgs& args);

// Paged attention with the contract of kernels/attention.h. Shapes and
// pointers must already be validated by the public entry. INVALID_ARGUMENT,
// before anything is written, if a seq_id is outside [0, num_seqs), a
// position is negative or reaches past max_blocks_per_seq pages, or a page id
// the query needs is outside [0, num_pages).
absl::Status PagedAttention(const PagedAttentionArgs& args);

// Causal prefill attention over one contiguous sequence. Arguments must
// already be validated. Returns OK.
absl::Status PrefillAttention(const PrefillAttentionArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_ATTENTION_H_
