// Tests of RMSNorm (kernels/rms_norm.h): accuracy against float64, bitwise
// agreement with the contract's fma order, batch/thread invariance, aliasing,
// strides and argument checks.

#include "kernels/rms_norm.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;

struct Case {
  int64_t rows, n, ldx, ldy;
  DType wdtype;
};

// Weight buffer of `dtype` holding `w` (rounded for bf16).
std::vector<uint8_t> Weight(const std::vector<float>& w, DType dtype) {
  std::vector<uint8_t> bytes(w.size() * DTypeSize(dtype));
  for (size_t i = 0; i < w.size(); ++i)
    StoreFromF32(bytes.data(), dtype, i, w[i]);
  return bytes;
}

RmsNormArgs Args(const std::vector<float>& x, int64_t ldx,
                 const std::vector<uint8_t>& w, DType wdtype,
                 std::vector<float>& y, int64_t ldy, int64_t rows, int64_t n,
                 float eps = 1e-6f) {
  RmsNormArgs a;
  a.x = x.data();
  a.ldx = ldx;
  a.weight = w.data();
  a.weight_dtype = wdtype;
  a.y = y.data();
  a.ldy = ldy;
  a.rows = rows;
  a.n = n;
  a.eps = eps;
  return a;
}

// The contract, written out: the result must equal this bit for bit.
float ContractRow(const float* x, const void* w, DType wdtype, int64_t n,
                  float eps, float* y) {
  float ss = 0.0f;
  for (int64_t j = 0; j < n; ++j) ss = std::fmaf(x[j], x[j], ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t j = 0; j < n; ++j) y[j] = (x[j] * inv) * LoadAsF32(w, wdtype, j);
  return inv;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << "rows=" << c.rows << " n=" << c.n << " ldx=" << c.ldx
      << " ldy=" << c.ldy << " weight=" << DTypeName(c.wdtype);
}

class RmsNormShapes : public ::testing::TestWithParam<Case> {};

TEST_P(RmsNormShapes, MatchesFloat64AndContractBits) {
  const Case c = GetParam();
  const auto x = RandomFloats(c.rows * c.ldx, 11 + c.n, -3.0f, 3.0f);
  const auto wf = RandomFloats(c.n, 12 + c.n, -2.0f, 2.0f);
  const auto w = Weight(wf, c.wdtype);
  std::vector<float> y(c.rows * c.ldy, 12345.0f);
  ASSERT_TRUE(RmsNorm(Args(x, c.ldx, w, c.wdtype, y, c.ldy, c.rows, c.n)).ok());
  std::vector<float> expect(c.n);
  for (int64_t r = 0; r < c.rows; ++r) {
    const float* xr = x.data() + r * c.ldx;
    const float* yr = y.data() + r * c.ldy;
    double ss = 0.0;
    for (int64_t j = 0; j < c.n; ++j) ss += double{xr[j]} * xr[j];
    const double inv = 1.0 / std::sqrt(ss / c.n + 1e-6);
    for (int64_t j = 0; j < c.n; ++j) {
      const double ref = xr[j] * inv * LoadAsF32(w.data(), c.wdtype, j);
      EXPECT_NEAR(yr[j], ref, 2e-5 * std::max(1.0, std::fabs(ref)))
          << "row " << r << " col " << j;
    }
    ContractRow(xr, w.data(), c.wdtype, c.n, 1e-6f, expect.data());
    EXPECT_EQ(std::memcmp(yr, expect.data(), c.n * sizeof(float)), 0)
        << "row " << r;
    // Padding between rows is never written.
    for (int64_t j = c.n; j < c.ldy; ++j) EXPECT_EQ(yr[j], 12345.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsNormShapes,
    ::testing::Values(Case{1, 1, 1, 1, DType::kF32},
                      Case{3, 7, 7, 9, DType::kF32},
                      Case{5, 33, 40, 33, DType::kBF16},
                      Case{2, 1000, 1000, 1003, DType::kF32},
                      Case{17, 4096, 4096, 4096, DType::kBF16},
                      Case{64, 129, 131, 129, DType::kF32}));

TEST(RmsNorm, BatchInvariant) {
  const int64_t n = 777;
  const auto wf = RandomFloats(n, 3, -2.0f, 2.0f);
  const auto w = Weight(wf, DType::kBF16);
  const auto row = RandomFloats(n, 4, -5.0f, 5.0f);
  std::vector<float> alone(n);
  ASSERT_TRUE(RmsNorm(Args(row, n, w, DType::kBF16, alone, n, 1, n)).ok());
  std::mt19937 rng(5);
  for (int64_t batch = 1; batch <= 64; ++batch) {
    auto x = RandomFloats(batch * n, 100 + batch, -5.0f, 5.0f);
    const int64_t at =
        std::uniform_int_distribution<int64_t>(0, batch - 1)(rng);
    std::memcpy(x.data() + at * n, row.data(), n * sizeof(float));
    std::vector<float> y(batch * n);
    ASSERT_TRUE(RmsNorm(Args(x, n, w, DType::kBF16, y, n, batch, n)).ok());
    EXPECT_EQ(std::memcmp(y.data() + at * n, alone.data(), n * sizeof(float)),
              0)
        << "batch " << batch << " row " << at;
  }
}

TEST(RmsNorm, ThreadCountAndSimdLevelInvariant) {
  const int64_t rows = 37, n = 300;
  const auto x = RandomFloats(rows * n, 8, -4.0f, 4.0f);
  const auto w = Weight(RandomFloats(n, 9), DType::kF32);
  const int saved_threads = NumThreads();
  const SimdLevel saved_level = ActiveSimdLevel();
  std::vector<float> ref(rows * n);
  SetNumThreads(1);
  ASSERT_TRUE(SetSimdLevel(SimdLevel::kScalar).ok());
  ASSERT_TRUE(RmsNorm(Args(x, n, w, DType::kF32, ref, n, rows, n)).ok());
  for (SimdLevel level :
       {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (static_cast<int>(level) > static_cast<int>(DetectSimdLevel())) continue;
    ASSERT_TRUE(SetSimdLevel(level).ok());
    for (int t : {1, 2, 3, 8}) {
      SetNumThreads(t);
      std::vector<float> y(rows * n);
      ASSERT_TRUE(RmsNorm(Args(x, n, w, DType::kF32, y, n, rows, n)).ok());
      EXPECT_TRUE(testing::SameBits(y, ref))
          << SimdLevelName(level) << ", " << t << " threads";
    }
  }
  ASSERT_TRUE(SetSimdLevel(saved_level).ok());
  SetNumThreads(saved_threads);
}

TEST(RmsNorm, InPlaceEqualsOutOfPlace) {
  const int64_t rows = 6, n = 50, ld = 53;
  auto x = RandomFloats(rows * ld, 21, -2.0f, 2.0f);
  const auto w = Weight(RandomFloats(n, 22), DType::kF32);
  std::vector<float> y(rows * ld);
  ASSERT_TRUE(RmsNorm(Args(x, ld, w, DType::kF32, y, ld, rows, n)).ok());
  RmsNormArgs a = Args(x, ld, w, DType::kF32, x, ld, rows, n);
  ASSERT_TRUE(RmsNorm(a).ok());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(std::memcmp(x.data() + r * ld, y.data() + r * ld, n * 4), 0);
  }
}

TEST(RmsNorm, ZeroRowIsFiniteAndZero) {
  const int64_t n = 16;
  std::vector<float> x(n, 0.0f), y(n, 1.0f);
  const auto w = Weight(RandomFloats(n, 1), DType::kF32);
  ASSERT_TRUE(RmsNorm(Args(x, n, w, DType::kF32, y, n, 1, n)).ok());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(RmsNorm, BadArguments) {
  const int64_t n = 8;
  std::vector<float> x(2 * n, 1.0f), y(2 * n);
  const auto w = Weight(std::vector<float>(n, 1.0f), DType::kF32);
  const RmsNormArgs good = Args(x, n, w, DType::kF32, y, n, 2, n);
  ASSERT_TRUE(RmsNorm(good).ok());
  auto expect_invalid = [](RmsNormArgs a, const char* what) {
    EXPECT_EQ(RmsNorm(a).code(), absl::StatusCode::kInvalidArgument) << what;
  };
  RmsNormArgs a = good;
  a.x = nullptr;
  expect_invalid(a, "null x");
  a = good;
  a.weight = nullptr;
  expect_invalid(a, "null weight");
  a = good;
  a.y = nullptr;
  expect_invalid(a, "null y");
  a = good;
  a.ldx = n - 1;
  expect_invalid(a, "ldx < n");
  a = good;
  a.ldy = n - 1;
  expect_invalid(a, "ldy < n");
  a = good;
  a.n = 0;
  expect_invalid(a, "n == 0");
  a = good;
  a.rows = -1;
  expect_invalid(a, "rows < 0");
  a = good;
  a.eps = -1.0f;
  expect_invalid(a, "eps < 0");
  a = good;
  a.eps = std::nanf("");
  expect_invalid(a, "eps NaN");
  a = good;
  a.weight_dtype = static_cast<DType>(7);
  expect_invalid(a, "bad dtype");
  // Zero rows is a no-op even with null buffers.
  RmsNormArgs empty;
  empty.n = n;
  EXPECT_TRUE(RmsNorm(empty).ok());
  if (!CudaKernelsBuilt()) {
    EXPECT_EQ(RmsNorm(good, ExecContext{Device::kCuda, nullptr}).code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lockstep::kernels
