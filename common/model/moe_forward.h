// The MLP of a decoder layer, dense (SwiGLU) or sparse (Qwen3-MoE: a router
// and top-k experts), written against Ops (torch_ops.h) like the rest of
// rank_forward.h.
//
// Sparse layer, per token t with Linear input x_t [H]:
//   logits_t = S(x_t · routerᵀ)                       [E]
//   (w_t, ids_t) = Ops::RouteTopK(logits_t, k, norm_topk_prob)
//   y_{t,r} = S(SwiGLU_{ids_t[r]}(x_t))               [H], r = 0..k-1
//   out_t = c_0 + c_1 + ... + c_{k-1},  c_r = S(y_{t,r} * w_t[r])
// (float32 adds in rank order; S the bf16 storage cast of bf16 models).
// Every expert GEMM runs on the rows routed to that expert; the invariant
// GEMM's rows do not depend on how many rows it is given or where a row sits
// among them, so a token's output depends on its own x_t alone — the batch,
// the other tokens' routing and the expert's group size never enter (the
// grouped expert GEMM's invariance, by construction). The k contributions
// are combined by rank, never by arrival.
#ifndef LOCKSTEP_COMMON_MODEL_MOE_FORWARD_H_
#define LOCKSTEP_COMMON_MODEL_MOE_FORWARD_H_

#include <vector>

#include <torch/torch.h>

#include "common/formats/model_config.h"
#include "common/model/communicator.h"
#include "common/model/moe_routing.h"
#include "common/model/rank_forward.h"
#include "common/model/torch_ops.h"

namespace lockstep::common {

// The dense MLP: down(S(SiluMul(S(gate(x)), S(up(x))))) for x [T, H] (a
// Linear input); returns float32 [T, H], not yet rounded (the next residual
// add rounds it).
torch::Tensor SwiGluMlp(const ModelConfig& config, const MlpWeights& mlp, Ops& ops,
                        const torch::Tensor& x, Communicator* comm);

// The sparse MLP of `layer` (lw.router and lw.experts set) for x [T, H], as
// in the header comment; float32 [T, H]. When `routing` is non-null, appends
// this layer's logits and ids. Every rank of `comm` routes identically (the
// router is replicated), so the row-parallel collectives line up.
torch::Tensor SparseMlp(const ModelConfig& config, const LayerWeights& lw, Ops& ops,
                        const torch::Tensor& x, Communicator* comm,
                        std::vector<MoeRouting>* routing);

// transformers' load-balancing loss (load_balancing_loss_func) over the
// routing of every sparse layer of one forward, tokens of all layers
// pooled: E * sum_e f_e * P_e, f_e the fraction of the k choices per rank
// that went to expert e (averaged over ranks), P_e the mean router
// probability of e. Differentiable in the logits; 0-d float32. `routing`
// must not be empty.
torch::Tensor LoadBalancingLoss(const std::vector<MoeRouting>& routing, int64_t num_experts);

// Process-wide counts of the sparse layers run since start-up (all models),
// for benchmarks' rooflines: which expert weights a step actually read.
struct MoeCounters {
  int64_t layer_calls = 0;     // SparseMlp calls
  int64_t experts_touched = 0;  // sum over calls of experts with >= 1 token
  int64_t routed_rows = 0;      // sum over calls of tokens * k
};
MoeCounters ReadMoeCounters();

// Per expert (ascending), the flat (token * k + rank) positions routed to it,
// ascending, from ids int64 [T, k] (any device; read on the host).
std::vector<std::vector<int64_t>> PositionsByExpert(const torch::Tensor& ids,
                                                    int64_t num_experts);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_MOE_FORWARD_H_
