// Whole-model invariance: every position's logprob is bit-identical between
// the full-sequence forward (learner), incremental decode, chunked prefill of
// any chunk size, any KV page layout, any batch composition and any TP size,
// in invariant mode; standard mode (LibTorch ops) is shown to differ.
#include "common/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/reference_ops.h"
#include "common/model/torch_ops.h"
#include "tests/common/model/fused_steps.h"
#include "tests/common/model/model_fixture.h"
#include "tests/common/model/paged_decode.h"

namespace lockstep::common {
namespace {

using testing::RandomTensors;
using testing::TpConfig;
using testing::Config100MScaledDown;
using testing::Incremental;

std::shared_ptr<const Model> MakeModel(const ModelConfig& config, KernelMode mode, int tp = 1,
                                       uint64_t seed = 7) {
  ModelOptions opts;
  opts.mode = mode;
  opts.tp_size = tp;
  auto m = Model::Create(config, RandomTensors(config, seed), opts);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<std::vector<float>> Full(const Model& model,
                                     const std::vector<std::vector<int32_t>>& seqs) {
  auto r = model.Score(seqs, std::vector<int64_t>(seqs.size(), 1));
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

class ModeTest : public ::testing::TestWithParam<kernels::DType> {};

// Prefill vs decode vs chunked prefill vs page layout, on a model wide
// enough that LibTorch's BLAS and softmax round with the shape of the call.
// Invariant: every path gives the full-sequence bits. The standard twin
// (same model, same inputs, same paths) must differ on some path: the decode
// path (M = 1 matvecs, softmax over the visible keys only) and the
// full-sequence path (one GEMM, masked softmax) round differently.
TEST_P(ModeTest, IncrementalMatchesFullSequenceBitwise) {
  ModelConfig config = Config100MScaledDown();
  config.dtype = GetParam();
  const std::vector<std::vector<int32_t>> seqs = {RandomTokens(90, config.vocab_size, 1)};
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    SCOPED_TRACE(KernelModeName(mode));
    auto model = MakeModel(config, mode);
    const auto full = Full(*model, seqs);
    ASSERT_EQ(full[0].size(), 89u);
    int differing = 0;
    for (int chunk : {1, 3, 16, 61, 90}) {
      for (int page_size : {1, 7, 16}) {
        auto inc = Incremental(*model, seqs, chunk, page_size, chunk * 31 + page_size);
        const bool same = SameBits(inc[0], full[0]);
        differing += !same;
        if (mode == KernelMode::kInvariant) {
          EXPECT_TRUE(same) << "chunk " << chunk << " page " << page_size;
        }
      }
    }
    if (mode == KernelMode::kStandard) {
      EXPECT_GT(differing, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, ModeTest,
                         ::testing::Values(kernels::DType::kF32, kernels::DType::kBF16));

// A target sequence decoded inside batches of 2..64 sequences of random
// other content and lengths, at varying rows, gives the same bits; so does
// the learner's batched full-sequence forward. The standard twin (same
// model, target, batches and chunks) must differ for some batch.
TEST(TransformerTest, BatchInvariantAcrossCompositions) {
  const ModelConfig config = Config100MScaledDown();
  const int V = config.vocab_size;
  const auto target = RandomTokens(24, V, 99);
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    SCOPED_TRACE(KernelModeName(mode));
    auto model = MakeModel(config, mode);
    const auto alone = Incremental(*model, {target}, 1, 8, 3)[0];
    std::mt19937_64 rng(5);
    int differing = 0;
    for (int batch : {2, 3, 8, 17, 33, 64}) {
      std::vector<std::vector<int32_t>> seqs;
      const int where = rng() % batch;
      for (int i = 0; i < batch; ++i) {
        seqs.push_back(i == where ? target : RandomTokens(5 + rng() % 30, V, rng()));
      }
      const int chunk = 1 + rng() % 8;
      const bool same = SameBits(Incremental(*model, seqs, chunk, 8, rng())[where], alone);
      differing += !same;
      if (mode == KernelMode::kInvariant) {
        EXPECT_TRUE(same) << "batch " << batch << " chunk " << chunk;
      }
    }
    std::vector<std::vector<int32_t>> seqs = {RandomTokens(40, V, 1), target,
                                              RandomTokens(3, V, 2)};
    const bool full_same = SameBits(Full(*model, seqs)[1], alone);
    differing += !full_same;
    if (mode == KernelMode::kInvariant) {
      EXPECT_TRUE(full_same) << "learner batch";
    } else {
      EXPECT_GT(differing, 0);
    }
  }
}

// A Qwen2-style model (q/k/v biases) with YaRN RoPE (frequency blend and
// attention factor), wide enough that LibTorch's BLAS rounds with the shape
// of the call. Biases are random (RandomTensors), not zero.
ModelConfig Qwen2YarnConfig() {
  ModelConfig c = Config100MScaledDown();
  c.model_type = "qwen2";
  c.qkv_bias = true;
  c.num_key_value_heads = 2;
  c.rope.rope_type = "yarn";
  c.rope.rope_theta = 1e6;
  c.rope.factor = 4.0;
  c.rope.original_max_position_embeddings = 32;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  return c;
}

// Prefill vs decode vs chunked prefill vs batch composition vs TP degree on
// the bias + YaRN model. In invariant mode every path gives the bits of the
// full-sequence forward alone; the standard twin (same model, same inputs)
// differs on at least one path, so the comparison can fail.
TEST(TransformerTest, BiasesAndYarnInvariantAcrossPathsWithStandardTwin) {
  const ModelConfig config = Qwen2YarnConfig();
  const int V = config.vocab_size;
  const auto target = RandomTokens(70, V, 21);  // past original_max_position
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    SCOPED_TRACE(KernelModeName(mode));
    auto model = MakeModel(config, mode);
    const auto alone = Full(*model, {target})[0];
    ASSERT_EQ(alone.size(), 69u);
    int paths = 0, differing = 0;
    auto check = [&](const std::vector<float>& got, const std::string& what) {
      ++paths;
      const bool same = SameBits(got, alone);
      differing += !same;
      if (mode == KernelMode::kInvariant) {
        EXPECT_TRUE(same) << what;
      }
    };
    for (int chunk : {1, 5, 70}) {
      check(Incremental(*model, {target}, chunk, 7, chunk)[0],
            "chunk " + std::to_string(chunk));
    }
    std::mt19937_64 rng(3);
    for (int batch : {3, 17}) {
      std::vector<std::vector<int32_t>> seqs;
      for (int i = 0; i < batch; ++i) {
        seqs.push_back(i == 1 ? target : RandomTokens(10 + rng() % 60, V, rng()));
      }
      check(Incremental(*model, seqs, 1 + rng() % 6, 8, rng())[1],
            "batch " + std::to_string(batch));
      check(Full(*model, seqs)[1], "full batch " + std::to_string(batch));
    }
    for (int tp : {2, 4}) {
      check(Full(*MakeModel(config, mode, tp), {target})[0], "tp " + std::to_string(tp));
    }
    if (mode == KernelMode::kStandard) {
      EXPECT_GT(differing, 0) << "standard mode matched on all " << paths << " paths";
    }
  }
}

TEST(TransformerTest, TensorParallelInvariantAtTp1248) {
  const ModelConfig config = TpConfig();
  std::vector<std::vector<int32_t>> seqs = {RandomTokens(40, 64, 11), RandomTokens(17, 64, 12)};
  auto tp1 = MakeModel(config, KernelMode::kInvariant, 1);
  const auto ref = Full(*tp1, seqs);
  const auto ref_inc = Incremental(*tp1, seqs, 5, 4, 9);
  EXPECT_TRUE(SameBits(ref_inc[0], ref[0]));
  for (int tp : {2, 4, 8}) {
    auto m = MakeModel(config, KernelMode::kInvariant, tp);
    const auto full = Full(*m, seqs);
    const auto inc = Incremental(*m, seqs, 3, 4, tp);
    for (size_t s = 0; s < seqs.size(); ++s) {
      EXPECT_TRUE(SameBits(full[s], ref[s])) << "tp " << tp;
      EXPECT_TRUE(SameBits(inc[s], ref[s])) << "tp " << tp;
    }
  }
}

TEST(TransformerTest, StandardModeTensorParallelDiffers) {
  const ModelConfig config = TpConfig();
  std::vector<std::vector<int32_t>> seqs = {RandomTokens(40, 64, 11)};
  const auto ref = Full(*MakeModel(config, KernelMode::kStandard, 1), seqs);
  int differing = 0;
  for (int tp : {2, 4, 8}) {
    differing += !SameBits(Full(*MakeModel(config, KernelMode::kStandard, tp), seqs)[0], ref[0]);
  }
  EXPECT_GT(differing, 0);
}

TEST(TransformerTest, InvariantAndStandardAgreeClosely) {
  // Accuracy: the two kernel sets compute the same function.
  auto inv = MakeModel(TinyConfig(), KernelMode::kInvariant);
  auto std_model = MakeModel(TinyConfig(), KernelMode::kStandard);
  std::vector<std::vector<int32_t>> seqs = {RandomTokens(50, 64, 3)};
  const auto a = Full(*inv, seqs)[0];
  const auto b = Full(*std_model, seqs)[0];
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4) << i;
}

// One standard-mode PagedAttention step over sequences given as (tokens
// already cached, rows in this step), on pages of 16 in shuffled order, in a
// cache of `cache_dtype` whose unused slots hold NaN. Returns the largest
// per-sequence max |out - ref| / max |ref| against reference::Attention over
// the sequence's contiguous K/V (rounded to the cache dtype).
double StandardPagedAttentionError(const std::vector<std::pair<int64_t, int64_t>>& seqs,
                                   torch::ScalarType cache_dtype, int64_t q_heads,
                                   int64_t kv_heads, int64_t head_dim, uint64_t seed) {
  constexpr int64_t kPageSize = 16;
  torch::manual_seed(seed);
  const int64_t num_seqs = seqs.size();
  int64_t max_blocks = 0, num_pages = 3;
  for (const auto& [cached, rows] : seqs) {
    const int64_t blocks = (cached + rows + kPageSize - 1) / kPageSize;
    max_blocks = std::max(max_blocks, blocks);
    num_pages += blocks;
  }
  std::vector<int32_t> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  // Entries past a sequence's last block are -1: never to be read.
  auto tables = torch::full({num_seqs, max_blocks}, -1, torch::kInt);
  int64_t next_page = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t len = seqs[s].first + seqs[s].second;
    for (int64_t b = 0; b * kPageSize < len; ++b) tables[s][b] = perm[next_page++];
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  LayerKv kv{torch::full({num_pages, kPageSize, kv_heads, head_dim}, nan, cache_dtype),
             torch::full({num_pages, kPageSize, kv_heads, head_dim}, nan, cache_dtype)};
  auto slot_of = [&](int64_t s, int64_t p) {
    return int64_t{tables[s][p / kPageSize].item<int32_t>()} * kPageSize + p % kPageSize;
  };
  std::vector<torch::Tensor> ks, vs, step_k, step_v;
  std::vector<int32_t> positions, seq_ids;
  std::vector<int64_t> slots;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const auto [cached, rows] = seqs[s];
    ks.push_back(torch::randn({cached + rows, kv_heads * head_dim}));
    vs.push_back(torch::randn({cached + rows, kv_heads * head_dim}));
    // The earlier steps' K/V, written straight into the pages.
    std::vector<int64_t> old_slots;
    for (int64_t p = 0; p < cached; ++p) old_slots.push_back(slot_of(s, p));
    auto old = torch::tensor(old_slots, torch::kLong);
    const int64_t width = kv_heads * head_dim;
    kv.k.view({-1, width}).index_copy_(0, old, ks[s].narrow(0, 0, cached).to(cache_dtype));
    kv.v.view({-1, width}).index_copy_(0, old, vs[s].narrow(0, 0, cached).to(cache_dtype));
    step_k.push_back(ks[s].narrow(0, cached, rows));
    step_v.push_back(vs[s].narrow(0, cached, rows));
    for (int64_t p = cached; p < cached + rows; ++p) {
      positions.push_back(p);
      seq_ids.push_back(s);
      slots.push_back(slot_of(s, p));
    }
  }
  const int64_t T = positions.size();
  PagedAttentionMeta meta;
  meta.positions = torch::tensor(positions, torch::kInt);
  meta.seq_ids = torch::tensor(seq_ids, torch::kInt);
  meta.slots = torch::tensor(slots, torch::kLong);
  meta.block_tables = tables;
  auto q = torch::randn({T, q_heads * head_dim});
  auto ops = CreateOps(KernelMode::kStandard);
  auto out = ops->PagedAttention(q, torch::cat(step_k), torch::cat(step_v), kv, meta, q_heads,
                                 kv_heads, head_dim);
  EXPECT_EQ(out.scalar_type(), torch::kFloat);
  EXPECT_EQ(out.sizes(), q.sizes());
  double worst = 0;
  int64_t row = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const auto [cached, rows] = seqs[s];
    auto ref = reference::Attention(
        q.narrow(0, row, rows), ks[s].to(cache_dtype).to(torch::kFloat),
        vs[s].to(cache_dtype).to(torch::kFloat), meta.positions.narrow(0, row, rows), q_heads,
        kv_heads, head_dim);
    const double err = (out.narrow(0, row, rows) - ref).abs().max().item<double>() /
                       ref.abs().max().item<double>();
    EXPECT_TRUE(std::isfinite(err)) << "sequence " << s;
    worst = std::max(worst, std::isfinite(err) ? err : 1.0);
    row += rows;
  }
  return worst;
}

class StandardPagedAttentionTest : public ::testing::TestWithParam<torch::ScalarType> {};

// Decode rows of different lengths (a page boundary, a first token), a
// chunk of several rows of one sequence and a fresh prefill, in one batch.
TEST_P(StandardPagedAttentionTest, BatchedMatchesReferencePerSequence) {
  const std::vector<std::pair<int64_t, int64_t>> seqs = {
      {37, 1}, {0, 1}, {15, 1}, {20, 9}, {100, 1}, {16, 1}, {0, 12}, {63, 1}};
  EXPECT_LT(StandardPagedAttentionError(seqs, GetParam(), 8, 2, 32, 1), 1e-5);
  // Without GQA as well.
  EXPECT_LT(StandardPagedAttentionError(seqs, GetParam(), 4, 4, 16, 2), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(CacheDTypes, StandardPagedAttentionTest,
                         ::testing::Values(torch::kFloat, torch::kBFloat16));

// Enough rows of a long context that the gathered K/V exceed the 512 MiB
// chunk budget: the rows go through in several chunks.
TEST(TransformerTest, StandardPagedAttentionChunksLongBatches) {
  const std::vector<std::pair<int64_t, int64_t>> seqs = {{5, 1}, {1990, 40}, {700, 1}, {3, 2}};
  EXPECT_LT(StandardPagedAttentionError(seqs, torch::kFloat, 16, 8, 128, 3), 1e-5);
}

// A step that asks for no logits (a prefill chunk that samples nothing) still
// writes its K/V: the next token's logprob is the full-sequence one.
TEST(TransformerTest, StepWithoutLogitsStillFillsTheCache) {
  auto model = MakeModel(TinyConfig(), KernelMode::kInvariant);
  const auto seq = RandomTokens(22, 64, 4);
  const auto full = Full(*model, {seq})[0];
  auto cache = model->CreateKvCache(2, 16);
  ASSERT_TRUE(cache.ok());
  ForwardBatch b;
  b.block_tables = {1, 0};
  b.num_seqs = 1;
  b.max_blocks_per_seq = 2;
  for (int p = 0; p < 20; ++p) {
    b.tokens.push_back(seq[p]);
    b.positions.push_back(p);
    b.seq_ids.push_back(0);
    b.slots.push_back(p < 16 ? 16 + p : p - 16);
  }
  auto none = model->StepLogits(b, cache->get());
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  ForwardBatch d = b;
  d.tokens = {seq[20]};
  d.positions = {20};
  d.seq_ids = {0};
  d.slots = {4};
  d.logit_rows = {0};
  auto logits = model->StepLogits(d, cache->get());
  ASSERT_TRUE(logits.ok());
  auto lp = ComputeTokenLogprobs(KernelMode::kInvariant, *logits, 64, {seq[21]}, 0);
  ASSERT_TRUE(lp.ok());
  EXPECT_EQ(0, std::memcmp(&lp->target[0], &full[20], sizeof(float)));
}

TEST(TransformerTest, BadBatchesAreRejected) {
  auto model = MakeModel(TinyConfig(), KernelMode::kInvariant);
  auto cache = model->CreateKvCache(4, 4);
  ASSERT_TRUE(cache.ok());
  ForwardBatch b;
  b.tokens = {1};
  b.positions = {0};
  b.seq_ids = {0};
  b.slots = {0};
  b.block_tables = {0, 1};
  b.num_seqs = 1;
  b.max_blocks_per_seq = 2;
  b.logit_rows = {0};
  EXPECT_TRUE(model->StepLogits(b, cache->get()).ok());
  auto bad = b;
  bad.tokens = {64};
  EXPECT_EQ(model->StepLogits(bad, cache->get()).status().code(), absl::StatusCode::kInvalidArgument);
  bad = b;
  bad.positions = {9};  // beyond 2 blocks of 4
  EXPECT_EQ(model->StepLogits(bad, cache->get()).status().code(), absl::StatusCode::kInvalidArgument);
  bad = b;
  bad.slots = {3};  // not position 0's slot
  EXPECT_EQ(model->StepLogits(bad, cache->get()).status().code(), absl::StatusCode::kInvalidArgument);
  bad = b;
  bad.block_tables = {7, 1};  // page out of range
  EXPECT_EQ(model->StepLogits(bad, cache->get()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Score({{1, 2}}, {3}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Score({{1, 99}}, {1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ModelOptions opts;
  opts.tp_size = 3;
  EXPECT_EQ(Model::Create(TinyConfig(), RandomTensors(TinyConfig(), 1), opts).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto tensors = RandomTensors(TinyConfig(), 1);
  tensors.erase("model.norm.weight");
  EXPECT_EQ(Model::Create(TinyConfig(), tensors, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lockstep::common

namespace lockstep::common {
namespace {

// Each fused step (kernels/fused.h through InvariantOps) gives the bits of
// the chain of single ops it replaces, on the CPU.
TEST(FusedKernelsTest, FusedStepsMatchTheirChainsBitwiseOnCpu) {
  testing::CheckFusedStepsMatchChains(torch::Device(torch::kCPU), /*bf16_activations=*/false);
  testing::CheckFusedStepsMatchChains(torch::Device(torch::kCPU), /*bf16_activations=*/true);
}

// StackedLinear (one GEMM for q/k/v and for gate/up) and the steps that
// take its row-strided outputs in place give the bits of their chains, on
// the CPU.
TEST(FusedKernelsTest, StackedLinearMatchesItsChainBitwiseOnCpu) {
  testing::CheckStackedLinearMatchesChain(torch::Device(torch::kCPU), /*bf16_activations=*/false);
  testing::CheckStackedLinearMatchesChain(torch::Device(torch::kCPU), /*bf16_activations=*/true);
}

// The whole forward with the fused kernels (and the fused QKV and gate/up
// GEMMs of the model's stacked weights) equals the unfused forward bit for
// bit: full sequence (learner), chunked prefill and decode (rollout), TP 1
// and 2, QK-norm (qwen3-style), llama-style, and q/k/v biases (qwen2-style,
// YaRN), fp32 and bf16.
TEST(FusedKernelsTest, FusedForwardEqualsUnfusedBitwise) {
  for (kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
    for (ModelConfig config : {TpConfig(), Config100MScaledDown(), Qwen2YarnConfig()}) {
      config.dtype = dtype;
      for (int tp : {1, 2}) {
        SCOPED_TRACE(::testing::Message() << "dtype " << static_cast<int>(dtype) << " qk_norm "
                                          << config.qk_norm << " qkv_bias " << config.qkv_bias
                                          << " tp " << tp);
        const std::vector<std::vector<int32_t>> seqs = {RandomTokens(40, config.vocab_size, 3),
                                                        RandomTokens(23, config.vocab_size, 4)};
        std::vector<std::vector<float>> full[2], inc[2];
        for (int fused = 0; fused < 2; ++fused) {
          testing::FusedKernelsEnv env(fused == 1);
          auto model = MakeModel(config, KernelMode::kInvariant, tp);
          full[fused] = Full(*model, seqs);
          inc[fused] = Incremental(*model, seqs, 7, 16, 5);
        }
        for (size_t s = 0; s < seqs.size(); ++s) {
          EXPECT_TRUE(SameBits(full[0][s], full[1][s])) << "full, seq " << s;
          EXPECT_TRUE(SameBits(inc[0][s], inc[1][s])) << "incremental, seq " << s;
          EXPECT_TRUE(SameBits(inc[1][s], full[1][s])) << "fused: incremental vs full, seq " << s;
        }
      }
    }
  }
}

}  // namespace
}  // namespace lockstep::common
