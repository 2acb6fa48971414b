// Tests of the run-time SIMD level selection (kernels/cpu/simd.h).

#include "kernels/cpu/simd.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace lockstep::kernels {
namespace {

TEST(SimdTest, NamesRoundTrip) {
  for (SimdLevel level :
       {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    absl::StatusOr<SimdLevel> parsed = ParseSimdLevel(SimdLevelName(level));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, level);
  }
  EXPECT_EQ(SimdLevelName(SimdLevel::kAvx2), "avx2");
  EXPECT_EQ(ParseSimdLevel("sse").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSimdLevel("").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSimdLevel("AVX2").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SimdTest, DetectMatchesCpuid) {
  __builtin_cpu_init();
  SimdLevel want = SimdLevel::kScalar;
  if (__builtin_cpu_supports("avx512f")) {
    want = SimdLevel::kAvx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    want = SimdLevel::kAvx2;
  }
  EXPECT_EQ(DetectSimdLevel(), want);
}

TEST(SimdTest, SetLevelUpToDetected) {
  const SimdLevel saved = ActiveSimdLevel();
  const int detected = static_cast<int>(DetectSimdLevel());
  EXPECT_LE(static_cast<int>(saved), detected);
  for (int l = 0; l <= 2; ++l) {
    const absl::Status s = SetSimdLevel(static_cast<SimdLevel>(l));
    if (l <= detected) {
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_EQ(ActiveSimdLevel(), static_cast<SimdLevel>(l));
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_EQ(ActiveSimdLevel(), static_cast<SimdLevel>(l - 1));
    }
  }
  ASSERT_TRUE(SetSimdLevel(saved).ok());
}

// The environment is read once, at first use, so these run in a fresh
// process (threadsafe death-test style re-executes the binary).
TEST(SimdDeathTest, EnvironmentPicksTheLevel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("LOCKSTEP_SIMD", "scalar", 1);
        std::exit(ActiveSimdLevel() == SimdLevel::kScalar ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(SimdDeathTest, EnvironmentIsCappedAtDetected) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("LOCKSTEP_SIMD", "avx512", 1);
        std::exit(ActiveSimdLevel() == DetectSimdLevel() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(SimdDeathTest, UnknownEnvironmentValueWarnsAndUsesDetected) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("LOCKSTEP_SIMD", "neon", 1);
        std::exit(ActiveSimdLevel() == DetectSimdLevel() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "ignoring LOCKSTEP_SIMD=neon");
}

}  // namespace
}  // namespace lockstep::kernels
