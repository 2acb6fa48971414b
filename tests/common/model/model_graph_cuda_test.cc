// The device-resident step and its CUDA graphs (ModelOptions::cuda_step):
// graph replay gives the bits of the op-by-op step for every padded batch
// bucket (tokens, logprobs and logits, memcmp); padding rows never change a
// real row nor another sequence's KV pages; greedy decode through graphs
// scores exactly like the full-sequence forward (its standard-mode twin does
// not); capture memory is bounded and reported; bad inputs stay
// INVALID_ARGUMENT. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/model.h"
#include "kernels/sampling.h"
#include "tests/common/model/model_fixture.h"

namespace lockstep::common {
namespace {

constexpr int64_t kPage = 16;

// bf16 models whose GPU attention is the tensor-core contract (head_dim 64):
// llama-style (4 heads, 4 KV heads) and qwen3-style (QK-norm, 8 heads over
// 2 KV heads).
ModelConfig GpuConfig(bool qwen3) {
  ModelConfig c = testing::Config100MScaledDown();
  c.dtype = kernels::DType::kBF16;
  c.max_position_embeddings = 2048;
  if (qwen3) {
    c.model_type = "qwen3";
    c.qk_norm = true;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 2;
    c.hidden_size = 256;
  }
  return c;
}

std::shared_ptr<const Model> MakeModel(const ModelConfig& c, const TensorMap& w, KernelMode mode,
                                       CudaStep step, int max_graphs = 64,
                                       int64_t max_bytes = int64_t{2} << 30) {
  ModelOptions o;
  o.mode = mode;
  o.device = kernels::Device::kCuda;
  o.cuda_step = step;
  o.cuda_graph_max_graphs = max_graphs;
  o.cuda_graph_max_bytes = max_bytes;
  auto m = Model::Create(c, w, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

// Sequences decoding together over one KV cache: page ids are a seeded
// permutation (the same for every model given the same seed).
struct Batch {
  std::vector<std::vector<int32_t>> seqs;  // tokens so far
  std::vector<std::vector<int32_t>> pages;  // per sequence, in order
  std::vector<kernels::SamplingParams> params;
  int64_t blocks = 0;  // block-table width
};

Batch MakeBatch(int n, int max_prompt, int max_new, int vocab, uint64_t seed, bool greedy) {
  std::mt19937_64 rng(seed);
  Batch b;
  b.blocks = (max_prompt + max_new + kPage) / kPage;
  const int64_t num_pages = n * b.blocks + 3;
  std::vector<int32_t> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int s = 0; s < n; ++s) {
    // At least two tokens: a prefill of one-token prompts would be
    // decode-shaped (and replay a graph), which the counts below exclude.
    std::vector<int32_t> t(2 + rng() % (max_prompt - 1));
    for (auto& x : t) x = rng() % vocab;
    b.seqs.push_back(t);
    b.pages.emplace_back(perm.begin() + s * b.blocks, perm.begin() + (s + 1) * b.blocks);
    kernels::SamplingParams p;
    if (greedy) {
      p.temperature = 0.0f;
    } else {
      const float temps[] = {0.0f, 0.7f, 1.0f, 1.3f};
      p.temperature = temps[rng() % 4];
      p.top_k = rng() % 3 == 0 ? 5 : 0;
      p.top_p = rng() % 3 == 0 ? 0.9f : 1.0f;
      p.min_p = rng() % 4 == 0 ? 0.05f : 0.0f;
    }
    p.seed = rng();
    b.params.push_back(p);
  }
  return b;
}

int64_t NumPages(const Batch& b) { return b.seqs.size() * b.blocks + 3; }

// One step of the sequences `which` (indices into b.seqs): their tokens from
// `from[s]` on (the whole prompt in a prefill, the last token in decode),
// every sequence's last row sampled.
ForwardBatch StepBatch(const Batch& b, const std::vector<int>& which,
                       const std::vector<int64_t>& from, StepRequest* req) {
  ForwardBatch f;
  f.num_seqs = which.size();
  f.max_blocks_per_seq = b.blocks;
  for (size_t row = 0; row < which.size(); ++row) {
    const int s = which[row];
    const auto& t = b.seqs[s];
    for (int32_t pg : b.pages[s]) f.block_tables.push_back(pg);
    for (int64_t p = from[row]; p < static_cast<int64_t>(t.size()); ++p) {
      f.tokens.push_back(t[p]);
      f.positions.push_back(p);
      f.seq_ids.push_back(row);
      f.slots.push_back(int64_t{b.pages[s][p / kPage]} * kPage + p % kPage);
    }
    f.logit_rows.push_back(f.tokens.size() - 1);
    req->params.push_back(b.params[s]);
    req->positions.push_back(t.size());
  }
  return f;
}

std::vector<int> All(const Batch& b) {
  std::vector<int> v(b.seqs.size());
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// A decode step (one token per sequence) of `which`.
absl::StatusOr<StepResult> Decode(const Model& m, KvCache* cache, const Batch& b,
                                  const std::vector<int>& which, bool logits) {
  std::vector<int64_t> from;
  for (int s : which) from.push_back(b.seqs[s].size() - 1);
  StepRequest req;
  req.return_logits = logits;
  ForwardBatch f = StepBatch(b, which, from, &req);
  return m.Step(f, cache, req);
}

// A prefill step of `which` (every token of their prompts, mixed lengths).
absl::StatusOr<StepResult> Prefill(const Model& m, KvCache* cache, const Batch& b,
                                   const std::vector<int>& which) {
  std::vector<int64_t> from(which.size(), 0);
  StepRequest req;
  ForwardBatch f = StepBatch(b, which, from, &req);
  return m.Step(f, cache, req);
}

void Append(Batch* b, const std::vector<int>& which, const StepResult& r) {
  for (size_t i = 0; i < which.size(); ++i) b->seqs[which[i]].push_back(r.tokens[i]);
}

bool SameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// memcmp of tokens, logprobs (raw and sampled) and logits.
bool SameBits(const StepResult& a, const StepResult& b) {
  return a.tokens == b.tokens && SameFloats(a.logprobs.target, b.logprobs.target) &&
         SameFloats(a.logprobs.sampled, b.logprobs.sampled) &&
         a.logits.size() == b.logits.size() &&
         std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)) == 0;
}

// Every batch size 1..256 (each power-of-two bucket, exactly and padded):
// three decode steps through graphs give the bits of the op-by-op
// device-resident step, and of the legacy step, of the same weights, pages
// and inputs.
TEST(ModelGraphCudaTest, GraphReplayMatchesEagerAtEveryBucket) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (bool qwen3 : {false, true}) {
    const ModelConfig c = GpuConfig(qwen3);
    const TensorMap w = testing::RandomTensors(c, 11);
    auto graphs = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kGraphs);
    auto eager = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kEager);
    auto legacy = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kLegacy);
    ASSERT_TRUE(graphs && eager && legacy);
    int64_t decode_steps = 0;
    for (int n : {1, 2, 3, 4, 5, 8, 13, 16, 31, 32, 50, 64, 100, 128, 200, 256}) {
      SCOPED_TRACE("qwen3=" + std::to_string(qwen3) + " n=" + std::to_string(n));
      Batch bg = MakeBatch(n, 24, 4, c.vocab_size, 100 + n, /*greedy=*/false);
      Batch be = bg;
      auto cg = graphs->CreateKvCache(NumPages(bg), kPage);
      auto ce = eager->CreateKvCache(NumPages(bg), kPage);
      ASSERT_TRUE(cg.ok() && ce.ok());
      const bool with_legacy = n == 3 || n == 64;
      Batch bl = bg;
      auto cl = legacy->CreateKvCache(NumPages(bg), kPage);
      ASSERT_TRUE(cl.ok());
      auto pg = Prefill(*graphs, cg->get(), bg, All(bg));
      auto pe = Prefill(*eager, ce->get(), be, All(be));
      ASSERT_TRUE(pg.ok() && pe.ok()) << pg.status() << pe.status();
      EXPECT_TRUE(SameBits(*pg, *pe));
      Append(&bg, All(bg), *pg);
      Append(&be, All(be), *pe);
      if (with_legacy) {
        auto pl = Prefill(*legacy, cl->get(), bl, All(bl));
        ASSERT_TRUE(pl.ok()) << pl.status();
        EXPECT_TRUE(SameBits(*pl, *pe));
        Append(&bl, All(bl), *pl);
      }
      for (int step = 0; step < 3; ++step) {
        const bool logits = step < 2;  // graphs with and without the logits copy
        const int64_t before = graphs->cuda_graph_stats().replays;
        auto dg = Decode(*graphs, cg->get(), bg, All(bg), logits);
        auto de = Decode(*eager, ce->get(), be, All(be), logits);
        ASSERT_TRUE(dg.ok() && de.ok()) << dg.status() << de.status();
        EXPECT_EQ(graphs->cuda_graph_stats().replays, before + 1) << "step " << step;
        EXPECT_TRUE(SameBits(*dg, *de)) << "step " << step;
        if (logits) {
          EXPECT_EQ(dg->logits.size(), static_cast<size_t>(n) * c.vocab_size);
        }
        if (with_legacy) {
          auto dl = Decode(*legacy, cl->get(), bl, All(bl), logits);
          ASSERT_TRUE(dl.ok()) << dl.status();
          EXPECT_TRUE(SameBits(*dl, *de)) << "legacy, step " << step;
          Append(&bl, All(bl), *dl);
        }
        Append(&bg, All(bg), *dg);
        Append(&be, All(be), *de);
        ++decode_steps;
      }
    }
    const CudaGraphStats gs = graphs->cuda_graph_stats();
    const CudaGraphStats es = eager->cuda_graph_stats();
    EXPECT_EQ(gs.replays, decode_steps);
    EXPECT_GE(gs.captures, 9);  // every bucket 1..256, with and without logits
    EXPECT_GT(gs.capture_bytes, 0);
    EXPECT_EQ(es.replays, 0);
    EXPECT_EQ(es.captures, 0);
    EXPECT_GT(es.eager_steps, 0);
    EXPECT_GT(gs.last_step_device_ms, 0.0);
  }
}

// Padding rows write only the scratch page: sequences that own the lowest
// page ids (0, 1, ...) and sit out while three others decode through a
// padded graph (3 rows -> bucket 4) decode afterwards with the same bits as
// on the eager model.
// Issue 16: the device step's sampled tokens and sampled-distribution
// logprobs (graphs for plain parameters; eager for rows with logit
// adjustments) are the bits the CPU sampler computes from the same logits,
// parameters and adjustments: one sampler arithmetic on both devices.
TEST(ModelGraphCudaTest, DeviceSamplingIsTheHostSamplersBits) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = GpuConfig(/*qwen3=*/true);
  const TensorMap w = testing::RandomTensors(c, 5);
  auto m = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kGraphs);
  ASSERT_TRUE(m);
  for (bool adjust : {false, true}) {
    for (int n : {1, 7, 64, 200}) {
      SCOPED_TRACE("adjust=" + std::to_string(adjust) + " n=" + std::to_string(n));
      Batch b = MakeBatch(n, 20, 6, c.vocab_size, 900 + n, /*greedy=*/false);
      auto cache = m->CreateKvCache(NumPages(b), kPage);
      ASSERT_TRUE(cache.ok());
      auto pre = Prefill(*m, cache->get(), b, All(b));
      ASSERT_TRUE(pre.ok()) << pre.status();
      Append(&b, All(b), *pre);
      for (int step = 0; step < 3; ++step) {
        std::vector<int64_t> from;
        for (const auto& t : b.seqs) from.push_back(t.size() - 1);
        StepRequest req;
        req.return_logits = true;
        ForwardBatch f = StepBatch(b, All(b), from, &req);
        if (adjust) {
          // Penalties, a bias and a ban on every row (distinct ids, sorted).
          req.adjust_offsets.push_back(0);
          for (int r = 0; r < n; ++r) {
            for (int32_t id : {3, 11 + r % 7, 40}) {
              kernels::LogitAdjustment e;
              e.token = id;
              e.bias = 0.5f * (r % 3);
              e.repetition = 1.1f;
              e.subtract = 0.25f;
              e.banned = id == 40;
              req.adjustments.push_back(e);
            }
            req.adjust_offsets.push_back(req.adjustments.size());
          }
        }
        auto r = m->Step(f, cache->get(), req);
        ASSERT_TRUE(r.ok()) << r.status();
        ASSERT_EQ(r->logprobs.sampled.size(), static_cast<size_t>(n));
        std::vector<int32_t> tokens(n);
        std::vector<float> sampled(n);
        kernels::SampleArgs a;
        a.logits = r->logits.data();
        a.ld = c.vocab_size;
        a.rows = n;
        a.vocab = c.vocab_size;
        a.params = req.params.data();
        a.positions = req.positions.data();
        if (adjust) {
          a.adjust_offsets = req.adjust_offsets.data();
          a.adjustments = req.adjustments.data();
        }
        a.tokens_out = tokens.data();
        a.logprobs_out = sampled.data();
        ASSERT_TRUE(kernels::Sample(a).ok());
        EXPECT_EQ(r->tokens, tokens);
        EXPECT_TRUE(SameFloats(r->logprobs.sampled, sampled));
        Append(&b, All(b), *r);
      }
    }
  }
}

TEST(ModelGraphCudaTest, PaddingRowsNeverTouchOtherSequences) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = GpuConfig(true);
  const TensorMap w = testing::RandomTensors(c, 12);
  auto graphs = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kGraphs);
  auto eager = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kEager);
  ASSERT_TRUE(graphs && eager);
  Batch bg = MakeBatch(5, 20, 12, c.vocab_size, 7, /*greedy=*/false);
  // Sequences 0 and 1 (the ones that sit out) own pages 0 .. 2*blocks-1.
  for (int s = 0; s < 5; ++s) {
    for (int64_t k = 0; k < bg.blocks; ++k) bg.pages[s][k] = s * bg.blocks + k;
  }
  Batch be = bg;
  auto cg = graphs->CreateKvCache(NumPages(bg), kPage);
  auto ce = eager->CreateKvCache(NumPages(bg), kPage);
  ASSERT_TRUE(cg.ok() && ce.ok());
  auto pg = Prefill(*graphs, cg->get(), bg, All(bg));
  auto pe = Prefill(*eager, ce->get(), be, All(be));
  ASSERT_TRUE(pg.ok() && pe.ok());
  Append(&bg, All(bg), *pg);
  Append(&be, All(be), *pe);
  const std::vector<int> active = {2, 3, 4}, idle = {0, 1};
  for (int step = 0; step < 4; ++step) {
    auto dg = Decode(*graphs, cg->get(), bg, active, true);
    auto de = Decode(*eager, ce->get(), be, active, true);
    ASSERT_TRUE(dg.ok() && de.ok());
    EXPECT_TRUE(SameBits(*dg, *de)) << "active, step " << step;
    Append(&bg, active, *dg);
    Append(&be, active, *de);
  }
  for (int step = 0; step < 4; ++step) {
    auto dg = Decode(*graphs, cg->get(), bg, idle, true);
    auto de = Decode(*eager, ce->get(), be, idle, true);
    ASSERT_TRUE(dg.ok() && de.ok());
    EXPECT_TRUE(SameBits(*dg, *de)) << "idle, step " << step;
    Append(&bg, idle, *dg);
    Append(&be, idle, *de);
  }
  EXPECT_EQ(graphs->cuda_graph_stats().replays, 8);
}

// Greedy decode through graphs at batch 1, 5 (padded to 8) and 64 reports
// for every generated token the logprob that the full-sequence forward
// (Score: the learner's arithmetic) gives it, bit for bit. The standard-mode
// twin (same weights, prompts and options, also through graphs) differs.
TEST(ModelGraphCudaTest, GreedyGraphDecodeMatchesScore) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = GpuConfig(true);
  const TensorMap w = testing::RandomTensors(c, 13);
  // Contexts past one 64-key block: the standard set's batch-dependent
  // attention splits (and cuBLAS's shape-dependent kernels) then have
  // something to change; below it the two modes can agree by accident.
  constexpr int kPrompt = 100, kNew = 40;
  for (KernelMode mode : {KernelMode::kInvariant, KernelMode::kStandard}) {
    auto model = MakeModel(c, w, mode, CudaStep::kGraphs);
    ASSERT_NE(model, nullptr);
    int differing = 0;
    for (int batch : {1, 5, 64}) {
      SCOPED_TRACE("mode=" + std::string(KernelModeName(mode)) + " batch=" +
                   std::to_string(batch));
      Batch b = MakeBatch(batch, kPrompt, kNew, c.vocab_size, 500 + batch, /*greedy=*/true);
      std::mt19937_64 rng(9);
      b.seqs[0].resize(kPrompt);
      for (auto& x : b.seqs[0]) x = rng() % c.vocab_size;
      auto cache = model->CreateKvCache(NumPages(b), kPage);
      ASSERT_TRUE(cache.ok());
      std::vector<float> lp;
      auto first = Prefill(*model, cache->get(), b, All(b));
      ASSERT_TRUE(first.ok()) << first.status();
      lp.push_back(first->logprobs.target[0]);
      Append(&b, All(b), *first);
      for (int k = 1; k < kNew; ++k) {
        auto r = Decode(*model, cache->get(), b, All(b), false);
        ASSERT_TRUE(r.ok()) << r.status();
        lp.push_back(r->logprobs.target[0]);
        Append(&b, All(b), *r);
      }
      auto full = model->Score({b.seqs[0]}, {kPrompt});
      ASSERT_TRUE(full.ok()) << full.status();
      ASSERT_EQ((*full)[0].size(), lp.size());
      const bool same = std::memcmp(lp.data(), (*full)[0].data(), lp.size() * 4) == 0;
      if (mode == KernelMode::kInvariant) {
        EXPECT_TRUE(same);
      }
      differing += !same;
    }
    // Both modes decode through graphs (the serving standard set, cuBLAS and
    // FlashDecoding splits, is captured like the invariant one).
    EXPECT_EQ(model->cuda_graph_stats().replays, 3 * (kNew - 1));
    if (mode == KernelMode::kStandard) {
      EXPECT_GT(differing, 0);
    }
  }
}

// The number of graphs is capped (least recently used dropped) and their
// memory reported; with no capture memory allowed every step runs op by op,
// with the same bits.
TEST(ModelGraphCudaTest, CaptureMemoryIsBoundedAndReported) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = GpuConfig(false);
  const TensorMap w = testing::RandomTensors(c, 14);
  auto capped = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kGraphs, /*max_graphs=*/2);
  auto none = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kGraphs, 64, /*max_bytes=*/0);
  ASSERT_TRUE(capped && none);
  int64_t decode_steps = 0, prefill_steps = 0;
  // Per cache (graphs belong to one cache): all rows, row 0, rows 0-1, all
  // rows again; contexts stay within one page (block-table width 1). With
  // n = 3 and 5 that is three buckets for two graphs: 4, 1, 2 (drops 4),
  // 4 again (drops 1).
  for (int n : {1, 2, 3, 5, 1}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Batch b1 = MakeBatch(n, 10, 6, c.vocab_size, 40 + n, false);
    Batch b2 = b1;
    auto c1 = capped->CreateKvCache(NumPages(b1), kPage);
    auto c2 = none->CreateKvCache(NumPages(b2), kPage);
    ASSERT_TRUE(c1.ok() && c2.ok());
    auto p1 = Prefill(*capped, c1->get(), b1, All(b1));
    auto p2 = Prefill(*none, c2->get(), b2, All(b2));
    ASSERT_TRUE(p1.ok() && p2.ok());
    ++prefill_steps;
    Append(&b1, All(b1), *p1);
    Append(&b2, All(b2), *p2);
    std::vector<std::vector<int>> steps = {All(b1), {0}};
    if (n >= 2) steps.push_back({0, 1});
    steps.push_back(All(b1));
    for (const auto& which : steps) {
      auto d1 = Decode(*capped, c1->get(), b1, which, false);
      auto d2 = Decode(*none, c2->get(), b2, which, false);
      ASSERT_TRUE(d1.ok() && d2.ok()) << d1.status() << d2.status();
      EXPECT_TRUE(SameBits(*d1, *d2));
      Append(&b1, which, *d1);
      Append(&b2, which, *d2);
      ++decode_steps;
      EXPECT_LE(capped->cuda_graph_stats().graphs, 2);
    }
  }
  const CudaGraphStats s = capped->cuda_graph_stats();
  EXPECT_LE(s.graphs, 2);
  EXPECT_EQ(s.captures, 1 + 2 + 4 + 4 + 1);
  EXPECT_EQ(s.replays, decode_steps);
  EXPECT_GT(s.capture_bytes, 0);
  EXPECT_LT(s.capture_bytes, int64_t{1} << 30);
  const CudaGraphStats z = none->cuda_graph_stats();
  EXPECT_EQ(z.captures, 0);
  EXPECT_EQ(z.replays, 0);
  EXPECT_EQ(z.eager_steps, prefill_steps + decode_steps);
}

// Bad ids and parameters of a graph-shaped step are rejected on the host
// (INVALID_ARGUMENT) before anything is copied; the next good step runs.
TEST(ModelGraphCudaTest, BadInputsStayInvalidArgument) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const ModelConfig c = GpuConfig(false);
  const TensorMap w = testing::RandomTensors(c, 15);
  auto model = MakeModel(c, w, KernelMode::kInvariant, CudaStep::kGraphs);
  ASSERT_NE(model, nullptr);
  Batch b = MakeBatch(4, 10, 4, c.vocab_size, 3, false);
  auto cache = model->CreateKvCache(NumPages(b), kPage);
  ASSERT_TRUE(cache.ok());
  auto p = Prefill(*model, cache->get(), b, All(b));
  ASSERT_TRUE(p.ok());
  Append(&b, All(b), *p);
  auto decode_with = [&](auto edit) {
    std::vector<int64_t> from;
    for (const auto& s : b.seqs) from.push_back(s.size() - 1);
    StepRequest req;
    ForwardBatch f = StepBatch(b, All(b), from, &req);
    edit(f, req);
    return model->Step(f, cache->get(), req).status();
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(absl::IsInvalidArgument(
      decode_with([&](ForwardBatch& f, StepRequest&) { f.tokens[1] = c.vocab_size; })));
  EXPECT_TRUE(absl::IsInvalidArgument(
      decode_with([&](ForwardBatch& f, StepRequest&) { f.tokens[2] = -1; })));
  EXPECT_TRUE(absl::IsInvalidArgument(
      decode_with([&](ForwardBatch&, StepRequest& r) { r.params[0].temperature = nan; })));
  EXPECT_TRUE(absl::IsInvalidArgument(
      decode_with([&](ForwardBatch&, StepRequest& r) { r.params[3].top_p = 0.0f; })));
  EXPECT_TRUE(absl::IsInvalidArgument(
      decode_with([&](ForwardBatch&, StepRequest& r) { r.params[1].top_k = -2; })));
  EXPECT_TRUE(absl::IsInvalidArgument(decode_with([&](ForwardBatch& f, StepRequest&) {
    f.slots[0] = int64_t{static_cast<int32_t>(NumPages(b))} * kPage;  // the scratch page
  })));
  EXPECT_TRUE(absl::IsInvalidArgument(decode_with([&](ForwardBatch& f, StepRequest&) {
    f.block_tables[0] = static_cast<int32_t>(NumPages(b));  // the scratch page
  })));
  EXPECT_EQ(model->cuda_graph_stats().replays, 0);
  EXPECT_TRUE(decode_with([](ForwardBatch&, StepRequest&) {}).ok());
  EXPECT_EQ(model->cuda_graph_stats().replays, 1);
}

}  // namespace
}  // namespace lockstep::common
