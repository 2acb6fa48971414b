// Differentiable full-sequence forward for training (the learner), over the
// same functional transformer the inference Model runs. In invariant mode
// every op's forward value comes from the invariant kernels (autograd
// functions whose backward uses ordinary LibTorch ops), so the values are
// bit-identical to Model::Score with the same weights.
#ifndef LOCKSTEP_COMMON_MODEL_SEQUENCE_LOGPROBS_H_
#define LOCKSTEP_COMMON_MODEL_SEQUENCE_LOGPROBS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/formats/host_tensor.h"
#include "common/model/kernel_mode.h"
#include "common/model/layer_checkpoints.h"
#include "common/model/moe_routing.h"
#include "common/formats/model_config.h"
#include "common/sampling/sampling_spec.h"

namespace lockstep::common {

// HF name -> tensor in the config's storage dtype (float32 or bfloat16, CPU
// or CUDA), possibly requiring grad (e.g. master_fp32.to(kBFloat16)).
using TorchWeights = std::map<std::string, torch::Tensor>;

// Token log-probabilities of each sequence: element i of result[s] is
// log p(seq[i+1] | seq[0..i]) for i in [prefix_lens[s]-1, len-1), as a
// float32 tensor that is differentiable w.r.t. the weights.
absl::StatusOr<std::vector<torch::Tensor>> SequenceLogprobs(
    const ModelConfig& config, const TorchWeights& weights, KernelMode mode,
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens);

// Raw and sampled-distribution logprobs of the scored tokens.
struct SequenceScores {
  std::vector<torch::Tensor> raw;      // as SequenceLogprobs
  // Per sequence: [len - prefix_len] logprobs under its SamplingSpec
  // (kernels::Sample's value, bit-identical to the rollout's; differentiable
  // through the renormalised softmax over the kept set), undefined for a
  // sequence without one.
  std::vector<torch::Tensor> sampled;
  // When asked for: per sequence [len - prefix_len] the entropy of the
  // distribution each scored token came from, softmax(logits / T) with the
  // sequence's sampling temperature (1 without a spec or at T = 0; no
  // truncation, as verl computes it), float32 and differentiable.
  std::vector<torch::Tensor> entropy;
  // With ScoreOptions::routing: every sparse layer's routing of the
  // forward's tokens (moe_routing.h), for the load-balancing loss.
  std::vector<MoeRouting> routing;
  // With ScoreOptions::checkpoint_layers: run checkpoint->Backward() after
  // the loss's backward (the layers' gradients; see layer_checkpoints.h).
  std::shared_ptr<LayerCheckpoints> checkpoint;
};

// Rows per chunk of the learner's head (ScoreOptions::head_chunk_rows): a
// chunk's transient logits and softmax are [kHeadChunkRows, vocab] fp32.
inline constexpr int64_t kHeadChunkRows = 256;

struct ScoreOptions {
  bool entropy = false;            // fill SequenceScores::entropy
  bool checkpoint_layers = false;  // activation checkpointing (one rank)
  // Fill SequenceScores::routing (mixture-of-experts models; not with
  // checkpoint_layers, whose forward keeps no graph: INVALID_ARGUMENT).
  bool routing = false;
  // The head (lm_head, then the raw and sampled logprobs and the entropy of
  // each row) runs on chunks of at most this many rows of one sequence,
  // without keeping a chunk's logits: the backward recomputes them
  // (recomputed_backward.h), so no [rows, vocab] tensor lives from the
  // forward to the backward. Chunks split rows, never the vocabulary: each
  // row's reductions are the ones the kernels compute on the full row, so
  // the values are bit-identical to an unchunked head's (and the rollout's).
  // 0: one chunk per sequence whose logits stay in the graph.
  int64_t head_chunk_rows = kHeadChunkRows;
};

// SequenceLogprobs plus, for every sequence whose `sampling` entry is not
// null (`sampling` empty or one per sequence), its sampled-distribution
// logprobs: the adjustments of each position are rebuilt from the sequence
// (common::CompletionAdjustments with the config's EOS ids).
absl::StatusOr<SequenceScores> ScoreSequences(
    const ModelConfig& config, const TorchWeights& weights, KernelMode mode,
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens,
    const std::vector<const SamplingSpec*>& sampling, const ScoreOptions& options = {});

// The sampled-distribution logprobs of `completion` under `spec` from
// logits [n, vocab] (any device, possibly requiring grad; row i predicts
// completion[i], given prompt and completion[0..i)).
absl::StatusOr<torch::Tensor> SampledTargetLogprobs(
    const torch::Tensor& logits, const SamplingSpec& spec,
    absl::Span<const int64_t> eos_ids, absl::Span<const int32_t> prompt,
    absl::Span<const int32_t> completion);

// Host tensors -> torch tensors (copies) and back.
TorchWeights ToTorch(const TensorMap& tensors);
TensorMap FromTorch(const TorchWeights& weights);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_SEQUENCE_LOGPROBS_H_
