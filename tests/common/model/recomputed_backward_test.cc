// The recomputed backward of the invariant ops (recomputed_backward.h): the
// forward value is the kernel's, bit for bit, the node saves the op's inputs
// only, and the gradients are bitwise those of the graph the invariant ops
// used to build in the forward (the reference op with its values overwritten
// by the kernel's).
#include "common/model/recomputed_backward.h"

#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/reference_ops.h"
#include "common/model/torch_ops.h"

namespace lockstep::common {
namespace {

bool SameBits(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  auto ca = a.detach().contiguous(), cb = b.detach().contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

// The old training path: the reference graph with the kernel's values
// written over its output.
torch::Tensor OverrideValue(torch::Tensor ref, const torch::Tensor& value) {
  torch::NoGradGuard no_grad;
  ref.detach().copy_(value);
  return ref;
}

// Leaves (copies of `inputs`, requiring grad where `grad`) for one run.
std::vector<torch::Tensor> Leaves(const std::vector<torch::Tensor>& inputs,
                                  const std::vector<bool>& grad) {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    out.push_back(inputs[i].detach().clone().requires_grad_(grad[i]));
  }
  return out;
}

// Checks an op: `invariant` (the op set's call) and `reference` (the
// reference graph) on copies of `inputs`. The value with grad equals the
// no-grad kernel value bitwise, and the gradients of <y, g> for a random g
// are bitwise the old path's (OverrideValue over the reference graph).
void CheckOp(const std::vector<torch::Tensor>& inputs, const std::vector<bool>& grad,
             const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& invariant,
             const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& reference) {
  torch::Tensor kernel_value;
  {
    torch::NoGradGuard no_grad;
    kernel_value = invariant(inputs);
  }
  auto now = Leaves(inputs, grad);
  torch::Tensor y = invariant(now);
  ASSERT_TRUE(y.requires_grad());
  EXPECT_TRUE(SameBits(y, kernel_value)) << "forward value differs from the kernel's";
  auto old = Leaves(inputs, grad);
  torch::Tensor y_old = OverrideValue(reference(old), kernel_value);
  torch::manual_seed(7);
  torch::Tensor g = torch::randn(y.sizes(), y.options().dtype(torch::kFloat));
  (y * g).sum().backward();
  (y_old * g).sum().backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "input " << i);
    if (!grad[i]) {
      EXPECT_FALSE(now[i].grad().defined());
      continue;
    }
    ASSERT_TRUE(now[i].grad().defined());
    EXPECT_TRUE(SameBits(now[i].grad(), old[i].grad()))
        << "max diff " << (now[i].grad() - old[i].grad()).abs().max().item<double>();
  }
}

torch::Tensor Randn(std::vector<int64_t> shape, float scale = 1.0f) {
  return torch::randn(shape, torch::kFloat) * scale;
}

class RecomputedOpsTest : public ::testing::TestWithParam<torch::ScalarType> {
 protected:
  std::unique_ptr<Ops> ops_ = CreateOps(KernelMode::kInvariant);
};

TEST_P(RecomputedOpsTest, RmsNorm) {
  torch::manual_seed(1);
  const double eps = 1e-6;
  for (bool w_grad : {true, false}) {
    auto w = (1.0f + 0.1f * Randn({48})).to(GetParam());
    CheckOp(
        {Randn({13, 48}), w}, {true, w_grad},
        [&](const auto& in) { return ops_->RmsNorm(in[0], in[1], eps); },
        [&](const auto& in) { return reference::RmsNorm(in[0], in[1], eps); });
  }
}

TEST_P(RecomputedOpsTest, SiluMul) {
  torch::manual_seed(2);
  CheckOp(
      {Randn({9, 40}, 2.0f), Randn({9, 40})}, {true, true},
      [&](const auto& in) { return ops_->SiluMul(in[0], in[1]); },
      [&](const auto& in) { return reference::SiluMul(in[0], in[1]); });
}

TEST_P(RecomputedOpsTest, Rope) {
  torch::manual_seed(3);
  const int64_t heads = 3, head_dim = 16;
  RopeTable rope;
  std::vector<double> inv;
  for (int64_t i = 0; i < head_dim / 2; ++i) inv.push_back(std::pow(10000.0, -2.0 * i / head_dim));
  rope.inv_freq = torch::tensor(inv, torch::kDouble);
  rope.attention_factor = 1.1;
  auto positions = torch::tensor({0, 1, 2, 5, 9, 30, 31}, torch::kInt);
  CheckOp(
      {Randn({7, heads * head_dim})}, {true},
      [&](const auto& in) { return ops_->Rope(in[0], positions, heads, head_dim, rope); },
      [&](const auto& in) { return reference::Rope(in[0], positions, heads, head_dim, rope); });
}

TEST_P(RecomputedOpsTest, TargetLogprobs) {
  torch::manual_seed(4);
  auto targets = torch::randint(0, 100, {11}, torch::kLong);
  CheckOp(
      {Randn({11, 100}, 3.0f)}, {true},
      [&](const auto& in) { return ops_->TargetLogprobs(in[0], targets); },
      [&](const auto& in) { return reference::TargetLogprobs(in[0], targets); });
}

TEST_P(RecomputedOpsTest, RoutingWeights) {
  torch::manual_seed(5);
  for (bool normalize : {true, false}) {
    torch::Tensor ids;
    CheckOp(
        {Randn({10, 16})}, {true},
        [&](const auto& in) {
          auto [w, i] = ops_->RouteTopK(in[0], 4, normalize);
          ids = i;
          return w;
        },
        [&](const auto& in) { return reference::RoutingWeights(in[0], ids, normalize); });
  }
}

// The op's inputs stay float32 activations; the parameter is the dtype of
// the weights (RmsNorm's), as in f32 and bf16 models.
INSTANTIATE_TEST_SUITE_P(WeightDTypes, RecomputedOpsTest,
                         ::testing::Values(torch::kFloat, torch::kBFloat16));

// The node saves its inputs and nothing else: the reference graph is built
// only in the backward (reference calls counted), once per backward, and
// the values come back with their storage (bits) unchanged.
TEST(RecomputedBackwardTest, SavesInputsOnlyAndRecomputesInBackward) {
  auto x = torch::randn({5, 6}).requires_grad_(true);
  auto y = torch::randn({5, 6});  // does not require grad
  int calls = 0;
  ReferenceForward ref = [&](const std::vector<torch::Tensor>& in) {
    ++calls;
    return std::vector<torch::Tensor>{in[0] * in[1], (in[0] * in[0]).sum(1)};
  };
  torch::Tensor v0 = torch::full({5, 6}, 3.0f), v1 = torch::full({5}, 4.0f);
  auto out = WithRecomputedBackward({v0, v1}, {x, y}, ref, "TestBackward");
  EXPECT_EQ(calls, 0);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].data_ptr(), v0.data_ptr());
  EXPECT_EQ(out[1].data_ptr(), v1.data_ptr());
  ASSERT_NE(out[0].grad_fn(), nullptr);
  EXPECT_EQ(out[0].grad_fn()->name(), "TestBackward");
  // Only the second output reaches the loss: its gradient alone flows.
  out[1].sum().backward();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(torch::equal(x.grad(), 2 * x.detach()));
  // Without grad mode, or without an input requiring grad: the values as
  // they are, no node.
  {
    torch::NoGradGuard no_grad;
    auto plain = WithRecomputedBackward(v1, {x}, ref, "TestBackward");
    EXPECT_EQ(plain.grad_fn(), nullptr);
  }
  auto plain = WithRecomputedBackward(v1, {y}, ref, "TestBackward");
  EXPECT_FALSE(plain.requires_grad());
}

// Version checking of the saved inputs, like any saved tensor: an input
// modified in place after the forward fails the backward.
TEST(RecomputedBackwardTest, InputModifiedInPlaceFailsTheBackward) {
  auto leaf = torch::randn({4}).requires_grad_(true);
  auto x = leaf * 2;
  auto out = WithRecomputedBackward(
      torch::zeros({4}), {x},
      [](const std::vector<torch::Tensor>& in) { return std::vector<torch::Tensor>{in[0] * 3}; },
      "TestBackward");
  x.add_(1.0);
  EXPECT_THROW(out.sum().backward(), c10::Error);
}

}  // namespace
}  // namespace lockstep::common
