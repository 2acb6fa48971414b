// The learner's differentiable forward gives the rollout's bits.
#include "common/torch_model.h"

#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "common/transformer.h"
#include "tests/common/model_fixture.h"
#include "tests/common/paged_decode.h"

namespace lockstep::common {
namespace {

std::vector<int32_t> Tokens(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = rng() % 64;
  return t;
}

class TorchModelTest : public ::testing::TestWithParam<kernels::DType> {};

TEST_P(TorchModelTest, DifferentiableForwardMatchesInferenceBitwise) {
  ModelConfig config = TinyConfig();
  config.dtype = GetParam();
  const TensorMap tensors = testing::RandomTensors(config, 3);
  auto model = Model::Create(config, tensors, {});
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<std::vector<int32_t>> seqs = {Tokens(30, 1), Tokens(12, 2)};
  std::vector<int64_t> prefix = {5, 1};
  auto expected = (*model)->ScoreSequences(seqs, prefix);
  ASSERT_TRUE(expected.ok());

  // Master weights in fp32 requiring grad; the compute copy is their cast.
  TorchWeights master = ToTorch(tensors);
  TorchWeights compute;
  for (auto& [name, t] : master) {
    t = t.to(torch::kFloat).set_requires_grad(true);
    compute[name] = config.dtype == kernels::DType::kBF16 ? t.to(torch::kBFloat16) : t * 1.0f;
  }
  auto lp = SequenceLogprobs(config, compute, KernelMode::kInvariant, seqs, prefix);
  ASSERT_TRUE(lp.ok()) << lp.status();
  for (size_t s = 0; s < seqs.size(); ++s) {
    auto c = (*lp)[s].detach().contiguous();
    ASSERT_EQ(c.numel(), static_cast<int64_t>((*expected)[s].size()));
    EXPECT_EQ(0, std::memcmp(c.data_ptr<float>(), (*expected)[s].data(), c.numel() * 4));
  }
  // Gradients reach every master weight.
  auto loss = -((*lp)[0].sum() + (*lp)[1].sum());
  loss.backward();
  for (auto& [name, t] : master) {
    ASSERT_TRUE(t.grad().defined()) << name;
    EXPECT_GT(t.grad().abs().sum().item<float>(), 0.0f) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, TorchModelTest,
                         ::testing::Values(kernels::DType::kF32, kernels::DType::kBF16));

// What the guarantee is for: the learner's differentiable forward equals the
// rollout's paged decode (one token a step, batched with another sequence)
// bit for bit in invariant mode. The standard twin — same model, weights,
// sequences and decode — differs: LibTorch's decode matvecs and the
// learner's full-sequence GEMMs round differently.
TEST(TorchModelTest, LearnerEqualsRolloutDecodeWithStandardTwin) {
  ModelConfig config = testing::Config100MScaledDown();
  const TensorMap tensors = testing::RandomTensors(config, 3);
  std::mt19937_64 rng(4);
  std::vector<std::vector<int32_t>> seqs(2);
  for (auto& q : seqs) {
    q.resize(40);
    for (auto& t : q) t = static_cast<int32_t>(rng() % config.vocab_size);
  }
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    SCOPED_TRACE(KernelModeName(mode));
    ModelOptions options;
    options.mode = mode;
    auto model = Model::Create(config, tensors, options);
    ASSERT_TRUE(model.ok()) << model.status();
    const auto rollout = testing::Incremental(**model, seqs, 1, 8, 5);
    TorchWeights w = ToTorch(tensors);
    for (auto& [name, t] : w) t.set_requires_grad(true);
    auto learner = SequenceLogprobs(config, w, mode, seqs, {1, 1});
    ASSERT_TRUE(learner.ok()) << learner.status();
    int differing = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      auto c = (*learner)[s].detach().contiguous();
      ASSERT_EQ(c.numel(), static_cast<int64_t>(rollout[s].size()));
      const bool same =
          std::memcmp(c.data_ptr<float>(), rollout[s].data(), c.numel() * sizeof(float)) == 0;
      differing += !same;
      if (mode == KernelMode::kInvariant) EXPECT_TRUE(same) << "sequence " << s;
    }
    if (mode == KernelMode::kStandard) EXPECT_GT(differing, 0);
  }
}

TEST(TorchModelTest, GradientsMatchStandardModeClosely) {
  const ModelConfig config = TinyConfig();
  const TensorMap tensors = testing::RandomTensors(config, 3);
  std::vector<std::vector<int32_t>> seqs = {Tokens(20, 1)};
  std::map<std::string, torch::Tensor> grads[2];
  int i = 0;
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    TorchWeights w = ToTorch(tensors);
    for (auto& [name, t] : w) t.set_requires_grad(true);
    auto lp = SequenceLogprobs(config, w, mode, seqs, {1});
    ASSERT_TRUE(lp.ok());
    (*lp)[0].sum().backward();
    for (auto& [name, t] : w) grads[i][name] = t.grad().clone();
    ++i;
  }
  for (auto& [name, g] : grads[0]) {
    EXPECT_TRUE(torch::allclose(g, grads[1][name], 1e-3, 1e-5)) << name;
  }
}

TEST(TorchModelTest, BadInputs) {
  const ModelConfig config = TinyConfig();
  TorchWeights w = ToTorch(testing::RandomTensors(config, 3));
  EXPECT_FALSE(SequenceLogprobs(config, w, KernelMode::kInvariant, {}, {}).ok());
  EXPECT_FALSE(SequenceLogprobs(config, w, KernelMode::kInvariant, {{1, 100}}, {1}).ok());
  EXPECT_FALSE(SequenceLogprobs(config, w, KernelMode::kInvariant, {{1, 2}}, {0}).ok());
  w.erase("model.norm.weight");
  EXPECT_FALSE(SequenceLogprobs(config, w, KernelMode::kInvariant, {{1, 2}}, {1}).ok());
}

}  // namespace
}  // namespace lockstep::common
