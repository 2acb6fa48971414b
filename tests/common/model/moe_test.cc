// The mixture-of-experts (Qwen3-MoE) layer and model: a token's output is
// bit-identical whatever the batch, the other tokens' routing, the size of
// its experts' groups, prefill or decode, chunking, page layout, TP degree
// and the learner's differentiable forward, including tokens whose top-k
// ties exactly; accuracy against a float64 reference; the standard twins
// (same models, same inputs) differ.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/formats/model_generator.h"
#include "common/model/model.h"
#include "common/model/moe_forward.h"
#include "common/model/rank_forward.h"
#include "common/model/sequence_logprobs.h"
#include "common/model/torch_ops.h"
#include "tests/common/model/model_fixture.h"
#include "tests/common/model/paged_decode.h"
#include "tests/testing/random.h"

namespace lockstep::common {
namespace {

using testing::Incremental;
using testing::RandomTensors;
using testing::WideMoeConfig;

// Random weights whose layer-0 router gives experts 2 and 5 the same row:
// every token's probabilities of the two tie exactly, so whenever either is
// chosen the tie rule (lower id first) decides ranks or membership.
TensorMap TiedRouterTensors(const ModelConfig& config, uint64_t seed) {
  TensorMap t = RandomTensors(config, seed);
  HostTensor& router = t.at("model.layers.0.mlp.gate.weight");
  const int64_t row = config.hidden_size * kernels::DTypeSize(config.dtype);
  std::memcpy(router.data.data() + 5 * row, router.data.data() + 2 * row, row);
  return t;
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

bool SameRow(const torch::Tensor& a, int64_t i, const torch::Tensor& b, int64_t j) {
  auto x = a[i].contiguous(), y = b[j].contiguous();
  return x.numel() == y.numel() &&
         std::memcmp(x.data_ptr<float>(), y.data_ptr<float>(), x.numel() * 4) == 0;
}

RankWeights Rank0(const ModelConfig& c, const TensorMap& tensors, KernelMode mode) {
  const TorchWeights w = ToTorch(tensors);
  WeightSource source = [&](const std::string& name, int64_t, int64_t,
                            int64_t) -> absl::StatusOr<torch::Tensor> { return w.at(name); };
  LinearMaker linear = [&](torch::Tensor t) -> absl::StatusOr<LinearWeight> {
    LinearWeight lw;
    lw.w = mode == KernelMode::kStandard ? t.to(torch::kFloat) : t;
    return lw;
  };
  auto rw = BuildRankWeights(c, 0, 1, source, linear, torch::kCPU);
  EXPECT_TRUE(rw.ok()) << rw.status();
  return std::move(*rw);
}

// Layer inputs as the forward hands them over: bf16-valued for bf16 models.
torch::Tensor LayerInputs(const ModelConfig& c, int64_t rows, uint64_t seed) {
  torch::manual_seed(seed);
  auto x = torch::randn({rows, c.hidden_size});
  return c.dtype == kernels::DType::kBF16 ? RoundToBF16(x) : x;
}

class MoeLayerTest : public ::testing::TestWithParam<kernels::DType> {};

// SparseMlp on 64 tokens at once vs each token alone, in a reversed
// gathering with duplicates, and in slices: invariant mode gives every token
// the same bits (the experts' groups change size and order every time);
// the standard twin differs for some token.
TEST_P(MoeLayerTest, TokenOutputIndependentOfBatchAndGroups) {
  const ModelConfig c = WideMoeConfig(GetParam());
  const TensorMap tensors = TiedRouterTensors(c, 11);
  const torch::Tensor x = LayerInputs(c, 64, 3);
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    SCOPED_TRACE(KernelModeName(mode));
    const RankWeights rw = Rank0(c, tensors, mode);
    auto ops = CreateOps(mode, c.dtype == kernels::DType::kBF16);
    std::vector<MoeRouting> routing;
    const torch::Tensor full = SparseMlp(c, rw.layers[0], *ops, x, nullptr, &routing);
    ASSERT_EQ(routing.size(), 1u);
    int compared = 0, differing = 0, tied = 0;
    auto check = [&](const torch::Tensor& got, int64_t got_row, int64_t token) {
      ++compared;
      const bool same = SameRow(got, got_row, full, token);
      differing += !same;
      if (mode == KernelMode::kInvariant) EXPECT_TRUE(same) << "token " << token;
    };
    for (int64_t t = 0; t < 64; t += 5) {
      check(SparseMlp(c, rw.layers[0], *ops, x.narrow(0, t, 1), nullptr, nullptr), 0, t);
    }
    std::vector<int64_t> order;
    for (int64_t t = 63; t >= 0; t -= 2) order.push_back(t);
    order.push_back(63);
    order.push_back(0);
    auto idx = torch::tensor(order, torch::kLong);
    const torch::Tensor gathered =
        SparseMlp(c, rw.layers[0], *ops, x.index_select(0, idx), nullptr, nullptr);
    for (size_t i = 0; i < order.size(); ++i) check(gathered, i, order[i]);
    for (int64_t begin : {0, 17, 40}) {
      const torch::Tensor slice =
          SparseMlp(c, rw.layers[0], *ops, x.narrow(0, begin, 9), nullptr, nullptr);
      for (int64_t i = 0; i < 9; ++i) check(slice, i, begin + i);
    }
    // The tied experts were chosen, so the tie rule was exercised.
    auto ids = routing[0].ids;
    tied = ((ids == 2).any(1) | (ids == 5).any(1)).sum().item<int>();
    EXPECT_GT(tied, 0);
    if (mode == KernelMode::kInvariant) {
      // Exact ties rank the lower id first and never choose 5 without 2.
      auto a = ids.accessor<int64_t, 2>();
      for (int64_t t = 0; t < ids.size(0); ++t) {
        int64_t r2 = -1, r5 = -1;
        for (int64_t r = 0; r < ids.size(1); ++r) {
          if (a[t][r] == 2) r2 = r;
          if (a[t][r] == 5) r5 = r;
        }
        if (r5 >= 0) {
          EXPECT_GE(r2, 0) << "token " << t << " chose expert 5 without its twin 2";
          EXPECT_EQ(r5, r2 + 1) << "token " << t;
        }
      }
    } else {
      EXPECT_GT(differing, 0) << "standard mode matched on all " << compared << " rows";
    }
  }
}

// Accuracy: the invariant layer against the same layer in float64 at the
// kernel's routing (ids), with the forward's bf16 storage casts for bf16.
TEST_P(MoeLayerTest, MatchesFloat64Reference) {
  const ModelConfig c = WideMoeConfig(GetParam());
  const bool bf16 = c.dtype == kernels::DType::kBF16;
  const TensorMap tensors = TiedRouterTensors(c, 12);
  const torch::Tensor x = LayerInputs(c, 33, 4);
  const RankWeights rw = Rank0(c, tensors, KernelMode::kInvariant);
  auto ops = CreateOps(KernelMode::kInvariant, bf16);
  std::vector<MoeRouting> routing;
  const torch::Tensor got = SparseMlp(c, rw.layers[0], *ops, x, nullptr, &routing);
  const auto& L = rw.layers[0];
  auto S = [&](torch::Tensor t) {
    return bf16 ? t.to(torch::kBFloat16).to(torch::kDouble) : t;
  };
  auto xd = x.to(torch::kDouble);
  auto logits = S(xd.matmul(L.router.w.to(torch::kDouble).t()));
  auto p = torch::softmax(logits, -1);
  auto ids = routing[0].ids;
  auto w = p.gather(1, ids);
  if (c.norm_topk_prob) w = w / w.sum(-1, true);
  auto want = torch::zeros({x.size(0), c.hidden_size}, torch::kDouble);
  for (int64_t t = 0; t < x.size(0); ++t) {
    for (int64_t r = 0; r < c.num_experts_per_tok; ++r) {
      const MlpWeights& e = L.experts[ids[t][r].item<int64_t>()];
      auto xt = xd[t].unsqueeze(0);
      auto g = S(xt.matmul(e.gate.w.to(torch::kDouble).t()));
      auto u = S(xt.matmul(e.up.w.to(torch::kDouble).t()));
      auto act = S(g * torch::sigmoid(g) * u);
      auto y = S(act.matmul(e.down.w.to(torch::kDouble).t()));
      want[t] += S(y[0] * w[t][r]);
    }
  }
  const double err =
      (got.to(torch::kDouble) - want).norm().item<double>() / want.norm().item<double>();
  EXPECT_LT(err, bf16 ? 1e-2 : 1e-5) << "relative error " << err;
}

INSTANTIATE_TEST_SUITE_P(DTypes, MoeLayerTest,
                         ::testing::Values(kernels::DType::kF32, kernels::DType::kBF16));

std::shared_ptr<const Model> MakeModel(const ModelConfig& config, const TensorMap& tensors,
                                       KernelMode mode, int tp = 1) {
  ModelOptions opts;
  opts.mode = mode;
  opts.tp_size = tp;
  auto m = Model::Create(config, tensors, opts);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

class MoeModelTest : public ::testing::TestWithParam<kernels::DType> {};

// Prefill vs decode vs chunked prefill vs page layout vs batch composition
// vs TP degree vs the learner's differentiable forward on the MoE model: in
// invariant mode every path gives the full-sequence bits of the sequence
// alone; the standard twin differs on at least one path.
TEST_P(MoeModelTest, InvariantAcrossPathsWithStandardTwin) {
  const ModelConfig config = WideMoeConfig(GetParam());
  const TensorMap tensors = TiedRouterTensors(config, 21);
  const int V = config.vocab_size;
  const auto target = RandomTokens(60, V, 21);
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    SCOPED_TRACE(KernelModeName(mode));
    auto model = MakeModel(config, tensors, mode);
    auto alone_or = model->Score({target}, {1});
    ASSERT_TRUE(alone_or.ok()) << alone_or.status();
    const std::vector<float> alone = (*alone_or)[0];
    ASSERT_EQ(alone.size(), 59u);
    int paths = 0, differing = 0;
    auto check = [&](const std::vector<float>& got, const std::string& what) {
      ++paths;
      const bool same = ::lockstep::testing::SameBits(got, alone);
      differing += !same;
      if (mode == KernelMode::kInvariant) EXPECT_TRUE(same) << what;
    };
    for (int chunk : {1, 7, 60}) {
      for (int page : {1, 16}) {
        check(Incremental(*model, {target}, chunk, page, chunk + page)[0],
              "chunk " + std::to_string(chunk) + " page " + std::to_string(page));
      }
    }
    std::mt19937_64 rng(3);
    for (int batch : {2, 5, 16}) {
      std::vector<std::vector<int32_t>> seqs;
      for (int i = 0; i < batch; ++i) {
        seqs.push_back(i == 1 ? target : RandomTokens(5 + rng() % 50, V, rng()));
      }
      check(Incremental(*model, seqs, 1 + rng() % 6, 8, rng())[1],
            "decode batch " + std::to_string(batch));
      auto full = model->Score(seqs, std::vector<int64_t>(seqs.size(), 1));
      ASSERT_TRUE(full.ok());
      check((*full)[1], "score batch " + std::to_string(batch));
    }
    for (int tp : {2, 4}) {
      auto m = MakeModel(config, tensors, mode, tp);
      auto s = m->Score({target}, {1});
      ASSERT_TRUE(s.ok());
      check((*s)[0], "tp " + std::to_string(tp));
    }
    // The learner: master weights in fp32 requiring grad, the compute copy
    // in the model's dtype, batched with another sequence.
    TorchWeights master = ToTorch(tensors), compute;
    for (auto& [name, t] : master) {
      t = t.to(torch::kFloat).set_requires_grad(true);
      compute[name] = config.dtype == kernels::DType::kBF16 ? t.to(torch::kBFloat16) : t * 1.0f;
    }
    auto lp = SequenceLogprobs(config, compute, mode, {RandomTokens(23, V, 5), target}, {1, 1});
    ASSERT_TRUE(lp.ok()) << lp.status();
    auto learner = (*lp)[1].detach().contiguous();
    check(std::vector<float>(learner.data_ptr<float>(), learner.data_ptr<float>() + learner.numel()),
          "learner");
    if (mode == KernelMode::kInvariant) {
      // Gradients reach the routers and the chosen experts.
      ((*lp)[0].sum() + (*lp)[1].sum()).backward();
      for (int64_t l : {0, 2}) {
        const auto& g = master.at("model.layers." + std::to_string(l) + ".mlp.gate.weight").grad();
        ASSERT_TRUE(g.defined()) << "layer " << l;
        EXPECT_GT(g.abs().sum().item<float>(), 0.0f) << "router of layer " << l;
      }
      int experts_with_grad = 0;
      for (int64_t e = 0; e < config.num_experts; ++e) {
        const auto& g =
            master.at("model.layers.0.mlp.experts." + std::to_string(e) + ".up_proj.weight")
                .grad();
        experts_with_grad += g.defined() && g.abs().sum().item<float>() > 0.0f;
      }
      EXPECT_GT(experts_with_grad, config.num_experts_per_tok);
    } else {
      EXPECT_GT(differing, 0) << "standard mode matched on all " << paths << " paths";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, MoeModelTest,
                         ::testing::Values(kernels::DType::kF32, kernels::DType::kBF16));

// The generator's tiny MoE preset loads and its dense layer is dense.
TEST(MoeModelTest, TinyPresetLayout) {
  const ModelConfig c = TinyMoeConfig();
  ASSERT_TRUE(c.Validate().ok()) << c.Validate();
  ASSERT_TRUE(WideMoeConfig(kernels::DType::kBF16).Validate().ok());
  EXPECT_TRUE(c.IsSparseLayer(0));
  EXPECT_FALSE(c.IsSparseLayer(1));
  EXPECT_TRUE(c.IsSparseLayer(2));
  auto m = Model::Create(c, RandomTensors(c, 1), {});
  ASSERT_TRUE(m.ok()) << m.status();
  auto s = (*m)->Score({RandomTokens(10, c.vocab_size, 1)}, {1});
  ASSERT_TRUE(s.ok()) << s.status();
  for (float v : (*s)[0]) EXPECT_TRUE(std::isfinite(v) && v <= 0.0f);
}

}  // namespace
}  // namespace lockstep::common
