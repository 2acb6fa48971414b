// Activation checkpointing of the training forward (issue 17 §2): the
// decoder layers run without keeping their activations — only each layer's
// input (h, pending: two [T, H] fp32 tensors) is kept — and the backward
// recomputes one layer at a time from its input and back-propagates through
// it, top to bottom. The recomputation runs the same ops on the same values,
// so it reproduces the forward's bits, and the gradients are the ones the
// plain forward's backward computes. Memory then holds one layer's
// activations instead of every layer's (and no layer keeps [heads, T, T]
// attention scores: blockwise_attention_backward.h).
#ifndef LOCKSTEP_COMMON_MODEL_LAYER_CHECKPOINTS_H_
#define LOCKSTEP_COMMON_MODEL_LAYER_CHECKPOINTS_H_

#include <memory>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/model_config.h"
#include "common/model/kernel_mode.h"
#include "common/model/rank_forward.h"

namespace lockstep::common {

class LayerCheckpoints {
 public:
  // The full-sequence forward of `input` (seq_lens mode, one rank) with the
  // layers checkpointed, up to the final norm: returns the normed logit rows
  // [R, H] (rank_forward.h's FinalNormRows; lm_head is the caller's, e.g.
  // the learner's row-chunked head) that are differentiable with respect to
  // the final norm only; after the loss's backward,
  // Backward() carries the gradient on through the layers and the
  // embedding into the weights' .grad. INTERNAL on LibTorch errors.
  static absl::StatusOr<std::pair<torch::Tensor, std::shared_ptr<LayerCheckpoints>>> Forward(
      const ModelConfig& config, RankWeights weights, KernelMode mode, ForwardInput input);

  // Once, after the loss's backward. FAILED_PRECONDITION when called twice;
  // INTERNAL on LibTorch errors.
  absl::Status Backward();

 private:
  LayerCheckpoints() = default;

  ModelConfig config_;
  RankWeights weights_;
  std::unique_ptr<Ops> ops_;
  ForwardInput input_;
  std::vector<torch::Tensor> h_in_;        // [layer] its input h (detached)
  std::vector<torch::Tensor> pending_in_;  // [layer] its input pending (undefined for 0)
  torch::Tensor top_h_, top_pending_;      // the head's inputs: leaves requiring grad
  bool done_ = false;
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_LAYER_CHECKPOINTS_H_
