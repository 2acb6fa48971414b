#include "common/model/layer_checkpoints.h"

#include <utility>

#include "common/model/op_error.h"

namespace lockstep::common {

absl::StatusOr<std::pair<torch::Tensor, std::shared_ptr<LayerCheckpoints>>>
LayerCheckpoints::Forward(const ModelConfig& config, RankWeights weights, KernelMode mode,
                          ForwardInput input) {
  std::shared_ptr<LayerCheckpoints> c(new LayerCheckpoints());
  c->config_ = config;
  c->weights_ = std::move(weights);
  c->ops_ = CreateOps(mode, config.dtype == kernels::DType::kBF16);
  c->input_ = std::move(input);
  torch::Tensor hidden;
  try {
    torch::Tensor h, pending;
    {
      torch::NoGradGuard no_grad;
      h = EmbedTokens(c->config_, c->weights_, *c->ops_, c->input_.tokens);
      for (size_t layer = 0; layer < c->weights_.layers.size(); ++layer) {
        // A copy: the fused no-grad kernels update h in place.
        c->h_in_.push_back(h.clone());
        c->pending_in_.push_back(pending);
        std::tie(h, pending) = DecoderLayer(c->config_, c->weights_, layer, *c->ops_, c->input_,
                                            nullptr, std::move(h), std::move(pending));
      }
    }
    c->top_h_ = h.detach().requires_grad_(true);
    if (pending.defined()) c->top_pending_ = pending.detach().requires_grad_(true);
    hidden = FinalNormRows(c->config_, c->weights_, *c->ops_, c->input_, c->top_h_,
                           c->top_pending_);
  } catch (const std::exception& e) {
    return StatusFromException(e, "checkpointed training forward failed");
  }
  return std::make_pair(std::move(hidden), std::move(c));
}

absl::Status LayerCheckpoints::Backward() {
  if (done_) return absl::FailedPreconditionError("the checkpointed backward already ran");
  done_ = true;
  try {
    // Gradients reaching the head's inputs; a leaf the loss did not reach
    // gets zeros.
    auto grad_of = [](const torch::Tensor& leaf) {
      if (!leaf.defined()) return torch::Tensor();
      return leaf.grad().defined() ? leaf.grad() : torch::zeros_like(leaf);
    };
    torch::Tensor grad_h = grad_of(top_h_);
    torch::Tensor grad_pending = grad_of(top_pending_);
    for (size_t layer = weights_.layers.size(); layer-- > 0;) {
      torch::Tensor h = h_in_[layer].detach().requires_grad_(true);
      torch::Tensor pending = pending_in_[layer].defined()
                                  ? pending_in_[layer].detach().requires_grad_(true)
                                  : torch::Tensor();
      auto [h_out, pending_out] =
          DecoderLayer(config_, weights_, layer, *ops_, input_, nullptr, h, pending);
      torch::autograd::backward({h_out, pending_out}, {grad_h, grad_pending});
      grad_h = grad_of(h);
      grad_pending = grad_of(pending);
      h_in_[layer] = torch::Tensor();  // done with this layer's input
      pending_in_[layer] = torch::Tensor();
    }
    // The embedding: h0 = Store(embed[tokens]).
    torch::Tensor h0 = EmbedTokens(config_, weights_, *ops_, input_.tokens);
    if (h0.requires_grad()) torch::autograd::backward({h0}, {grad_h});
  } catch (const std::exception& e) {
    return StatusFromException(e, "checkpointed training backward failed");
  }
  return absl::OkStatus();
}

}  // namespace lockstep::common
