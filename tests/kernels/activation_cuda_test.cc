// CUDA SiLU-and-mul, bf16 rounding and residual add. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
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
#include "kernels/activation.h"
#include "kernels/cuda/activation.h"

namespace lockstep::kernels {
namespace {


TEST(ActivationCudaTest, SiluMulRoundAndAddMatchTheContract) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 37, n = 1000;
  std::vector<float> g = testing::RandomFloats(rows * n, 1, -6.0f, 6.0f);
  std::vector<float> u = testing::RandomFloats(rows * n, 2);
  DevBuf<float> dg(g), du(u), out(rows * n);
  out.Poison();
  SiluMulArgs a;
  a.gate = dg.get();
  a.up = du.get();
  a.ld_in = n;
  a.out = out.get();
  a.ld_out = n;
  a.rows = rows;
  a.n = n;
  ASSERT_TRUE(cuda::SiluMul(a, nullptr).ok());
  const std::vector<float> y = out.Download();
  std::vector<double> ref(rows * n);
  for (int64_t i = 0; i < rows * n; ++i) ref[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  EXPECT_LE(RelErr(ref, y), 1e-5);
  // Elementwise: a row alone gives the same bits.
  SiluMulArgs one = a;
  DevBuf<float> out1(n);
  one.gate = dg.get() + 5 * n;
  one.up = du.get() + 5 * n;
  one.out = out1.get();
  one.rows = 1;
  ASSERT_TRUE(cuda::SiluMul(one, nullptr).ok());
  EXPECT_EQ(std::memcmp(out1.Download().data(), &y[5 * n], n * 4), 0);

  DevBuf<float> r(g);
  ASSERT_TRUE(cuda::RoundRowsToBF16(r.get(), n, rows, n, nullptr).ok());
  EXPECT_TRUE(testing::SameBits(RoundedBf16(g), r.Download()));

  DevBuf<float> acc(g);
  ASSERT_TRUE(cuda::AddInPlace(acc.get(), n, du.get(), n, rows, n, nullptr).ok());
  std::vector<float> want(rows * n);
  for (int64_t i = 0; i < rows * n; ++i) want[i] = g[i] + u[i];
  EXPECT_TRUE(testing::SameBits(want, acc.Download()));
}

}  // namespace
}  // namespace lockstep::kernels
