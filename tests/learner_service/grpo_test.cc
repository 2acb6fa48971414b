#include "learner_service/grpo.h"

#include <cmath>

#include "gtest/gtest.h"

namespace lockstep::learner {
namespace {

TEST(GroupRelativeAdvantagesTest, NormalisesWithinGroups) {
  const std::vector<float> rewards = {1, 2, 3, 10, 10, 0.5f};
  const std::vector<int64_t> groups = {0, 0, 0, 1, 1, 2};
  AdvantageOptions o;
  o.epsilon = 0.0;
  const std::vector<float> a = GroupRelativeAdvantages(rewards, groups, o);
  ASSERT_EQ(a.size(), 6u);
  const double sd = std::sqrt(2.0 / 3.0);
  EXPECT_FLOAT_EQ(a[0], static_cast<float>(-1.0 / sd));
  EXPECT_FLOAT_EQ(a[1], 0.0f);
  EXPECT_FLOAT_EQ(a[2], static_cast<float>(1.0 / sd));
  // Equal rewards and singleton groups: exactly zero.
  EXPECT_EQ(a[3], 0.0f);
  EXPECT_EQ(a[4], 0.0f);
  EXPECT_EQ(a[5], 0.0f);
}

TEST(GroupRelativeAdvantagesTest, UnscaledAndInterleavedGroups) {
  const std::vector<float> rewards = {1, 5, 3, 7};
  const std::vector<int64_t> groups = {4, 9, 4, 9};
  AdvantageOptions o;
  o.scale_by_std = false;
  const std::vector<float> a = GroupRelativeAdvantages(rewards, groups, o);
  EXPECT_FLOAT_EQ(a[0], -1.0f);
  EXPECT_FLOAT_EQ(a[1], -1.0f);
  EXPECT_FLOAT_EQ(a[2], 1.0f);
  EXPECT_FLOAT_EQ(a[3], 1.0f);
}

TEST(GroupRelativeAdvantagesTest, ZeroMeanPerGroup) {
  std::vector<float> rewards;
  std::vector<int64_t> groups;
  for (int g = 0; g < 5; ++g) {
    for (int i = 0; i < 8; ++i) {
      rewards.push_back(static_cast<float>((g * 37 + i * 11) % 13) / 13.0f);
      groups.push_back(g);
    }
  }
  const std::vector<float> a = GroupRelativeAdvantages(rewards, groups, {});
  for (int g = 0; g < 5; ++g) {
    double sum = 0, sq = 0;
    for (int i = 0; i < 8; ++i) {
      sum += a[g * 8 + i];
      sq += a[g * 8 + i] * a[g * 8 + i];
    }
    EXPECT_NEAR(sum, 0.0, 1e-5);
    EXPECT_NEAR(sq / 8.0, 1.0, 1e-3);  // unit variance (epsilon aside)
  }
}

TEST(GroupIndicesTest, FirstAppearanceOrder) {
  EXPECT_EQ(GroupIndices({"b", "a", "b", "c", "a"}),
            (std::vector<int64_t>{0, 1, 0, 2, 1}));
}

TEST(RewardStatsTest, Moments) {
  RewardStats s = ComputeRewardStats({1, 2, 3, 4});
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_DOUBLE_EQ(s.std, std::sqrt(1.25));
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 4);
  RewardStats e = ComputeRewardStats({});
  EXPECT_EQ(e.mean, 0.0);
}

}  // namespace
}  // namespace lockstep::learner
