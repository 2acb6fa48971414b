#include "learner_service/mismatch.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace lockstep::learner {
namespace {

TEST(MismatchTest, IdenticalLogprobsAreExact) {
  const std::vector<float> lp = {-0.5f, -1.25f, -3.0f, -1e-8f};
  MismatchStats s;
  CompareLogprobs(lp.data(), lp.data(), 4, &s);
  EXPECT_EQ(s.tokens_compared, 4);
  EXPECT_EQ(s.tokens_mismatched, 0);
  EXPECT_EQ(s.max_abs_diff, 0.0);
  EXPECT_EQ(s.kl_k3(), 0.0);
  EXPECT_EQ(s.bucket_counts[0], 4);  // le="0"
  EXPECT_EQ(s.exact_fraction(), 1.0);
}

TEST(MismatchTest, BucketsMaxAndK3) {
  const std::vector<float> learner = {-1.0f, -1.0f, -1.0f, -2.0f};
  const std::vector<float> rollout = {-1.0f, std::nextafter(-1.0f, 0.0f),
                                      -1.0005f, -1.5f};
  MismatchStats s;
  CompareLogprobs(learner.data(), rollout.data(), 4, &s);
  EXPECT_EQ(s.tokens_compared, 4);
  EXPECT_EQ(s.tokens_mismatched, 3);
  EXPECT_EQ(s.bucket_counts[0], 1);  // exact
  EXPECT_EQ(s.bucket_counts[1], 1);  // one ulp ~ 6e-8 <= 1e-7
  EXPECT_EQ(s.bucket_counts[5], 1);  // ~5e-4 <= 1e-3
  EXPECT_EQ(s.bucket_counts[8], 1);  // 0.5 <= 1
  EXPECT_NEAR(s.max_abs_diff, 0.5, 1e-7);
  // k3 of the last token: r = exp(-0.5); r - 1 - log r.
  double want = 0;
  for (int i = 0; i < 4; ++i) {
    const double d = static_cast<double>(learner[i]) - rollout[i];
    want += std::exp(d) - 1.0 - d;
  }
  EXPECT_NEAR(s.kl_k3(), want / 4.0, 1e-12);
  EXPECT_GT(s.kl_k3(), 0.0);
}

TEST(MismatchTest, NanAndOverflowAndMerge) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> learner = {-1.0f, -10.0f};
  const std::vector<float> rollout = {nan, -1.0f};
  MismatchStats s;
  CompareLogprobs(learner.data(), rollout.data(), 2, &s);
  EXPECT_EQ(s.tokens_mismatched, 2);
  EXPECT_EQ(s.overflow, 2);
  EXPECT_TRUE(std::isnan(s.max_abs_diff));
  MismatchStats t;
  t.tokens_stale = 5;
  t.tokens_compared = 1;
  t.bucket_counts[0] = 1;
  t.Merge(s);
  EXPECT_EQ(t.tokens_compared, 3);
  EXPECT_EQ(t.tokens_stale, 5);
  EXPECT_EQ(t.overflow, 2);
  EXPECT_EQ(t.bucket_counts[0], 1);
}

}  // namespace
}  // namespace lockstep::learner
