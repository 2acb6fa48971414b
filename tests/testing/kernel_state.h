// A test fixture that restores the CPU kernels' global thread count and SIMD
// level after each test, so tests that change them stay independent.
#ifndef LOCKSTEP_TESTS_TESTING_KERNEL_STATE_H_
#define LOCKSTEP_TESTS_TESTING_KERNEL_STATE_H_

#include <gtest/gtest.h>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"

namespace lockstep::testing {

class KernelStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_threads_ = kernels::NumThreads();
    saved_level_ = kernels::ActiveSimdLevel();
  }
  void TearDown() override {
    kernels::SetNumThreads(saved_threads_);
    ASSERT_TRUE(kernels::SetSimdLevel(saved_level_).ok());
  }

 private:
  int saved_threads_ = 1;
  kernels::SimdLevel saved_level_ = kernels::SimdLevel::kScalar;
};

}  // namespace lockstep::testing

#endif  // LOCKSTEP_TESTS_TESTING_KERNEL_STATE_H_
