// The learner's differentiable forward gives the rollout's bits.
#include "common/model/sequence_logprobs.h"

#include <cstdlib>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/model/model.h"
#include "common/sampling/sampling_spec.h"
#include "tests/common/model/cpu_allocation_counter.h"
#include "tests/common/model/model_fixture.h"
#include "tests/common/model/paged_decode.h"

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
  auto expected = (*model)->Score(seqs, prefix);
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
      if (mode == KernelMode::kInvariant) {
        EXPECT_TRUE(same) << "sequence " << s;
      }
    }
    if (mode == KernelMode::kStandard) {
      EXPECT_GT(differing, 0);
    }
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

// The row-chunked head (ScoreOptions::head_chunk_rows): chunks of 3 rows
// (several per sequence, boundaries inside sequences) give the raw, sampled
// and entropy values of the unchunked head bit for bit, and the weight
// gradients of a loss over all three equal within fp32 rounding (the chunks'
// lm_head gradients are summed chunk by chunk). Both dtypes, with and
// without checkpointed layers.
TEST(TorchModelTest, ChunkedHeadKeepsTheValuesBitwise) {
  SamplingSpec warm;
  warm.params.temperature = 0.7f;
  warm.repetition_penalty = 1.2f;
  warm.presence_penalty = 0.3f;
  warm.logit_bias = {{3, 2.0f}, {17, -1.5f}};
  SamplingSpec plain;
  plain.params.temperature = 1.0f;
  for (kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
    for (bool checkpoint : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "dtype " << static_cast<int>(dtype) << " checkpoint "
                                        << checkpoint);
      ModelConfig config = TinyConfig();
      config.dtype = dtype;
      const TensorMap tensors = testing::RandomTensors(config, 5);
      const std::vector<std::vector<int32_t>> seqs = {Tokens(30, 1), Tokens(12, 2), Tokens(9, 3),
                                                      Tokens(4, 4)};
      const std::vector<int64_t> prefix = {5, 1, 3, 4};
      const std::vector<const SamplingSpec*> sampling = {&warm, nullptr, &plain, &warm};
      std::vector<torch::Tensor> values[2];
      std::map<std::string, torch::Tensor> grads[2];
      for (int chunked = 0; chunked < 2; ++chunked) {
        TorchWeights master = ToTorch(tensors);
        TorchWeights compute;
        for (auto& [name, t] : master) {
          t = t.to(torch::kFloat).set_requires_grad(true);
          compute[name] = dtype == kernels::DType::kBF16 ? t.to(torch::kBFloat16) : t * 1.0f;
        }
        ScoreOptions options;
        options.entropy = true;
        options.checkpoint_layers = checkpoint;
        options.head_chunk_rows = chunked ? 3 : 0;
        auto scores = ScoreSequences(config, compute, KernelMode::kInvariant, seqs, prefix,
                                     sampling, options);
        ASSERT_TRUE(scores.ok()) << scores.status();
        torch::Tensor loss = torch::zeros({});
        for (size_t s = 0; s < seqs.size(); ++s) {
          values[chunked].push_back(scores->raw[s].detach());
          values[chunked].push_back(scores->entropy[s].detach());
          loss = loss - scores->raw[s].sum() - 0.1 * scores->entropy[s].sum();
          if (sampling[s] != nullptr) {
            values[chunked].push_back(scores->sampled[s].detach());
            loss = loss - 0.5 * scores->sampled[s].sum();
          }
        }
        loss.backward();
        if (scores->checkpoint != nullptr) {
          ASSERT_TRUE(scores->checkpoint->Backward().ok());
        }
        for (auto& [name, t] : master) grads[chunked][name] = t.grad().clone();
      }
      ASSERT_EQ(values[0].size(), values[1].size());
      for (size_t i = 0; i < values[0].size(); ++i) {
        const auto& a = values[0][i];
        const auto& b = values[1][i];
        ASSERT_TRUE(a.sizes().equals(b.sizes())) << i;
        EXPECT_EQ(0, std::memcmp(a.contiguous().data_ptr<float>(),
                                 b.contiguous().data_ptr<float>(), a.numel() * 4))
            << "output " << i;
      }
      // fp32 weights: fp32 rounding of the summation order. bf16 compute
      // weights: their gradients are rounded to bf16 (LinearFn), so an fp32
      // difference may flip one rounding: at most one bf16 step apart.
      double worst = 0.0;
      for (const auto& [name, g] : grads[0]) {
        const auto& c = grads[1][name];
        const double scale = g.abs().max().item<double>();
        const double rel = (c - g).abs().max().item<double>() / scale;
        worst = std::max(worst, rel);
        if (dtype == kernels::DType::kF32) {
          EXPECT_LT(rel, 1e-5) << name;
        } else {
          auto bound = torch::max(g.abs(), c.abs()) * (1.0 / 128) + 1e-6 * scale;
          EXPECT_TRUE(((c - g).abs() <= bound).all().item<bool>()) << name << " " << rel;
        }
      }
      std::printf("chunked head, dtype %d checkpoint %d: worst gradient relative difference %g\n",
                  static_cast<int>(dtype), static_cast<int>(checkpoint), worst);
    }
  }
}

// The chunked head keeps no [rows, vocab] tensor between the forward and the
// backward; the unchunked one keeps the logits (at least one such tensor).
// A 600-token sequence, vocabulary 16384: the logits are 37.4 MiB.
TEST(TorchModelTest, ChunkedHeadKeepsNoLogits) {
  ModelConfig config = TinyConfig();
  config.vocab_size = 16384;
  config.max_position_embeddings = 1024;
  const TensorMap tensors = testing::RandomTensors(config, 6);
  std::mt19937_64 rng(7);
  std::vector<std::vector<int32_t>> seqs(1, std::vector<int32_t>(600));
  for (auto& t : seqs[0]) t = static_cast<int32_t>(rng() % config.vocab_size);
  SamplingSpec spec;
  spec.params.temperature = 0.9f;
  const int64_t logits_bytes = int64_t{599} * config.vocab_size * 4;
  int64_t kept[2];
  for (int chunked = 0; chunked < 2; ++chunked) {
    TorchWeights w = ToTorch(tensors);
    for (auto& [name, t] : w) t.set_requires_grad(true);
    testing::CountCpuAllocations count;
    const int64_t before = count.counter().current();
    ScoreOptions options;
    options.entropy = true;
    options.head_chunk_rows = chunked ? kHeadChunkRows : 0;
    auto scores = ScoreSequences(config, w, KernelMode::kInvariant, seqs, {1}, {&spec}, options);
    ASSERT_TRUE(scores.ok()) << scores.status();
    kept[chunked] = count.counter().current() - before;
    auto loss = -(scores->raw[0].sum() + scores->sampled[0].sum() + scores->entropy[0].sum());
    loss.backward();
    EXPECT_GT(w["lm_head.weight"].grad().abs().sum().item<float>(), 0.0f);
  }
  std::printf("head of 599 rows x vocab 16384 (logits %.1f MiB): kept between forward and "
              "backward %.1f MiB unchunked, %.1f MiB chunked\n",
              logits_bytes / 1048576.0, kept[0] / 1048576.0, kept[1] / 1048576.0);
  EXPECT_GE(kept[0], logits_bytes);
  EXPECT_LT(kept[1], logits_bytes / 2);
}

// The whole training forward of one 4096-token sequence (one layer, 2 query
// heads of 64 on one KV head) keeps less than one [heads, T, T] fp32 score
// matrix (128 MiB) between forward and backward, and its backward peaks
// below it: no op keeps its reference graph, attention recomputes by blocks
// of rows and the head by chunks of rows.
TEST(TorchModelTest, LongSequenceTrainingMemory) {
  ModelConfig config = TinyConfig();
  config.model_type = "llama";
  config.qk_norm = false;
  config.hidden_size = 128;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  config.head_dim = 64;
  config.intermediate_size = 256;
  config.vocab_size = 256;
  config.num_hidden_layers = 1;
  config.max_position_embeddings = 4096;
  const int64_t T = 4096;
  const int64_t score_matrix = config.num_attention_heads * T * T * 4;
  const TensorMap tensors = testing::RandomTensors(config, 8);
  std::mt19937_64 rng(9);
  std::vector<std::vector<int32_t>> seqs(1, std::vector<int32_t>(T));
  for (auto& t : seqs[0]) t = static_cast<int32_t>(rng() % config.vocab_size);
  TorchWeights w = ToTorch(tensors);
  for (auto& [name, t] : w) t.set_requires_grad(true);
  testing::CountCpuAllocations count;
  auto& c = count.counter();
  const int64_t before = c.current();
  c.ResetPeak();
  ScoreOptions options;
  options.entropy = true;
  auto scores = ScoreSequences(config, w, KernelMode::kInvariant, seqs, {1}, {}, options);
  ASSERT_TRUE(scores.ok()) << scores.status();
  const int64_t kept = c.current() - before;
  const int64_t forward_peak = c.peak() - before;
  c.ResetPeak();
  const int64_t before_backward = c.current();
  (-(scores->raw[0].sum() + scores->entropy[0].sum())).backward();
  const int64_t backward_peak = c.peak() - before_backward;
  std::printf("training forward of T=%lld (1 layer, 2:1 heads of 64): kept %.1f MiB, forward "
              "peak %.1f MiB, backward peak %.1f MiB; one score matrix %.1f MiB\n",
              static_cast<long long>(T), kept / 1048576.0, forward_peak / 1048576.0,
              backward_peak / 1048576.0, score_matrix / 1048576.0);
  EXPECT_LT(kept, score_matrix / 2);
  EXPECT_LT(backward_peak, score_matrix);
  for (auto& [name, t] : w) EXPECT_TRUE(t.grad().defined()) << name;
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

namespace lockstep::common {
namespace {

// Sets LOCKSTEP_FUSED_KERNELS for its scope (torch_ops.h: "0" runs every
// fused step as its chain of single ops).
class FusedKernels {
 public:
  explicit FusedKernels(bool on) { setenv("LOCKSTEP_FUSED_KERNELS", on ? "1" : "0", 1); }
  ~FusedKernels() { unsetenv("LOCKSTEP_FUSED_KERNELS"); }
};

// The fused kernels change no bit of the learner's forward nor of its
// gradients: under autograd the fused steps run as the unfused chains, and
// the no-grad forward (the rollout's) through the fused kernels gives the
// same logprobs. Both dtypes, QK-norm (TinyConfig) and not (llama).
TEST(TorchModelTest, FusedKernelsChangeNoBitOfLearnerForwardOrGradients) {
  for (kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
    for (bool qk_norm : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "dtype " << static_cast<int>(dtype) << " qk_norm "
                                      << qk_norm);
      ModelConfig config = TinyConfig();
      config.dtype = dtype;
      config.qk_norm = qk_norm;
      const TensorMap tensors = testing::RandomTensors(config, 4);
      const std::vector<std::vector<int32_t>> seqs = {Tokens(21, 5), Tokens(9, 6)};
      const std::vector<int64_t> prefix = {3, 1};
      std::vector<std::vector<float>> lps[2];
      std::map<std::string, std::vector<float>> grads[2];
      for (int fused = 0; fused < 2; ++fused) {
        FusedKernels env(fused == 1);
        TorchWeights master = ToTorch(tensors);
        TorchWeights compute;
        for (auto& [name, t] : master) {
          t = t.to(torch::kFloat).set_requires_grad(true);
          compute[name] = dtype == kernels::DType::kBF16 ? t.to(torch::kBFloat16) : t * 1.0f;
        }
        auto lp = SequenceLogprobs(config, compute, KernelMode::kInvariant, seqs, prefix);
        ASSERT_TRUE(lp.ok()) << lp.status();
        torch::Tensor loss = torch::zeros({});
        for (const auto& t : *lp) {
          loss = loss - t.sum();
          auto c = t.detach().contiguous();
          lps[fused].emplace_back(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
        }
        loss.backward();
        for (auto& [name, t] : master) {
          auto g = t.grad().contiguous();
          grads[fused][name].assign(g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
        }
        // The no-grad forward (fused kernels when enabled) equals the
        // differentiable one.
        auto model = Model::Create(config, tensors, {});
        ASSERT_TRUE(model.ok()) << model.status();
        auto scored = (*model)->Score(seqs, prefix);
        ASSERT_TRUE(scored.ok()) << scored.status();
        for (size_t s = 0; s < seqs.size(); ++s) {
          ASSERT_EQ((*scored)[s].size(), lps[fused][s].size());
          EXPECT_EQ(0, std::memcmp((*scored)[s].data(), lps[fused][s].data(),
                                   lps[fused][s].size() * 4));
        }
      }
      for (size_t s = 0; s < seqs.size(); ++s) {
        ASSERT_EQ(lps[0][s].size(), lps[1][s].size());
        EXPECT_EQ(0, std::memcmp(lps[0][s].data(), lps[1][s].data(), lps[0][s].size() * 4));
      }
      for (const auto& [name, g] : grads[0]) {
        const auto& f = grads[1][name];
        ASSERT_EQ(g.size(), f.size()) << name;
        EXPECT_EQ(0, std::memcmp(g.data(), f.data(), g.size() * 4)) << name;
      }
    }
  }
}

}  // namespace
}  // namespace lockstep::common
