// The stacked projections of the inference model (BuildRankWeights'
// stack_projections, Ops::StackedLinear): the stacked weights replace the
// separate ones (no second copy), and the decoder forward on them has, bit
// for bit, the logits of the forward on the separate weights — the forward
// the learner runs and the model ran before — with the projections fused
// (one GEMM each) and unfused, CPU weights packed as the Model packs them.
#include "common/model/rank_forward.h"

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/formats/model_generator.h"
#include "common/model/sequence_logprobs.h"
#include "common/model/torch_ops.h"
#include "kernels/matmul.h"
#include "tests/common/model/fused_steps.h"
#include "tests/common/model/model_fixture.h"

namespace lockstep::common {
namespace {

// Rank `rank` of `tp` of `tensors`, packed for the CPU invariant matmul like
// the Model's weights.
RankWeights Build(const ModelConfig& c, const TorchWeights& w, int rank, int tp, bool stack) {
  WeightSource source = [&](const std::string& name, int64_t dim, int64_t begin,
                            int64_t count) -> absl::StatusOr<torch::Tensor> {
    auto it = w.find(name);
    if (it == w.end()) return absl::InvalidArgumentError("missing " + name);
    return dim < 0 ? it->second : it->second.narrow(dim, begin, count).contiguous();
  };
  LinearMaker linear = [](torch::Tensor t) -> absl::StatusOr<LinearWeight> {
    LinearWeight lw;
    lw.w = t.contiguous();
    auto packed = kernels::PackedWeight::Pack(
        lw.w.data_ptr(),
        lw.w.scalar_type() == torch::kFloat ? kernels::DType::kF32 : kernels::DType::kBF16,
        lw.w.size(1), lw.w.size(0), lw.w.size(1));
    if (!packed.ok()) return packed.status();
    lw.packed = *packed;
    return lw;
  };
  auto rw = BuildRankWeights(c, rank, tp, source, linear, torch::kCPU, stack);
  EXPECT_TRUE(rw.ok()) << rw.status();
  return rw.ok() ? std::move(*rw) : RankWeights();
}

// A qwen2-style model: q/k/v biases, GQA 2:1, no QK-norm.
ModelConfig BiasConfig() {
  ModelConfig c = testing::TpConfig();
  c.model_type = "qwen2";
  c.qk_norm = false;
  c.qkv_bias = true;
  return c;
}

std::vector<ModelConfig> Configs() {
  std::vector<ModelConfig> out;
  for (kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
    for (ModelConfig c : {testing::TpConfig(), BiasConfig(), TinyMoeConfig()}) {
      c.dtype = dtype;
      out.push_back(c);
    }
  }
  return out;
}

// Each layer's (and expert's) q, k, v and gate, up live only in the stacked
// matrices, which hold their rows in order (rank 1 of 2: that rank's rows),
// with the biases, packed as a whole.
TEST(StackedProjectionsTest, StackedWeightsReplaceTheSeparateOnes) {
  for (const ModelConfig& c : Configs()) {
    SCOPED_TRACE(::testing::Message() << c.model_type << " dtype " << static_cast<int>(c.dtype));
    const TorchWeights w = ToTorch(testing::RandomTensors(c, 3));
    const RankWeights sep = Build(c, w, 1, 2, false), st = Build(c, w, 1, 2, true);
    ASSERT_EQ(sep.layers.size(), st.layers.size());
    auto expect_stack = [](const LinearWeight& stacked, std::vector<const LinearWeight*> parts) {
      std::vector<torch::Tensor> ws, bs;
      for (const LinearWeight* p : parts) {
        ws.push_back(p->w);
        if (p->bias.defined()) bs.push_back(p->bias);
      }
      ASSERT_TRUE(stacked.w.defined());
      EXPECT_TRUE(torch::equal(stacked.w, torch::cat(ws, 0)));
      EXPECT_EQ(stacked.bias.defined(), !bs.empty());
      if (!bs.empty()) {
        EXPECT_TRUE(torch::equal(stacked.bias, torch::cat(bs, 0)));
      }
      ASSERT_NE(stacked.packed, nullptr);
      EXPECT_EQ(stacked.packed->n(), stacked.w.size(0));
    };
    for (size_t l = 0; l < st.layers.size(); ++l) {
      const LayerWeights &a = sep.layers[l], &b = st.layers[l];
      EXPECT_FALSE(b.q.w.defined() || b.k.w.defined() || b.v.w.defined());
      EXPECT_FALSE(a.qkv.w.defined());
      expect_stack(b.qkv, {&a.q, &a.k, &a.v});
      EXPECT_EQ(b.qkv.w.size(0), (st.q_heads + 2 * st.kv_heads) * c.head_dim);
      std::vector<std::pair<const MlpWeights*, const MlpWeights*>> mlps = {{&a.mlp, &b.mlp}};
      for (size_t e = 0; e < b.experts.size(); ++e) mlps.push_back({&a.experts[e], &b.experts[e]});
      for (auto [ma, mb] : mlps) {
        if (!ma->gate.w.defined()) continue;  // a sparse layer's empty dense MLP
        EXPECT_FALSE(mb->gate.w.defined() || mb->up.w.defined());
        expect_stack(mb->gate_up, {&ma->gate, &ma->up});
        EXPECT_TRUE(torch::equal(mb->down.w, ma->down.w));
      }
    }
  }
}

// Full-sequence logits of two sequences on the separate weights (fused
// kernels on, the forward before stacking) and on the stacked ones with the
// fused kernels on (one GEMM per stack) and off (one GEMM per block on views
// of the stacked weight): the same bits. QK-norm + GQA (qwen3), biases
// (qwen2), mixture of experts (stacked experts), fp32 and bf16.
TEST(StackedProjectionsTest, StackedForwardEqualsSeparateForwardBitwise) {
  for (const ModelConfig& c : Configs()) {
    SCOPED_TRACE(::testing::Message() << c.model_type << " dtype " << static_cast<int>(c.dtype));
    const TorchWeights w = ToTorch(testing::RandomTensors(c, 5));
    const RankWeights sep = Build(c, w, 0, 1, false), st = Build(c, w, 0, 1, true);
    const std::vector<int64_t> lens = {9, 5};
    std::vector<int64_t> tokens;
    std::vector<int32_t> positions;
    for (int64_t len : lens) {
      for (int64_t p = 0; p < len; ++p) {
        tokens.push_back((p * 7 + len * 3) % c.vocab_size);
        positions.push_back(static_cast<int32_t>(p));
      }
    }
    ForwardInput in;
    in.tokens = torch::tensor(tokens, torch::kLong);
    in.positions = torch::tensor(positions, torch::kInt);
    in.seq_lens = lens;
    in.logit_rows = torch::arange(static_cast<int64_t>(tokens.size()), torch::kLong);
    torch::NoGradGuard no_grad;
    auto logits = [&](const RankWeights& rw, bool fused) {
      testing::FusedKernelsEnv env(fused);
      auto ops = CreateOps(KernelMode::kInvariant, c.dtype == kernels::DType::kBF16);
      return RankForward(c, rw, *ops, in, nullptr);
    };
    const torch::Tensor before = logits(sep, true);
    ASSERT_EQ(before.size(0), static_cast<int64_t>(tokens.size()));
    testing::ExpectSameBits(before, logits(st, true), "stacked, fused");
    testing::ExpectSameBits(before, logits(st, false), "stacked, unfused");
    testing::ExpectSameBits(before, logits(sep, false), "separate, unfused");
  }
}

}  // namespace
}  // namespace lockstep::common
