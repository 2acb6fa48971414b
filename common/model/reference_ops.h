// Ordinary LibTorch formulations of the transformer ops. They are the
// standard-mode implementation, and the graph the invariant ops' backward
// recomputes from their saved inputs when training (recomputed_backward.h).
#ifndef LOCKSTEP_COMMON_MODEL_REFERENCE_OPS_H_
#define LOCKSTEP_COMMON_MODEL_REFERENCE_OPS_H_

#include <memory>

#include <torch/torch.h>

#include "common/model/torch_ops.h"

namespace lockstep::common::reference {

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w);
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& positions,
                   int64_t heads, int64_t head_dim, const RopeTable& rope);
torch::Tensor SiluMul(const torch::Tensor& gate, const torch::Tensor& up);
// Causal attention; query i of `q` sits at position q_positions[i] and sees
// keys 0..q_positions[i] of k/v ([P, Hkv*D]).
torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k,
                        const torch::Tensor& v, const torch::Tensor& q_positions,
                        int64_t q_heads, int64_t kv_heads, int64_t head_dim);
// Rows [first_row, first_row + nq) of the causal attention of one sequence:
// q [nq, Hq*D] holds those query rows, k/v [nk, Hkv*D] the sequence's first
// nk keys (nk >= first_row + nq suffices; keys past a row are masked). Query
// i sees keys 0..first_row+i. Attention's formulation (the same ops), so a
// block of rows is a slice of the whole: the blockwise attention backward
// (blockwise_attention_backward.h) recomputes it per block.
torch::Tensor AttentionRows(const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v, int64_t first_row, int64_t q_heads,
                            int64_t kv_heads, int64_t head_dim);
torch::Tensor TargetLogprobs(const torch::Tensor& logits,
                             const torch::Tensor& targets);
// The routing weights [T, k] of the experts `ids` (int64 [T, k]) under
// router logits [T, E]: softmax, gathered, renormalised when `normalize`.
torch::Tensor RoutingWeights(const torch::Tensor& logits, const torch::Tensor& ids,
                             bool normalize);

// The standard-mode op set.
std::unique_ptr<Ops> CreateStandardOps();

// The softmax scale 1/sqrt(head_dim), rounded once to float.
float AttentionScale(int64_t head_dim);

}  // namespace lockstep::common::reference

#endif  // LOCKSTEP_COMMON_MODEL_REFERENCE_OPS_H_
