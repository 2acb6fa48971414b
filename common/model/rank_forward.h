// The functional decoder forward of one TP rank, written once against Ops
// (torch_ops.h) and shared by the inference Model (incremental, paged) and
// the learner (full sequences, differentiable).
#ifndef LOCKSTEP_COMMON_MODEL_RANK_FORWARD_H_
#define LOCKSTEP_COMMON_MODEL_RANK_FORWARD_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "common/model/communicator.h"
#include "common/model/moe_routing.h"
#include "common/formats/model_config.h"
#include "common/model/torch_ops.h"

namespace lockstep::common {

// One SwiGLU MLP (dense, or one expert of a sparse layer) on one rank:
// gate/up hold this rank's output rows [I/t, H], down its input columns
// [H, I/t]. Stacked (BuildRankWeights' stack_projections): gate_up holds
// gate's rows then up's, [2·I/t, H], and gate, up are empty.
struct MlpWeights {
  LinearWeight gate, up, down;
  LinearWeight gate_up;
};

// One decoder layer's weights as held by one rank. Column-parallel layers
// (q, k, v, gate, up) hold this rank's output rows; row-parallel ones (o,
// down) this rank's input columns. Stacked (BuildRankWeights'
// stack_projections): qkv holds q's rows, then k's, then v's,
// [(q_heads + 2·kv_heads)·D, H] with the biases likewise, and q, k, v are
// empty.
struct LayerWeights {
  torch::Tensor input_norm;  // [H]
  LinearWeight q, k, v, o;
  LinearWeight qkv;
  torch::Tensor q_norm, k_norm;  // [D], undefined without QK-norm
  torch::Tensor post_norm;       // [H]
  MlpWeights mlp;                // dense layers
  // Sparse layers (ModelConfig::IsSparseLayer): the router [E, H]
  // (replicated) and the E experts; `mlp` is then empty.
  LinearWeight router;
  std::vector<MlpWeights> experts;
};

// One rank's weights and its share of the heads and the vocabulary.
struct RankWeights {
  torch::Tensor embed;  // [V, H], replicated
  std::vector<LayerWeights> layers;
  torch::Tensor final_norm;  // [H]
  LinearWeight lm_head;      // [V/t, H]: this rank's vocabulary rows
  int64_t q_heads = 0;       // local query heads
  int64_t kv_heads = 0;      // local KV heads
  RopeTable rope;            // the model's RoPE, on this rank's device
};

// The bf16 storage cast between ops (Ops::StoreBF16 for a bf16 model, the
// identity otherwise), applied at the same points in every forward and
// mode; x is a float32 activation [rows, features].
torch::Tensor StoreActivation(const ModelConfig& config, Ops& ops, torch::Tensor x);

// The RoPE table of `config` (RopeParameters::InverseFrequencies over the
// whole head, float64) on `device`.
RopeTable MakeRopeTable(const ModelConfig& config, const torch::Device& device);

// Where BuildRankWeights takes a tensor from: the HF-named weight `name`,
// rows [begin, begin + count) of dim `dim` (dim -1: the whole tensor).
using WeightSource = std::function<absl::StatusOr<torch::Tensor>(
    const std::string& name, int64_t dim, int64_t begin, int64_t count)>;
// Turns a (sliced) matrix into a LinearWeight (device placement, packing).
using LinearMaker = std::function<absl::StatusOr<LinearWeight>(torch::Tensor w)>;

// Rank `rank` of `tp` of the model's weights, taking every tensor named by
// ExpectedTensors(config) from `source`: column-parallel layers (q, k, v,
// gate, up, lm_head) and their biases by output rows, row-parallel ones (o,
// down) by input columns, norms and the embedding whole; a rank's KV heads
// are its own slice, or the one head its query heads map to when ranks
// outnumber KV heads. `device`: where the RoPE table goes. The one place
// that maps HF weight names to the forward's weights.
// `stack_projections`: each layer's q, k, v and each MLP's (experts' too)
// gate, up become one stacked matrix of this rank's rows (LayerWeights::qkv,
// MlpWeights::gate_up), made by one make_linear call; the forward then runs
// them through Ops::StackedLinear (one GEMM each where the op set fuses) and
// the separate matrices are not kept. The inference Model stacks; the
// learner's differentiable forward does not (its parameters are the HF
// tensors themselves). Either way the forward has the same bits.
absl::StatusOr<RankWeights> BuildRankWeights(const ModelConfig& config, int rank, int tp,
                                             const WeightSource& source,
                                             const LinearMaker& make_linear,
                                             const torch::Device& device,
                                             bool stack_projections = false);

// Attention source of a forward: either whole sequences laid end to end
// (seq_lens, full-sequence prefill), or a paged step (meta + per-layer KV).
struct ForwardInput {
  torch::Tensor tokens;     // int64 [T]
  torch::Tensor positions;  // int32 [T]
  std::vector<int64_t> seq_lens;           // full mode: lengths summing to T
  const PagedAttentionMeta* paged = nullptr;  // paged mode
  std::vector<LayerKv>* kv = nullptr;         // paged mode: [layers]
  torch::Tensor logit_rows;  // int64 [R]: rows whose logits are computed
  // When set, each sparse layer appends its routing (moe_forward.h), e.g.
  // for the learner's load-balancing loss.
  std::vector<MoeRouting>* routing = nullptr;
};

// The pieces of RankForward, for forwards that run the layers one at a time
// (activation checkpointing): the embedding h [T, H] of `tokens`; decoder
// layer `layer` from (h, pending) — pending is the previous layer's MLP
// output [T, H], added to h by this layer's first norm (undefined before
// layer 0) — to the next (h, pending); the final norm and lm_head on the
// logit rows.
torch::Tensor EmbedTokens(const ModelConfig& config, const RankWeights& weights, Ops& ops,
                          const torch::Tensor& tokens);
std::pair<torch::Tensor, torch::Tensor> DecoderLayer(const ModelConfig& config,
                                                     const RankWeights& weights, size_t layer,
                                                     Ops& ops, const ForwardInput& input,
                                                     Communicator* comm, torch::Tensor h,
                                                     torch::Tensor pending);
torch::Tensor DecoderHead(const ModelConfig& config, const RankWeights& weights, Ops& ops,
                          const ForwardInput& input, Communicator* comm, const torch::Tensor& h,
                          torch::Tensor pending);
// DecoderHead in two steps: FinalNormRows, the last residual add and the
// final norm of the logit rows (the normed rows [R, H] lm_head reads, a
// Linear input), then LmHead, the logits [R, V] of such rows (float32, the
// vocabulary shards all-gathered). Both are row-wise: a subset of the rows
// gets the bits it gets among all of them.
torch::Tensor FinalNormRows(const ModelConfig& config, const RankWeights& weights, Ops& ops,
                            const ForwardInput& input, const torch::Tensor& h,
                            torch::Tensor pending);
torch::Tensor LmHead(const RankWeights& weights, Ops& ops, Communicator* comm,
                     const torch::Tensor& x);

// Runs the decoder on one rank and returns logits [R, V] (float32, full
// vocabulary on every rank: the vocabulary shards are all-gathered).
torch::Tensor RankForward(const ModelConfig& config, const RankWeights& weights,
                          Ops& ops, const ForwardInput& input, Communicator* comm);

// RankForward without lm_head: the final-normed logit rows [R, H]
// (FinalNormRows), for a head that runs on chunks of rows (the learner's,
// sequence_logprobs.h).
torch::Tensor RankForwardToFinalNorm(const ModelConfig& config, const RankWeights& weights,
                                     Ops& ops, const ForwardInput& input, Communicator* comm);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_RANK_FORWARD_H_
