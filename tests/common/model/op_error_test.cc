// A kernel's absl::Status crosses LibTorch with its code (common/op_error.h):
// a kernel's INVALID_ARGUMENT reaches the caller as INVALID_ARGUMENT, not
// INTERNAL.
#include "common/model/op_error.h"

#include <stdexcept>

#include <torch/torch.h>

#include "common/model/kernel_mode.h"
#include "common/model/torch_ops.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

using ::testing::HasSubstr;

TEST(OpErrorTest, RoundTripsEveryCode) {
  for (absl::StatusCode code :
       {absl::StatusCode::kInvalidArgument, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kFailedPrecondition, absl::StatusCode::kOutOfRange}) {
    try {
      ThrowStatus(absl::Status(code, "bad thing"));
      FAIL() << "no throw";
    } catch (const std::exception& e) {
      const absl::Status s = StatusFromException(e, "forward");
      EXPECT_EQ(s.code(), code);
      EXPECT_EQ(s.message(), "forward: bad thing");
    }
  }
  const absl::Status other = StatusFromException(std::runtime_error("boom"), "step");
  EXPECT_EQ(other.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(other.message()), HasSubstr("boom"));
}

// Through a real op: the invariant RoPE kernel refuses a negative position
// with INVALID_ARGUMENT, and that is the code that comes out.
TEST(OpErrorTest, KernelCodeSurvivesAnOp) {
  auto ops = CreateOps(KernelMode::kInvariant);
  auto x = torch::zeros({2, 8});
  auto positions = torch::tensor({0, -3}, torch::kInt);
  RopeTable rope;
  rope.inv_freq = torch::ones({4}, torch::kDouble);
  try {
    ops->Rope(x, positions, 1, 8, rope);
    FAIL() << "no throw";
  } catch (const std::exception& e) {
    const absl::Status s = StatusFromException(e, "forward");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("positions[1]"));
  }
}

}  // namespace
}  // namespace lockstep::common
