// The main() of every lockstep test binary. Like gtest_main, plus one rule:
// a binary in which every test that ran was skipped (GTEST_SKIP, e.g. a CUDA
// test on a machine without a GPU) exits with kSkipReturnCode, which CTest's
// SKIP_RETURN_CODE turns into "Skipped" instead of "Passed" — so the summary
// of `make test` counts skips rather than reporting them as passes.
#include "gtest/gtest.h"

namespace {

// Matches SKIP_RETURN_CODE in cmake/LockstepTest.cmake (77: the automake
// convention for a skipped test).
constexpr int kSkipReturnCode = 77;

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  if (result == 0 && unit.test_to_run_count() > 0 &&
      unit.skipped_test_count() == unit.test_to_run_count()) {
    return kSkipReturnCode;
  }
  return result;
}
