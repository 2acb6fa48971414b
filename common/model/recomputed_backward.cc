#include "common/model/recomputed_backward.h"

#include <memory>
#include <utility>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/saved_variable.h>

namespace lockstep::common {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The autograd node of WithCustomBackward: one edge per input, one input
// slot per output value.
class RecomputedNode : public Node {
 public:
  RecomputedNode(torch::autograd::edge_list&& edges, const std::vector<torch::Tensor>& inputs,
                 RecomputedGradient gradient, std::string name)
      : Node(std::move(edges)), gradient_(std::move(gradient)), name_(std::move(name)) {
    for (const torch::Tensor& t : inputs) saved_.emplace_back(t, /*is_output=*/false);
  }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(!released_, name_,
                ": the saved inputs were freed by a previous backward (retain_graph)");
    std::vector<torch::Tensor> inputs;
    std::vector<bool> wanted;
    for (size_t i = 0; i < saved_.size(); ++i) {
      inputs.push_back(saved_[i].unpack());
      wanted.push_back(task_should_compute_output(i));
    }
    bool any = false;
    for (const torch::Tensor& g : grads) any = any || g.defined();
    std::vector<torch::Tensor> out;
    if (any) out = gradient_(inputs, wanted, grads);
    out.resize(saved_.size());
    for (size_t i = 0; i < out.size(); ++i) {
      if (!wanted[i]) out[i] = torch::Tensor();
    }
    return out;
  }

  std::string name() const override { return name_; }

  void release_variables() override {
    for (SavedVariable& s : saved_) s.reset_data();
    released_ = true;
  }

 private:
  std::vector<SavedVariable> saved_;
  RecomputedGradient gradient_;
  std::string name_;
  bool released_ = false;
};

}  // namespace

std::vector<torch::Tensor> WithCustomBackward(std::vector<torch::Tensor> values,
                                              const std::vector<torch::Tensor>& inputs,
                                              RecomputedGradient gradient, std::string name) {
  if (!torch::GradMode::is_enabled() || !torch::autograd::any_variable_requires_grad(inputs)) {
    return values;
  }
  torch::autograd::edge_list edges;
  for (const torch::Tensor& t : inputs) {
    edges.push_back(t.defined() ? torch::autograd::impl::gradient_edge(t)
                                : torch::autograd::Edge());
  }
  std::shared_ptr<Node> node(
      new RecomputedNode(std::move(edges), inputs, std::move(gradient), std::move(name)),
      torch::autograd::deleteNode);
  for (torch::Tensor& v : values) {
    // A new tensor over the value's storage (same bits), so that setting its
    // history touches no other tensor.
    v = v.detach();
    torch::autograd::create_gradient_edge(v, node);
  }
  return values;
}

std::vector<torch::Tensor> WithRecomputedBackward(std::vector<torch::Tensor> values,
                                                  const std::vector<torch::Tensor>& inputs,
                                                  ReferenceForward reference, std::string name) {
  RecomputedGradient gradient = [reference = std::move(reference)](
                                    const std::vector<torch::Tensor>& in,
                                    const std::vector<bool>& wanted,
                                    const std::vector<torch::Tensor>& grads) {
    return RecomputeGradient(reference, in, wanted, grads);
  };
  return WithCustomBackward(std::move(values), inputs, std::move(gradient), std::move(name));
}

torch::Tensor WithRecomputedBackward(torch::Tensor value, const std::vector<torch::Tensor>& inputs,
                                     ReferenceForward reference, std::string name) {
  return WithRecomputedBackward(std::vector<torch::Tensor>{std::move(value)}, inputs,
                                std::move(reference), std::move(name))[0];
}

std::vector<torch::Tensor> RecomputeGradient(const ReferenceForward& reference,
                                             const std::vector<torch::Tensor>& inputs,
                                             const std::vector<bool>& wanted,
                                             const std::vector<torch::Tensor>& grad_outputs) {
  torch::AutoGradMode grad_on(true);
  std::vector<torch::Tensor> leaves;
  std::vector<torch::Tensor> wanted_leaves;
  for (size_t i = 0; i < inputs.size(); ++i) {
    torch::Tensor leaf;
    if (inputs[i].defined()) {
      leaf = inputs[i].detach();
      if (wanted[i]) {
        leaf.requires_grad_(true);
        wanted_leaves.push_back(leaf);
      }
    }
    leaves.push_back(std::move(leaf));
  }
  std::vector<torch::Tensor> result(inputs.size());
  if (wanted_leaves.empty()) return result;
  const std::vector<torch::Tensor> outputs = reference(leaves);
  TORCH_CHECK(outputs.size() == grad_outputs.size(), "reference op gave ", outputs.size(),
              " outputs for ", grad_outputs.size(), " gradients");
  std::vector<torch::Tensor> outs, grads;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (grad_outputs[i].defined() && outputs[i].defined() && outputs[i].requires_grad()) {
      outs.push_back(outputs[i]);
      grads.push_back(grad_outputs[i]);
    }
  }
  if (outs.empty()) return result;
  std::vector<torch::Tensor> g =
      torch::autograd::grad(outs, wanted_leaves, grads, /*retain_graph=*/false,
                            /*create_graph=*/false, /*allow_unused=*/true);
  size_t j = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].defined() && wanted[i]) result[i] = std::move(g[j++]);
  }
  return result;
}

}  // namespace lockstep::common
