// Tests of the elementwise ops (kernels/activation.h): SwiGLU accuracy and
// bits, aliasing, bf16 rounding, residual add, batch invariance and argument
// checks.

#include "kernels/activation.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;

SiluMulArgs Args(const std::vector<float>& gate, const std::vector<float>& up,
                 int64_t ld_in, std::vector<float>& out, int64_t ld_out,
                 int64_t rows, int64_t n) {
  SiluMulArgs a;
  a.gate = gate.data();
  a.up = up.data();
  a.ld_in = ld_in;
  a.out = out.data();
  a.ld_out = ld_out;
  a.rows = rows;
  a.n = n;
  return a;
}

TEST(SiluMul, MatchesFloat64AndContractBits) {
  for (auto [rows, n, ld_in, ld_out] : std::vector<std::array<int64_t, 4>>{
           {1, 1, 1, 1}, {3, 17, 20, 17}, {9, 1000, 1000, 1001}}) {
    const auto gate = RandomFloats(rows * ld_in, 1 + n, -12.0f, 12.0f);
    const auto up = RandomFloats(rows * ld_in, 2 + n, -3.0f, 3.0f);
    std::vector<float> out(rows * ld_out, -7.0f);
    ASSERT_TRUE(SiluMul(Args(gate, up, ld_in, out, ld_out, rows, n)).ok());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        const float g = gate[r * ld_in + j], u = up[r * ld_in + j];
        const float silu = g / (1.0f + expf(-g));
        const float expect = silu * u;
        const float got = out[r * ld_out + j];
        EXPECT_EQ(std::memcmp(&got, &expect, 4), 0) << r << "," << j;
        const double ref = double{g} / (1.0 + std::exp(-double{g})) * u;
        EXPECT_NEAR(got, ref, 1e-6 * std::max(1.0, std::fabs(ref)));
      }
      for (int64_t j = n; j < ld_out; ++j)
        EXPECT_EQ(out[r * ld_out + j], -7.0f);
    }
  }
}

TEST(SiluMul, ExtremeGates) {
  const std::vector<float> gate = {-100.0f, 100.0f, 0.0f, -0.0f};
  const std::vector<float> up = {2.0f, 2.0f, 2.0f, 2.0f};
  std::vector<float> out(4);
  ASSERT_TRUE(SiluMul(Args(gate, up, 4, out, 4, 1, 4)).ok());
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
  EXPECT_EQ(out[1], 200.0f);
  EXPECT_EQ(out[2], 0.0f);
}

TEST(SiluMul, OutputMayAliasGate) {
  const int64_t rows = 4, n = 33;
  auto gate = RandomFloats(rows * n, 3, -5.0f, 5.0f);
  const auto up = RandomFloats(rows * n, 4);
  std::vector<float> out(rows * n);
  ASSERT_TRUE(SiluMul(Args(gate, up, n, out, n, rows, n)).ok());
  SiluMulArgs a = Args(gate, up, n, gate, n, rows, n);
  ASSERT_TRUE(SiluMul(a).ok());
  EXPECT_TRUE(testing::SameBits(gate, out));
}

TEST(SiluMul, BatchInvariant) {
  const int64_t n = 301;
  const auto g1 = RandomFloats(n, 5, -6.0f, 6.0f);
  const auto u1 = RandomFloats(n, 6);
  std::vector<float> alone(n);
  ASSERT_TRUE(SiluMul(Args(g1, u1, n, alone, n, 1, n)).ok());
  std::mt19937 rng(7);
  for (int64_t batch = 1; batch <= 64; ++batch) {
    auto g = RandomFloats(batch * n, 10 + batch, -6.0f, 6.0f);
    auto u = RandomFloats(batch * n, 90 + batch);
    const int64_t at =
        std::uniform_int_distribution<int64_t>(0, batch - 1)(rng);
    std::memcpy(g.data() + at * n, g1.data(), n * 4);
    std::memcpy(u.data() + at * n, u1.data(), n * 4);
    std::vector<float> out(batch * n);
    ASSERT_TRUE(SiluMul(Args(g, u, n, out, n, batch, n)).ok());
    EXPECT_EQ(std::memcmp(out.data() + at * n, alone.data(), n * 4), 0);
  }
}

TEST(RoundRowsToBF16, RoundsToNearestEvenInPlace) {
  const int64_t rows = 5, n = 40, ld = 43;
  auto x = RandomFloats(rows * ld, 9, -100.0f, 100.0f);
  // Exact ties: 1 + 2^-8 lies halfway between two bf16 values and rounds to
  // even (1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6.
  x[0] = 1.0f + 0x1p-8f;
  x[1] = 1.0f + 3 * 0x1p-8f;
  x[2] = std::numeric_limits<float>::infinity();
  x[3] = std::nanf("");
  const auto x0 = x;
  ASSERT_TRUE(RoundRowsToBF16(x.data(), ld, rows, n).ok());
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], 1.0f + 0x1p-6f);
  EXPECT_EQ(x[2], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(x[3]));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < ld; ++j) {
      const float v = x0[r * ld + j];
      if (!std::isfinite(v)) continue;
      const float expect = j < n ? RoundToBF16(v) : v;
      EXPECT_EQ(x[r * ld + j], expect);
      if (j < n) {
        EXPECT_LE(std::fabs(double{x[r * ld + j]} - v),
                  std::fabs(double{v}) * 0x1p-8);
      }
    }
  }
}

TEST(AddInPlace, AddsWithStrides) {
  const int64_t rows = 7, n = 19, ldy = 21, ldx = 19;
  auto y = RandomFloats(rows * ldy, 11);
  const auto x = RandomFloats(rows * ldx, 12);
  const auto y0 = y;
  ASSERT_TRUE(AddInPlace(y.data(), ldy, x.data(), ldx, rows, n).ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < ldy; ++j) {
      const float expect =
          j < n ? y0[r * ldy + j] + x[r * ldx + j] : y0[r * ldy + j];
      EXPECT_EQ(y[r * ldy + j], expect);
    }
  }
}

TEST(Activation, BadArguments) {
  std::vector<float> g(16, 1.0f), u(16, 1.0f), o(16);
  const SiluMulArgs good = Args(g, u, 8, o, 8, 2, 8);
  ASSERT_TRUE(SiluMul(good).ok());
  auto expect_invalid = [](const absl::Status& s, const char* what) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what;
  };
  SiluMulArgs a = good;
  a.gate = nullptr;
  expect_invalid(SiluMul(a), "null gate");
  a = good;
  a.up = nullptr;
  expect_invalid(SiluMul(a), "null up");
  a = good;
  a.out = nullptr;
  expect_invalid(SiluMul(a), "null out");
  a = good;
  a.ld_in = 7;
  expect_invalid(SiluMul(a), "ld_in < n");
  a = good;
  a.ld_out = 7;
  expect_invalid(SiluMul(a), "ld_out < n");
  a = good;
  a.rows = -2;
  expect_invalid(SiluMul(a), "rows < 0");
  EXPECT_TRUE(SiluMul(SiluMulArgs{}).ok()) << "empty is a no-op";

  expect_invalid(RoundRowsToBF16(nullptr, 8, 2, 8), "null x");
  expect_invalid(RoundRowsToBF16(g.data(), 7, 2, 8), "ld < n");
  expect_invalid(RoundRowsToBF16(g.data(), 8, -1, 8), "rows < 0");
  EXPECT_TRUE(RoundRowsToBF16(nullptr, 0, 0, 0).ok());

  expect_invalid(AddInPlace(nullptr, 8, g.data(), 8, 2, 8), "null y");
  expect_invalid(AddInPlace(o.data(), 8, nullptr, 8, 2, 8), "null x");
  expect_invalid(AddInPlace(o.data(), 7, g.data(), 8, 2, 8), "ldy < n");
  expect_invalid(AddInPlace(o.data(), 8, g.data(), 7, 2, 8), "ldx < n");
  expect_invalid(AddInPlace(o.data(), 8, g.data(), 8, 2, -8), "n < 0");

  if (!CudaKernelsBuilt()) {
    const ExecContext cuda{Device::kCuda, nullptr};
    EXPECT_EQ(SiluMul(good, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(RoundRowsToBF16(g.data(), 8, 2, 8, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(AddInPlace(o.data(), 8, g.data(), 8, 2, 8, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lockstep::kernels
