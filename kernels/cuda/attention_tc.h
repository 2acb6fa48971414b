// Tensor-core attention for bf16 KV caches (kernels/cuda/attention_tc.cu):
// the CUDA path of kernels/attention.h's PrefillAttention and PagedAttention
// whenever TcAttentionApplies() holds. Which path serves a query depends only
// on (KV dtype, head_dim, query heads per KV head), never on the batch, the
// phase or the layout, so prefill, chunked prefill and decode of one query
// always run the same arithmetic.
//
// Numerics contract of this path, for a query row at position p with KV head
// g (scale = args.scale, c = scale * log2(e) rounded to fp32):
//   q is rounded to bf16 (exact for bf16 models, whose activations are bf16).
//   Keys are visited in blocks of kTcKeyBlock = 64 at absolute positions
//   [64b, 64b + 64), grouped into splits of kTcSplitKeys = 128 keys.
//   Within a block: s_j = mma.m16n8k16 bf16 dot of q and k_j, chained over
//   head_dim in 16-wide steps in index order (fp32 accumulate), keys j > p set
//   to -inf; m' = max(m, max_j s_j); alpha = 1 if m' == m else
//   2^(m c - m' c); p_j = 2^(s_j c - m' c) (ex2.approx.ftz, fma for the
//   exponent); rowsum = fixed per-row tree over the block; l = l alpha +
//   rowsum; o = o alpha, then o += bf16(p) · v via mma over 16-key steps in
//   order.
//   Each split starts from (m, l, o) = (-inf, 0, 0); splits are folded in
//   order into (M, L, O): the first non-empty split is copied, later ones
//   merged with fa = 2^(M c - M' c), fb = 2^(m c - M' c) (1 when equal),
//   L = l fb + L fa, O = o fb + O fa.  out = O / L.
// Prefill folds splits inline; PagedAttention runs one warp per (token, KV
// head, split) and folds the per-split partials in a second kernel with the
// same arithmetic, which is how decode of a long context fills the GPU at
// small batch (split-KV with one fixed split size). When tokens x KV heads
// reach half a wave of resident warps, it runs one warp per (token, KV head)
// that folds the token's splits inline instead (whole-token mode): the same
// splits, the same fold, in the same order, so the choice never changes a
// bit; it saves the partials' bytes and the second kernel at large batch.
#ifndef LOCKSTEP_KERNELS_CUDA_ATTENTION_TC_H_
#define LOCKSTEP_KERNELS_CUDA_ATTENTION_TC_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cuda {

inline constexpr int kTcKeyBlock = 64;
inline constexpr int kTcSplitKeys = 128;

// Warps of the paged kernel resident per SM (36 KB of staging each at
// head_dim 128).
inline constexpr int kPagedWarpsPerSm = 6;

// The standard mode's keys per split (PagedAttentionArgs::
// batch_dependent_splits), FlashDecoding's policy: enough (token, KV head,
// split) warps to fill `warp_slots` resident warps once, but no split
// shorter than one 64-key block and none when the batch fills the GPU
// alone. Depends on the batch, so a row's bits do too.
inline int64_t StandardSplitKeys(int64_t tokens, int64_t kv_heads, int64_t max_keys,
                                 int64_t warp_slots) {
  const int64_t blocks = (max_keys + kTcKeyBlock - 1) / kTcKeyBlock;
  const int64_t items = tokens * kv_heads;
  int64_t splits = items <= 0 ? 1 : (warp_slots + items - 1) / items;
  splits = splits < 1 ? 1 : (splits > blocks ? blocks : splits);
  const int64_t per_split = (blocks + splits - 1) / splits;
  return (per_split < 1 ? 1 : per_split) * kTcKeyBlock;
}

// True when the tensor-core path serves attention of this shape: bf16 K/V,
// head_dim 64 or 128, at most 16 query heads per KV head.
bool TcAttentionApplies(DType kv_dtype, int64_t head_dim, int64_t group);

// Same arguments and guarantees as cuda::PrefillAttention / PagedAttention;
// callers check TcAttentionApplies first.
absl::Status PrefillAttentionTc(const PrefillAttentionArgs& args, void* stream);
absl::Status PagedAttentionTc(const PagedAttentionArgs& args, void* stream);

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_ATTENTION_TC_H_
