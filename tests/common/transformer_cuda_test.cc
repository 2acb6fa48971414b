// Whole-model invariance on the GPU: the rollout's incremental decode at
// batch sizes 1..256 gives the learner's full-sequence logprobs bit for bit;
// standard mode (cuBLAS, LibTorch softmax) does not. Skips without a GPU.
#include <cstring>
#include <random>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/transformer.h"
#include "tests/common/model_fixture.h"

namespace lockstep::common {
namespace {

std::shared_ptr<const Model> GpuModel(KernelMode mode) {
  ModelConfig c = testing::Config100MScaledDown();
  c.dtype = kernels::DType::kBF16;
  ModelOptions opts;
  opts.mode = mode;
  opts.device = kernels::Device::kCuda;
  auto m = Model::Create(c, testing::RandomTensors(c, 5), opts);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

// Decodes `batch` sequences one token per step (all advance together) and
// returns the logprobs of sequence 0's tokens.
std::vector<float> DecodeBatch(const Model& model, const std::vector<std::vector<int32_t>>& seqs) {
  const int64_t len = seqs[0].size(), page = 16, blocks = (len + page - 1) / page;
  auto cache = model.CreateKvCache(blocks * seqs.size(), page);
  EXPECT_TRUE(cache.ok());
  std::vector<float> out;
  for (int64_t p = 0; p + 1 < len; ++p) {
    ForwardBatch b;
    b.num_seqs = seqs.size();
    b.max_blocks_per_seq = blocks;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int64_t k = 0; k < blocks; ++k) b.block_tables.push_back(s * blocks + k);
      b.tokens.push_back(seqs[s][p]);
      b.positions.push_back(p);
      b.seq_ids.push_back(s);
      b.slots.push_back((s * blocks + p / page) * page + p % page);
    }
    b.logit_rows = {0};
    auto logits = model.Forward(b, cache->get());
    EXPECT_TRUE(logits.ok()) << logits.status();
    auto lp = ComputeTokenLogprobs(model.options().mode, *logits, model.config().vocab_size,
                                   {seqs[0][p + 1]}, 0);
    out.push_back(lp->target[0]);
  }
  return out;
}

TEST(TransformerCudaTest, DecodeAtAnyBatchSizeMatchesFullSequence) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    auto model = GpuModel(mode);
    ASSERT_NE(model, nullptr);
    std::mt19937_64 rng(1);
    const int V = model->config().vocab_size;
    auto seq = [&](int n) {
      std::vector<int32_t> t(n);
      for (auto& x : t) x = rng() % V;
      return t;
    };
    const auto target = seq(48);
    auto full = model->ScoreSequences({target}, {1});
    ASSERT_TRUE(full.ok());
    int differing = 0;
    for (int batch : {1, 2, 7, 32, 64, 127, 256}) {
      std::vector<std::vector<int32_t>> seqs = {target};
      while (static_cast<int>(seqs.size()) < batch) seqs.push_back(seq(48));
      const auto dec = DecodeBatch(*model, seqs);
      const bool same = dec.size() == (*full)[0].size() &&
                        std::memcmp(dec.data(), (*full)[0].data(), dec.size() * 4) == 0;
      if (mode == KernelMode::kInvariant) EXPECT_TRUE(same) << "batch " << batch;
      differing += !same;
    }
    if (mode == KernelMode::kStandard) EXPECT_GT(differing, 0);
  }
}

}  // namespace
}  // namespace lockstep::common
