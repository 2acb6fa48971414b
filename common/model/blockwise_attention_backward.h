// The training backward of causal prefill attention without its [heads, T,
// T] matrices (issue 17 §2): the forward keeps q, k, v only, and the
// backward recomputes one block of query rows at a time — for rows [q0, q1)
// the scores against keys [0, q1) only (causal) — and applies attention's
// gradient formulas to it, as FlashAttention-2's backward does: S = (scale
// Q) Kᵀ (masked), P = softmax(S), dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP −
// rowsum(dO ∘ P V)), dQ = scale · dS K, dK += scale · dSᵀ Q. The query heads that share
// a KV head are one batch of the GEMMs (no repeated K or V), the block's
// tensors are updated in place, and no autograd graph is built. Transient
// memory O(heads × block × T) in the backward, nothing of size T² kept
// between forward and backward. The GEMMs are LibTorch's (cuBLAS on CUDA:
// deterministic, TF32 where the learner allows it).
//
// The values are the reference attention's gradients (reference::Attention
// back-propagated by autograd) up to fp32 rounding: the same formulas in a
// different association (the scale on Q and on dQ, dK; the softmax row term
// from O; dK and dV summed block by block), not bitwise.
#ifndef LOCKSTEP_COMMON_MODEL_BLOCKWISE_ATTENTION_BACKWARD_H_
#define LOCKSTEP_COMMON_MODEL_BLOCKWISE_ATTENTION_BACKWARD_H_

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace lockstep::common {

// Query rows per recomputed block on the CPU: the backward's transient
// scores and probabilities are [q_heads, kAttentionBackwardBlockRows, <= T]
// fp32.
inline constexpr int64_t kAttentionBackwardBlockRows = 256;
// On CUDA the blocks are as tall as fit this many bytes per
// [q_heads, block, T] fp32 tensor (a few live at once): each block costs
// ~20 kernel launches whatever its height, and launches, not bytes, bound
// the backward at 4k tokens on an H200.
inline constexpr int64_t kAttentionBackwardBlockBytesCuda = int64_t{1} << 30;

// ... but at least this many blocks where the rows allow it: the blocks'
// causal staircase skips the keys a block cannot see (4 blocks compute 5/8
// of the [T, T] square).
inline constexpr int64_t kAttentionBackwardMinBlocks = 4;

// The block height for `rows` query rows of `q_heads` heads on `device`:
// kAttentionBackwardBlockRows on the CPU; on CUDA the largest multiple of it
// whose [q_heads, block, rows] fp32 tensor fits
// kAttentionBackwardBlockBytesCuda, capped at the multiple that still makes
// kAttentionBackwardMinBlocks blocks (at least kAttentionBackwardBlockRows).
int64_t AttentionBackwardBlockRows(int64_t q_heads, int64_t rows, const torch::Device& device);

// Returns `value` (the causal attention of one whole sequence, q [T, Hq*D],
// k/v [T, Hkv*D] float32, computed elsewhere: the invariant kernel; its
// bits are returned unchanged) differentiable in q, k, v with the blockwise
// backward (BlockwiseAttentionGradient) in blocks of `block_rows` (0:
// AttentionBackwardBlockRows). Saves q, k, v only. Without grad mode or an
// input requiring grad, returns `value`.
torch::Tensor WithBlockwiseAttentionBackward(torch::Tensor value, const torch::Tensor& q,
                                             const torch::Tensor& k, const torch::Tensor& v,
                                             int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                             int64_t block_rows = 0);

// The gradients {dQ [T, Hq*D], dK, dV [T, Hkv*D]} of reference::Attention
// (causal, positions 0..T-1) at q, k, v for the output gradient grad_out
// [T, Hq*D], computed `block_rows` query rows at a time; undefined for an
// input whose `wanted` entry is false. q_heads a multiple of kv_heads
// (grouped-query attention).
std::vector<torch::Tensor> BlockwiseAttentionGradient(const torch::Tensor& q,
                                                      const torch::Tensor& k,
                                                      const torch::Tensor& v,
                                                      const std::vector<bool>& wanted,
                                                      const torch::Tensor& grad_out,
                                                      int64_t q_heads, int64_t kv_heads,
                                                      int64_t head_dim, int64_t block_rows);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_BLOCKWISE_ATTENTION_BACKWARD_H_
