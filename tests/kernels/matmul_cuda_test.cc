// CUDA matmul: accuracy, bitwise batch invariance over M = 1..512, tile
// configuration invariance, the fp32 fma-chain path and a split-K standard
// twin that the same comparison catches. Skips without a GPU.
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
#include "kernels/cuda/activation.h"
#include "kernels/cuda/matmul.h"
#include "kernels/matmul.h"

namespace lockstep::kernels {
namespace {


// x [m,k] (values as float, already bf16-exact when used as bf16) times w
// [n,k]^T in float64.
std::vector<double> RefMatmul(const std::vector<float>& x,
                              const std::vector<float>& w, int64_t m,
                              int64_t n, int64_t k) {
  std::vector<double> y(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        acc += static_cast<double>(x[i * k + c]) * w[j * k + c];
      }
      y[i * n + j] = acc;
    }
  }
  return y;
}

// Runs the CUDA matmul on bf16 x, w (device) into a fresh fp32 y.
std::vector<float> RunBf16(const uint16_t* x, const uint16_t* w, int64_t m,
                           int64_t n, int64_t k,
                           const cuda::GemmTileConfig* cfg = nullptr,
                           DType y_dtype = DType::kF32) {
  DevBuf<float> y(m * n);
  DevBuf<uint16_t> yb(m * n);
  y.Poison();
  yb.Poison();
  MatmulArgs a;
  a.x = x;
  a.x_dtype = DType::kBF16;
  a.ldx = k;
  a.w = w;
  a.w_dtype = DType::kBF16;
  a.ldw = k;
  a.y = y_dtype == DType::kF32 ? static_cast<void*>(y.get()) : yb.get();
  a.y_dtype = y_dtype;
  a.ldy = n;
  a.m = m;
  a.n = n;
  a.k = k;
  absl::Status s = cuda::LeafMatmul(a, 1, k, cfg, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (y_dtype == DType::kF32) return y.Download();
  std::vector<uint16_t> hb = yb.Download();
  std::vector<float> out(hb.size());
  for (size_t i = 0; i < hb.size(); ++i) out[i] = BF16ToF32(hb[i]);
  return out;
}

TEST(MatmulCudaTest, TensorCorePathIsAvailableOnHopper) {
  SKIP_WITHOUT_GPU();
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9) GTEST_SKIP() << "not a Hopper GPU";
  EXPECT_TRUE(cuda::Bf16TensorCorePathAvailable());
}

TEST(MatmulCudaTest, Bf16AccuracyAgainstFloat64) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t m, n, k; };
  for (Case c : {Case{1, 256, 512}, Case{37, 1000, 200}, Case{300, 512, 1024},
                 Case{5, 130, 100}, Case{129, 4096, 4096}}) {
    std::vector<float> x = RoundedBf16(testing::RandomFloats(c.m * c.k, 1 + c.m));
    std::vector<float> w = RoundedBf16(testing::RandomFloats(c.n * c.k, 2 + c.n));
    DevBuf<uint16_t> dx(ToBf16(x)), dw(ToBf16(w));
    const std::vector<double> ref = RefMatmul(x, w, c.m, c.n, c.k);
    for (DType yd : {DType::kF32, DType::kBF16}) {
      std::vector<float> y = RunBf16(dx.get(), dw.get(), c.m, c.n, c.k, nullptr, yd);
      for (float v : y) ASSERT_FALSE(std::isnan(v)) << "unwritten output";
      const double err = RelErr(ref, y);
      EXPECT_LE(err, 1e-2) << c.m << "x" << c.n << "x" << c.k;
      std::printf("bf16 GEMM %ldx%ldx%ld y=%s rel err %.3g\n", long(c.m),
                  long(c.n), long(c.k), yd == DType::kF32 ? "f32" : "bf16", err);
    }
  }
}

// Every tile configuration runs the same per-element instruction sequence:
// same bits. This is what lets the configuration adapt to M.
TEST(MatmulCudaTest, AllTileConfigsGiveIdenticalBits) {
  SKIP_WITHOUT_GPU();
  if (!cuda::Bf16TensorCorePathAvailable()) GTEST_SKIP() << "no sm_90a path";
  for (int64_t k : {704, 200, 4096}) {
    const int64_t m = 300, n = 520;
    DevBuf<uint16_t> dx(ToBf16(testing::RandomFloats(m * k, 11)));
    DevBuf<uint16_t> dw(ToBf16(testing::RandomFloats(n * k, 12)));
    std::vector<float> first;
    for (const cuda::GemmTileConfig& cfg : cuda::Bf16GemmConfigs(1)) {
      std::vector<float> y = RunBf16(dx.get(), dw.get(), m, n, k, &cfg);
      if (first.empty()) {
        first = y;
      } else {
        EXPECT_TRUE(testing::SameBits(first, y)) << cfg.ToString() << " k=" << k;
      }
    }
  }
}

// A row's bits alone (M = 1) equal its bits inside random batches of every
// size M = 1..512, at a random position among random other rows.
void CheckBatchInvariance(int64_t n, int64_t k, const std::vector<int64_t>& ms,
                          uint64_t seed) {
  const int64_t pool = 512;
  std::vector<uint16_t> xh = ToBf16(testing::RandomFloats(pool * k, seed));
  DevBuf<uint16_t> dx(xh);
  DevBuf<uint16_t> dw(ToBf16(testing::RandomFloats(n * k, seed + 1)));
  // Each pool row alone.
  std::vector<std::vector<float>> alone(pool);
  for (int64_t r = 0; r < pool; ++r) {
    alone[r] = RunBf16(dx.get() + r * k, dw.get(), 1, n, k);
  }
  std::mt19937_64 rng(seed + 2);
  DevBuf<uint16_t> batch(*std::max_element(ms.begin(), ms.end()) * k);
  int64_t checked = 0;
  for (int64_t m : ms) {
    std::vector<int64_t> rows(m);
    for (auto& r : rows) r = static_cast<int64_t>(rng() % pool);
    std::vector<uint16_t> bh(m * k);
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(&bh[i * k], &xh[rows[i] * k], k * sizeof(uint16_t));
    }
    cudaMemcpy(batch.get(), bh.data(), bh.size() * 2, cudaMemcpyHostToDevice);
    std::vector<float> y = RunBf16(batch.get(), dw.get(), m, n, k);
    for (int64_t i = 0; i < m; ++i) {
      ASSERT_EQ(std::memcmp(&y[i * n], alone[rows[i]].data(), n * sizeof(float)), 0)
          << "row " << i << " of M=" << m << " (pool row " << rows[i] << ")";
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(MatmulCudaTest, Bf16BatchInvariantForEveryMUpTo512) {
  SKIP_WITHOUT_GPU();
  std::vector<int64_t> ms(512);
  std::iota(ms.begin(), ms.end(), 1);
  CheckBatchInvariance(384, 512, ms, 100);
}

// Layer-sized N and K, where the tile configuration changes with M.
TEST(MatmulCudaTest, Bf16BatchInvariantAcrossTileConfigs) {
  SKIP_WITHOUT_GPU();
  CheckBatchInvariance(4096, 4096, {1, 3, 64, 65, 127, 129, 511, 1000, 2048},
                       200);
}

// The fp32 / mixed path is the CPU contract: a chain of fmas in k order.
TEST(MatmulCudaTest, F32PathIsTheFmaChainAndBatchInvariant) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 70, n = 130, k = 333;
  std::vector<float> x = testing::RandomFloats(m * k, 31);
  std::vector<float> w = testing::RandomFloats(n * k, 32);
  for (DType wd : {DType::kF32, DType::kBF16}) {
    std::vector<float> wv = wd == DType::kBF16 ? RoundedBf16(w) : w;
    DevBuf<float> dx(x), dwf(wv);
    DevBuf<uint16_t> dwb(ToBf16(wv));
    auto run = [&](int64_t rows, int64_t row0) {
      DevBuf<float> y(rows * n);
      y.Poison();
      MatmulArgs a;
      a.x = dx.get() + row0 * k;
      a.x_dtype = DType::kF32;
      a.ldx = k;
      a.w = wd == DType::kF32 ? static_cast<const void*>(dwf.get()) : dwb.get();
      a.w_dtype = wd;
      a.ldw = k;
      a.y = y.get();
      a.y_dtype = DType::kF32;
      a.ldy = n;
      a.m = rows;
      a.n = n;
      a.k = k;
      EXPECT_TRUE(cuda::Matmul(a, nullptr).ok());
      return y.Download();
    };
    std::vector<float> y = run(m, 0);
    std::vector<float> expect(m * n);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int64_t c = 0; c < k; ++c) acc = std::fma(x[i * k + c], wv[j * k + c], acc);
        expect[i * n + j] = acc;
      }
    }
    EXPECT_TRUE(testing::SameBits(expect, y)) << "not the fma chain";
    EXPECT_LE(RelErr(RefMatmul(x, wv, m, n, k), y), 1e-5);
    for (int64_t r : {0L, 5L, 69L}) {
      std::vector<float> one = run(1, r);
      EXPECT_EQ(std::memcmp(one.data(), &y[r * n], n * sizeof(float)), 0);
    }
  }
}

TEST(MatmulCudaTest, ZeroKGivesZeros) {
  SKIP_WITHOUT_GPU();
  DevBuf<uint16_t> dx(8), dw(8);
  DevBuf<float> y(3 * 5);
  y.Poison();
  MatmulArgs a;
  a.x = dx.get();
  a.x_dtype = DType::kBF16;
  a.ldx = 0;
  a.w = dw.get();
  a.w_dtype = DType::kBF16;
  a.ldw = 0;
  a.y = y.get();
  a.ldy = 5;
  a.m = 3;
  a.n = 5;
  a.k = 0;
  ASSERT_TRUE(cuda::Matmul(a, nullptr).ok());
  for (float v : y.Download()) EXPECT_EQ(v, 0.0f);
}

// Standard twin: a "standard" GEMM that, like cuBLAS, switches to split-K
// for small M (here: two K halves summed) is NOT batch invariant; the same
// comparison as above detects it. Proof that the invariance test can fail.
TEST(MatmulCudaTest, StandardTwinSplitKIsDetected) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 512, k = 2048, m = 256;
  DevBuf<uint16_t> dx(ToBf16(testing::RandomFloats(m * k, 41)));
  DevBuf<uint16_t> dw(ToBf16(testing::RandomFloats(n * k, 42)));
  auto standard = [&](const uint16_t* x, int64_t rows) {
    if (rows > 64) return RunBf16(x, dw.get(), rows, n, k);
    // Split-K for small M: two half-K products, then an fp32 add.
    DevBuf<float> y0(rows * n), y1(rows * n);
    for (int half = 0; half < 2; ++half) {
      MatmulArgs a;
      a.x = x + half * (k / 2);
      a.x_dtype = DType::kBF16;
      a.ldx = k;
      a.w = dw.get() + half * (k / 2);
      a.w_dtype = DType::kBF16;
      a.ldw = k;
      a.y = half == 0 ? y0.get() : y1.get();
      a.ldy = n;
      a.m = rows;
      a.n = n;
      a.k = k / 2;
      EXPECT_TRUE(cuda::Matmul(a, nullptr).ok());
    }
    EXPECT_TRUE(cuda::AddInPlace(y0.get(), n, y1.get(), n, rows, n, nullptr).ok());
    return y0.Download();
  };
  std::vector<float> batch = standard(dx.get(), m);
  int64_t differing = 0;
  for (int64_t r = 0; r < m; ++r) {
    std::vector<float> one = standard(dx.get() + r * k, 1);
    if (std::memcmp(one.data(), &batch[r * n], n * sizeof(float)) != 0) ++differing;
  }
  EXPECT_GT(differing, 0) << "split-K twin unexpectedly invariant";
  // ...while the invariant kernel agrees for every row.
  std::vector<float> inv = RunBf16(dx.get(), dw.get(), m, n, k);
  for (int64_t r = 0; r < m; ++r) {
    std::vector<float> one = RunBf16(dx.get() + r * k, dw.get(), 1, n, k);
    ASSERT_EQ(std::memcmp(one.data(), &inv[r * n], n * sizeof(float)), 0) << r;
  }
}

}  // namespace
}  // namespace lockstep::kernels
