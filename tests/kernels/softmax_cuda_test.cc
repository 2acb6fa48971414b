// CUDA log-softmax: accuracy against float64, batch invariance and identical
// bits for vocabulary-parallel splits t = 1, 2, 4, 8. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "tests/testing/cuda_test_util.h"
#include "tests/testing/random.h"
#include "kernels/cuda/softmax.h"
#include "kernels/softmax.h"

namespace lockstep::kernels {
namespace {


TEST(SoftmaxCudaTest, AccurateBatchInvariantAndVocabParallelInvariant) {
  SKIP_WITHOUT_GPU();
  for (int64_t vocab : {151936L, 1000L, 13L}) {
    const int64_t rows = 40;
    std::vector<float> x = testing::RandomFloats(rows * vocab, vocab, -8.0f, 8.0f);
    if (vocab > 100) {
      for (int64_t j = 0; j < vocab / 8; ++j) x[3 * vocab + j] = -INFINITY;  // an all -inf segment
    }
    DevBuf<float> dx(x);
    std::vector<int32_t> tg = testing::RandomInts(rows, 3, 0, static_cast<int32_t>(vocab - 1));
    DevBuf<int32_t> dtg(tg);
    auto run = [&](int64_t row0, int64_t nrows, std::vector<float>* logprobs) {
      DevBuf<float> lse(nrows), tl(nrows), lp(nrows * vocab);
      lse.Poison();
      LogSoftmaxArgs a;
      a.logits = dx.get() + row0 * vocab;
      a.ld = vocab;
      a.rows = nrows;
      a.vocab = vocab;
      a.targets = dtg.get() + row0;
      a.target_logprobs = tl.get();
      a.logprobs = lp.get();
      a.ld_out = vocab;
      a.lse = lse.get();
      absl::Status s = cuda::LogSoftmax(a, nullptr);
      EXPECT_TRUE(s.ok()) << s;
      if (logprobs != nullptr) *logprobs = lp.Download();
      std::vector<float> l = lse.Download();
      std::vector<float> t = tl.Download();
      l.insert(l.end(), t.begin(), t.end());
      return l;
    };
    std::vector<float> lp;
    const std::vector<float> all = run(0, rows, &lp);
    // Accuracy of lse against float64.
    std::vector<double> ref(rows);
    std::vector<float> got(rows);
    for (int64_t r = 0; r < rows; ++r) {
      double m = -1e300, z = 0;
      for (int64_t j = 0; j < vocab; ++j) m = std::max(m, double(x[r * vocab + j]));
      for (int64_t j = 0; j < vocab; ++j) z += std::exp(double(x[r * vocab + j]) - m);
      ref[r] = m + std::log(z);
      got[r] = all[r];
      EXPECT_EQ(all[rows + r], x[r * vocab + tg[r]] - all[r]);
      EXPECT_EQ(lp[r * vocab + 1 % vocab], x[r * vocab + 1 % vocab] - all[r]);
    }
    EXPECT_LE(RelErr(ref, got), 1e-5) << vocab;
    // Batch invariance: each row alone.
    for (int64_t r = 0; r < rows; r += 7) {
      const std::vector<float> one = run(r, 1, nullptr);
      EXPECT_EQ(std::memcmp(&one[0], &all[r], sizeof(float)), 0) << r;
    }
    // Vocabulary-parallel: t ranks, each with its whole segments.
    for (int t : {1, 2, 4, 8}) {
      DevBuf<SoftmaxStats> gathered(t * rows);
      for (int rank = 0; rank < t; ++rank) {
        const int seg_count = kTreeLeaves / t;
        const int seg_begin = rank * seg_count;
        SegmentStatsArgs a;
        a.logits = dx.get() + seg_begin * vocab / kTreeLeaves;
        a.ld = vocab;
        a.rows = rows;
        a.vocab_total = vocab;
        a.seg_begin = seg_begin;
        a.seg_count = seg_count;
        a.stats_out = gathered.get() + rank * rows;
        ASSERT_TRUE(cuda::SegmentStats(a, nullptr).ok());
      }
      DevBuf<float> lse(rows);
      ASSERT_TRUE(cuda::CombineSegmentStats(gathered.get(), t, rows, lse.get(), nullptr).ok());
      const std::vector<float> l = lse.Download();
      EXPECT_EQ(std::memcmp(l.data(), all.data(), rows * sizeof(float)), 0) << "t=" << t;
    }
  }
}

TEST(SoftmaxCudaTest, BadTargetIsInvalidArgument) {
  SKIP_WITHOUT_GPU();
  DevBuf<float> x(testing::RandomFloats(2 * 10, 1));
  DevBuf<int32_t> tg(std::vector<int32_t>{3, 10});
  DevBuf<float> tl(2);
  LogSoftmaxArgs a;
  a.logits = x.get();
  a.ld = 10;
  a.rows = 2;
  a.vocab = 10;
  a.targets = tg.get();
  a.target_logprobs = tl.get();
  EXPECT_EQ(cuda::LogSoftmax(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lockstep::kernels
