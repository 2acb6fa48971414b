#include "rollout_service/block_manager.h"

#include <set>

#include "gtest/gtest.h"

namespace lockstep::rollout {
namespace {

TEST(BlockManagerTest, AllocatesDistinctPagesUntilExhausted) {
  BlockManager bm(8, 16);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_EQ(bm.PagesFor(0), 0);
  EXPECT_EQ(bm.PagesFor(1), 1);
  EXPECT_EQ(bm.PagesFor(16), 1);
  EXPECT_EQ(bm.PagesFor(17), 2);
  auto a = bm.Allocate(5);
  ASSERT_TRUE(a.ok());
  auto b = bm.Allocate(3);
  ASSERT_TRUE(b.ok());
  std::set<int32_t> all(a->begin(), a->end());
  all.insert(b->begin(), b->end());
  EXPECT_EQ(all.size(), 8u);
  for (int32_t p : all) {
    EXPECT_GE(p, 0);
    EXPECT_LT(p, 8);
    EXPECT_EQ(bm.ref_count(p), 1);
  }
  EXPECT_EQ(bm.num_free(), 0);
  EXPECT_DOUBLE_EQ(bm.usage(), 1.0);
  auto c = bm.Allocate(1);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  bm.Release(*a);
  EXPECT_EQ(bm.num_free(), 5);
  EXPECT_TRUE(bm.CanAllocate(5));
  EXPECT_FALSE(bm.CanAllocate(6));
}

TEST(BlockManagerTest, SharedPagesFreeAtLastRelease) {
  BlockManager bm(4, 2);
  auto a = bm.Allocate(2);
  ASSERT_TRUE(a.ok());
  bm.AddRef((*a)[0]);
  bm.AddRef((*a)[0]);
  EXPECT_EQ(bm.ref_count((*a)[0]), 3);
  bm.Release(*a);
  EXPECT_EQ(bm.num_free(), 3);  // (*a)[1] free, (*a)[0] still shared
  bm.Release((*a)[0]);
  EXPECT_EQ(bm.num_free(), 3);
  bm.Release((*a)[0]);
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.ref_count((*a)[0]), 0);
}

TEST(BlockManagerTest, FailedAllocationTakesNothing) {
  BlockManager bm(3, 4);
  auto a = bm.Allocate(2);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(bm.Allocate(2).ok());
  EXPECT_EQ(bm.num_free(), 1);
}

TEST(BlockManagerDeathTest, ReleasingAFreePageAborts) {
  BlockManager bm(2, 4);
  EXPECT_DEATH(bm.Release(0), "");
  EXPECT_DEATH(bm.AddRef(1), "");
}

}  // namespace
}  // namespace lockstep::rollout
