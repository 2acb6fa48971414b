// Autograd for ops whose forward value comes from elsewhere (an invariant
// kernel) and whose backward recomputes a reference formulation (issue 17
// §2). The forward runs the op once and keeps only the op's inputs; the
// backward rebuilds the reference graph (reference_ops.h) from those inputs,
// with grad enabled, back-propagates through it and frees it. Nothing the
// reference graph would save (attention's [heads, T, T] probabilities, a
// [rows, vocab] softmax) lives from the forward to the backward.
//
// The recomputed reference ops are the ones that used to be built in the
// forward (with their values overwritten by the kernel's), on the same
// input values, so an op's gradient is bit-identical to that graph's.
#ifndef LOCKSTEP_COMMON_MODEL_RECOMPUTED_BACKWARD_H_
#define LOCKSTEP_COMMON_MODEL_RECOMPUTED_BACKWARD_H_

#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace lockstep::common {

// An op's reference formulation: its outputs as a differentiable function of
// `inputs` (the tensors given to WithRecomputedBackward, in order). Other
// arguments (positions, targets, shapes) are captured by the closure.
using ReferenceForward =
    std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>& inputs)>;

// An op's backward: given its saved inputs, which of them need a gradient
// (`wanted`, one per input) and the gradients of its outputs (one per
// output, undefined for an output the loss does not reach), returns one
// gradient per input (undefined where not wanted or zero). Runs with grad
// mode as the autograd engine sets it (off unless create_graph).
using RecomputedGradient = std::function<std::vector<torch::Tensor>(
    const std::vector<torch::Tensor>& inputs, const std::vector<bool>& wanted,
    const std::vector<torch::Tensor>& grad_outputs)>;

// Returns `values` (the op's outputs, already computed: float tensors that
// share their storage, hence their bits, with the returned ones) as outputs
// of one autograd node over `inputs` whose backward is `gradient`. The node
// saves `inputs` (version-checked, like any saved tensor) and nothing else.
// When grad mode is off or no input requires grad, returns `values` as they
// are. `name` names the node (grad_fn()->name()).
std::vector<torch::Tensor> WithCustomBackward(std::vector<torch::Tensor> values,
                                              const std::vector<torch::Tensor>& inputs,
                                              RecomputedGradient gradient, std::string name);

// The common case: the backward is that of `reference` recomputed on the
// saved inputs (RecomputeGradient).
std::vector<torch::Tensor> WithRecomputedBackward(std::vector<torch::Tensor> values,
                                                  const std::vector<torch::Tensor>& inputs,
                                                  ReferenceForward reference, std::string name);
// One output.
torch::Tensor WithRecomputedBackward(torch::Tensor value, const std::vector<torch::Tensor>& inputs,
                                     ReferenceForward reference, std::string name);

// The gradient of `reference` at `inputs`: the inputs are detached into
// leaves (requiring grad where `wanted`), `reference` runs on them with grad
// enabled, and torch::autograd::grad takes the outputs that have a defined
// gradient in `grad_outputs` back to the wanted leaves. Returns one tensor
// per input (undefined where not wanted or unreached). The recomputed graph
// is freed on return.
std::vector<torch::Tensor> RecomputeGradient(const ReferenceForward& reference,
                                             const std::vector<torch::Tensor>& inputs,
                                             const std::vector<bool>& wanted,
                                             const std::vector<torch::Tensor>& grad_outputs);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_RECOMPUTED_BACKWARD_H_
