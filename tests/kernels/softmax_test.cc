// Tests of the tree log-softmax (kernels/softmax.h): accuracy against
// float64, the contract's segment tree bit for bit, vocabulary-parallel
// splits t = 1, 2, 4, 8 equal to the single call, tiny vocabularies with
// empty segments, batch invariance, argument checks, and a sequential-sum
// "standard twin" that differs from the tree.

#include "kernels/softmax.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/threading.h"
#include "kernels/tree_reduce.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;
using ::lockstep::testing::RandomInts;

struct Out {
  std::vector<float> lse, logprobs, target_logprobs;
};

Out RunLogSoftmax(const std::vector<float>& logits, int64_t ld, int64_t rows,
                  int64_t vocab, const std::vector<int32_t>& targets) {
  Out o;
  o.lse.assign(rows, 0.0f);
  o.logprobs.assign(rows * vocab, 0.0f);
  o.target_logprobs.assign(rows, 0.0f);
  LogSoftmaxArgs a;
  a.logits = logits.data();
  a.ld = ld;
  a.rows = rows;
  a.vocab = vocab;
  a.targets = targets.empty() ? nullptr : targets.data();
  a.target_logprobs = o.target_logprobs.data();
  a.logprobs = o.logprobs.data();
  a.ld_out = vocab;
  a.lse = o.lse.data();
  EXPECT_TRUE(LogSoftmax(a).ok());
  return o;
}

// The contract, written out: 8 segments, sequential per segment, the fixed
// tree on top.
float ContractLse(const float* x, int64_t vocab) {
  float m[8], z[8];
  for (int s = 0; s < 8; ++s) {
    const int64_t lo = s * vocab / 8, hi = (s + 1) * vocab / 8;
    m[s] = -INFINITY;
    for (int64_t j = lo; j < hi; ++j) m[s] = std::max(m[s], x[j]);
    z[s] = 0.0f;
    if (m[s] == -INFINITY) continue;
    for (int64_t j = lo; j < hi; ++j) z[s] = z[s] + expf(x[j] - m[s]);
  }
  auto combine = [](float ma, float za, float mb, float zb, float& mo,
                    float& zo) {
    mo = std::max(ma, mb);
    const float ta = ma == -INFINITY ? 0.0f : za * expf(ma - mo);
    const float tb = mb == -INFINITY ? 0.0f : zb * expf(mb - mo);
    zo = ta + tb;
  };
  for (int width = 8; width > 1; width /= 2) {
    for (int i = 0; i < width / 2; ++i) {
      combine(m[2 * i], z[2 * i], m[2 * i + 1], z[2 * i + 1], m[i], z[i]);
    }
  }
  return m[0] + logf(z[0]);
}

// The standard twin: one max and one sequential sum over the whole row.
float SequentialLse(const float* x, int64_t vocab) {
  float m = -INFINITY;
  for (int64_t j = 0; j < vocab; ++j) m = std::max(m, x[j]);
  float z = 0.0f;
  for (int64_t j = 0; j < vocab; ++j) z = z + expf(x[j] - m);
  return m + logf(z);
}

double Float64Lse(const float* x, int64_t vocab) {
  double m = -INFINITY;
  for (int64_t j = 0; j < vocab; ++j) m = std::max(m, double{x[j]});
  double z = 0;
  for (int64_t j = 0; j < vocab; ++j) z += std::exp(x[j] - m);
  return m + std::log(z);
}

class SoftmaxShapes : public ::testing::TestWithParam<std::array<int64_t, 3>> {
};

TEST_P(SoftmaxShapes, AccurateAndContractBits) {
  const auto [rows, vocab, ld] = GetParam();
  const auto x = RandomFloats(rows * ld, 7 + vocab, -15.0f, 15.0f);
  const auto targets = RandomInts(rows, 8 + vocab, 0, vocab - 1);
  const Out o = RunLogSoftmax(x, ld, rows, vocab, targets);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * ld;
    const float expect = ContractLse(xr, vocab);
    EXPECT_EQ(std::memcmp(&o.lse[r], &expect, 4), 0) << "row " << r;
    const double ref = Float64Lse(xr, vocab);
    EXPECT_NEAR(o.lse[r], ref, 4e-6 * std::max(1.0, std::fabs(ref)));
    double mass = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const float lp = o.logprobs[r * vocab + j];
      EXPECT_EQ(lp, xr[j] - o.lse[r]);
      EXPECT_NEAR(lp, xr[j] - ref,
                  4e-6 * (std::max(1.0, std::fabs(ref)) + std::fabs(lp)));
      mass += std::exp(double{lp});
    }
    EXPECT_NEAR(mass, 1.0, 5e-5) << "row " << r;
    const float tl = o.target_logprobs[r];
    const float lp_t = o.logprobs[r * vocab + targets[r]];
    EXPECT_EQ(std::memcmp(&tl, &lp_t, 4), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SoftmaxShapes,
    ::testing::Values(std::array<int64_t, 3>{1, 1, 1},
                      std::array<int64_t, 3>{3, 3, 5},
                      std::array<int64_t, 3>{4, 7, 7},
                      std::array<int64_t, 3>{5, 8, 9},
                      std::array<int64_t, 3>{2, 13, 13},
                      std::array<int64_t, 3>{6, 1001, 1010},
                      std::array<int64_t, 3>{3, 32000, 32000},
                      std::array<int64_t, 3>{2, 151936, 151936}));

TEST(LogSoftmax, TinyVocabulariesHaveNoNaN) {
  // V < 8 leaves some segments empty (max -inf, sum 0); combining two empty
  // segments must not produce NaN.
  for (int64_t vocab = 1; vocab <= 9; ++vocab) {
    const auto x = RandomFloats(vocab, vocab, -3.0f, 3.0f);
    const Out o = RunLogSoftmax(x, vocab, 1, vocab, {});
    ASSERT_TRUE(std::isfinite(o.lse[0])) << vocab;
    EXPECT_NEAR(o.lse[0], Float64Lse(x.data(), vocab), 1e-6);
  }
  const std::vector<float> one = {2.5f};
  EXPECT_EQ(RunLogSoftmax(one, 1, 1, 1, {}).lse[0], 2.5f);
}

TEST(LogSoftmax, NegativeInfinityLogits) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x(40, -inf);
  x[3] = 1.0f;
  x[33] = 1.0f;  // whole segments of -inf around two finite logits
  const Out o = RunLogSoftmax(x, 40, 1, 40, {});
  EXPECT_FLOAT_EQ(o.lse[0], 1.0f + std::log(2.0f));
  EXPECT_EQ(o.logprobs[0], -inf);
  EXPECT_FLOAT_EQ(o.logprobs[3], -std::log(2.0f));
}

TEST(LogSoftmax, OutputsAreOptional) {
  const auto x = RandomFloats(3 * 50, 1);
  const Out full = RunLogSoftmax(x, 50, 3, 50, {0, 1, 2});
  std::vector<float> lse(3);
  LogSoftmaxArgs a;
  a.logits = x.data();
  a.ld = 50;
  a.rows = 3;
  a.vocab = 50;
  a.lse = lse.data();
  ASSERT_TRUE(LogSoftmax(a).ok());
  EXPECT_TRUE(testing::SameBits(lse, full.lse));
}

TEST(LogSoftmax, VocabParallelSplitsEqualSingleCall) {
  for (int64_t vocab : {1, 3, 7, 8, 13, 1001, 4096, 50257}) {
    const int64_t rows = 5;
    const auto x = RandomFloats(rows * vocab, 100 + vocab, -20.0f, 20.0f);
    const Out single = RunLogSoftmax(x, vocab, rows, vocab, {});
    for (int t : {1, 2, 4, 8}) {
      std::vector<SoftmaxStats> gathered(t * rows);
      for (int r = 0; r < t; ++r) {
        const int seg_begin = r * kTreeLeaves / t;
        const int seg_count = kTreeLeaves / t;
        const int64_t lo = seg_begin * vocab / kTreeLeaves;
        const int64_t hi = (seg_begin + seg_count) * vocab / kTreeLeaves;
        // The rank's own shard, with its own padded stride.
        const int64_t local = hi - lo, ld = local + 3;
        std::vector<float> shard(rows * ld, 99.0f);
        for (int64_t i = 0; i < rows; ++i) {
          std::memcpy(shard.data() + i * ld, x.data() + i * vocab + lo,
                      local * 4);
        }
        SegmentStatsArgs a;
        a.logits = shard.data();
        a.ld = ld;
        a.rows = rows;
        a.vocab_total = vocab;
        a.seg_begin = seg_begin;
        a.seg_count = seg_count;
        a.stats_out = gathered.data() + r * rows;
        ASSERT_TRUE(SegmentStats(a).ok());
      }
      std::vector<float> lse(rows);
      ASSERT_TRUE(
          CombineSegmentStats(gathered.data(), t, rows, lse.data()).ok());
      for (float v : lse) EXPECT_FALSE(std::isnan(v));
      EXPECT_TRUE(testing::SameBits(lse, single.lse))
          << "vocab " << vocab << " t " << t;
    }
  }
}

TEST(LogSoftmax, BatchAndThreadInvariant) {
  const int64_t vocab = 3001;
  const auto row = RandomFloats(vocab, 5, -10.0f, 10.0f);
  const Out alone = RunLogSoftmax(row, vocab, 1, vocab, {17});
  std::mt19937 rng(3);
  const int saved = NumThreads();
  for (int64_t batch = 1; batch <= 64; ++batch) {
    SetNumThreads(1 + batch % 4);
    auto x = RandomFloats(batch * vocab, 50 + batch, -10.0f, 10.0f);
    const int64_t at =
        std::uniform_int_distribution<int64_t>(0, batch - 1)(rng);
    std::memcpy(x.data() + at * vocab, row.data(), vocab * 4);
    auto targets = RandomInts(batch, batch, 0, vocab - 1);
    targets[at] = 17;
    const Out o = RunLogSoftmax(x, vocab, batch, vocab, targets);
    EXPECT_EQ(std::memcmp(&o.lse[at], &alone.lse[0], 4), 0);
    EXPECT_EQ(std::memcmp(&o.target_logprobs[at], &alone.target_logprobs[0], 4),
              0);
    EXPECT_EQ(std::memcmp(o.logprobs.data() + at * vocab, alone.logprobs.data(),
                          vocab * 4),
              0);
  }
  SetNumThreads(saved);
}

TEST(LogSoftmax, SequentialSumTwinDiffers) {
  // The standard order (one sequential sum over the row) is as accurate but
  // differs in bits from the tree for some row, so the bitwise tests above
  // can fail.
  const int64_t rows = 64, vocab = 32000;
  const auto x = RandomFloats(rows * vocab, 2024, -8.0f, 8.0f);
  const Out o = RunLogSoftmax(x, vocab, rows, vocab, {});
  int differing = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float seq = SequentialLse(x.data() + r * vocab, vocab);
    differing += std::memcmp(&seq, &o.lse[r], 4) != 0;
    EXPECT_NEAR(seq, Float64Lse(x.data() + r * vocab, vocab), 1e-4);
  }
  EXPECT_GT(differing, 0);
}

TEST(LogSoftmax, BadArguments) {
  const auto x = RandomFloats(2 * 10, 1);
  std::vector<float> lse(2), tl(2), lp(20);
  std::vector<int32_t> targets = {0, 9};
  LogSoftmaxArgs good;
  good.logits = x.data();
  good.ld = 10;
  good.rows = 2;
  good.vocab = 10;
  good.targets = targets.data();
  good.target_logprobs = tl.data();
  good.logprobs = lp.data();
  good.ld_out = 10;
  good.lse = lse.data();
  ASSERT_TRUE(LogSoftmax(good).ok());
  auto invalid = [](const absl::Status& s, const char* what) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what;
  };
  LogSoftmaxArgs a = good;
  a.logits = nullptr;
  invalid(LogSoftmax(a), "null logits");
  a = good;
  a.ld = 9;
  invalid(LogSoftmax(a), "ld < vocab");
  a = good;
  a.vocab = 0;
  invalid(LogSoftmax(a), "vocab 0");
  a = good;
  a.rows = -1;
  invalid(LogSoftmax(a), "rows < 0");
  a = good;
  a.target_logprobs = nullptr;
  invalid(LogSoftmax(a), "targets without target_logprobs");
  a = good;
  a.ld_out = 5;
  invalid(LogSoftmax(a), "ld_out < vocab");
  for (int32_t bad : {-1, 10}) {
    std::vector<int32_t> bad_targets = {1, bad};
    std::vector<float> lse2(2, 5.0f);
    a = good;
    a.targets = bad_targets.data();
    a.lse = lse2.data();
    invalid(LogSoftmax(a), "target out of range");
    EXPECT_EQ(lse2[0], 5.0f) << "nothing written on error";
  }

  std::vector<SoftmaxStats> stats(2);
  SegmentStatsArgs s;
  s.logits = x.data();
  s.ld = 10;
  s.rows = 2;
  s.vocab_total = 20;
  s.seg_begin = 4;
  s.seg_count = 4;
  s.stats_out = stats.data();
  ASSERT_TRUE(SegmentStats(s).ok());
  SegmentStatsArgs sb = s;
  sb.seg_count = 3;
  invalid(SegmentStats(sb), "seg_count 3");
  sb = s;
  sb.seg_begin = 2;
  invalid(SegmentStats(sb), "misaligned subtree");
  sb = s;
  sb.seg_begin = 8;
  sb.seg_count = 1;
  invalid(SegmentStats(sb), "past the last leaf");
  sb = s;
  sb.seg_begin = -1;
  sb.seg_count = 1;
  invalid(SegmentStats(sb), "negative seg_begin");
  sb = s;
  sb.ld = 9;
  invalid(SegmentStats(sb), "ld < local width");
  sb = s;
  sb.logits = nullptr;
  invalid(SegmentStats(sb), "null logits");
  sb = s;
  sb.stats_out = nullptr;
  invalid(SegmentStats(sb), "null stats_out");
  sb = s;
  sb.vocab_total = 0;
  invalid(SegmentStats(sb), "vocab_total 0");

  std::vector<float> out(2);
  std::vector<SoftmaxStats> g(8 * 2, SoftmaxStats{0.0f, 1.0f});
  ASSERT_TRUE(CombineSegmentStats(g.data(), 8, 2, out.data()).ok());
  invalid(CombineSegmentStats(g.data(), 3, 2, out.data()), "t = 3");
  invalid(CombineSegmentStats(g.data(), 16, 2, out.data()), "t = 16");
  invalid(CombineSegmentStats(nullptr, 2, 2, out.data()), "null gathered");
  invalid(CombineSegmentStats(g.data(), 2, 2, nullptr), "null lse_out");
  invalid(CombineSegmentStats(g.data(), 2, -1, out.data()), "rows < 0");

  if (!CudaKernelsBuilt()) {
    const ExecContext cuda{Device::kCuda, nullptr};
    EXPECT_EQ(LogSoftmax(good, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(SegmentStats(s, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(CombineSegmentStats(g.data(), 8, 2, out.data(), cuda).code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lockstep::kernels
