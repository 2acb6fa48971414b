// CUDA RMSNorm: accuracy against float64, batch invariance, in place.
// Skips without a GPU.
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
#include "kernels/cuda/rms_norm.h"
#include "kernels/rms_norm.h"

namespace lockstep::kernels {
namespace {


TEST(RmsNormCudaTest, AccurateAndBatchInvariant) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {4096L, 2048L, 1000L, 13L}) {
    for (DType wd : {DType::kF32, DType::kBF16}) {
      const int64_t rows = 257;
      std::vector<float> x = testing::RandomFloats(rows * n, n, -3.0f, 3.0f);
      std::vector<float> w = testing::RandomFloats(n, n + 1, 0.5f, 1.5f);
      if (wd == DType::kBF16) w = RoundedBf16(w);
      DevBuf<float> dx(x), dwf(w);
      DevBuf<uint16_t> dwb(ToBf16(w));
      auto run = [&](int64_t row0, int64_t m) {
        DevBuf<float> y(m * n);
        y.Poison();
        RmsNormArgs a;
        a.x = dx.get() + row0 * n;
        a.ldx = n;
        a.weight = wd == DType::kF32 ? static_cast<const void*>(dwf.get()) : dwb.get();
        a.weight_dtype = wd;
        a.y = y.get();
        a.ldy = n;
        a.rows = m;
        a.n = n;
        a.eps = 1e-6f;
        EXPECT_TRUE(cuda::RmsNorm(a, nullptr).ok());
        return y.Download();
      };
      const std::vector<float> all = run(0, rows);
      std::vector<double> ref(rows * n);
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < n; ++j) ss += double(x[r * n + j]) * x[r * n + j];
        const double inv = 1.0 / std::sqrt(ss / n + 1e-6);
        for (int64_t j = 0; j < n; ++j) ref[r * n + j] = x[r * n + j] * inv * w[j];
      }
      EXPECT_LE(RelErr(ref, all), 1e-5);
      for (int64_t m : {1L, 2L, 3L, 100L}) {
        for (int64_t r0 : {0L, rows - m}) {
          const std::vector<float> part = run(r0, m);
          EXPECT_EQ(std::memcmp(part.data(), &all[r0 * n], m * n * sizeof(float)), 0)
              << "n=" << n << " m=" << m << " r0=" << r0;
        }
      }
      // In place (y == x) gives the same bits.
      DevBuf<float> inplace(x);
      RmsNormArgs a;
      a.x = inplace.get();
      a.ldx = n;
      a.weight = wd == DType::kF32 ? static_cast<const void*>(dwf.get()) : dwb.get();
      a.weight_dtype = wd;
      a.y = inplace.get();
      a.ldy = n;
      a.rows = rows;
      a.n = n;
      ASSERT_TRUE(cuda::RmsNorm(a, nullptr).ok());
      EXPECT_TRUE(testing::SameBits(all, inplace.Download()));
    }
  }
}

}  // namespace
}  // namespace lockstep::kernels
