// CUDA TP-tree matmul: identical bits for TP = 1, 2, 4, 8 simulated on one
// GPU (column slices + TreeCombine), tree-config and batch invariance,
// accuracy against float64. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "tests/testing/cuda_test_util.h"
#include "tests/testing/random.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/tree_reduce.h"
#include "kernels/tree_reduce.h"

namespace lockstep::kernels {
namespace {


struct TreeCase {
  int64_t m, n, leaf;  // k_total = 8 * leaf
  DType dtype;         // of x and w
};

// Simulates TP = t on one GPU: rank r takes its column slice of x and w,
// computes its subtree with TreeMatmulPartial into partials[r], then
// TreeCombine applies the top levels, in rank order.
std::vector<float> RunTp(const TreeCase& c, int t, const void* x, const void* w,
                         int64_t k_total) {
  const int64_t es = DTypeSize(c.dtype);
  DevBuf<float> partials(static_cast<size_t>(t) * c.m * c.n);
  partials.Poison();
  for (int r = 0; r < t; ++r) {
    TreeMatmulArgs a;
    const int64_t k_local = k_total / t;
    a.base.x = static_cast<const char*>(x) + r * k_local * es;
    a.base.x_dtype = c.dtype;
    a.base.ldx = k_total;
    a.base.w = static_cast<const char*>(w) + r * k_local * es;
    a.base.w_dtype = c.dtype;
    a.base.ldw = k_total;
    a.base.y = partials.get() + r * c.m * c.n;
    a.base.y_dtype = DType::kF32;
    a.base.ldy = c.n;
    a.base.m = c.m;
    a.base.n = c.n;
    a.base.k = k_local;
    a.k_total = k_total;
    a.leaf_count = kTreeLeaves / t;
    a.leaf_begin = r * a.leaf_count;
    absl::Status s = cuda::TreeMatmulPartial(a, nullptr);
    EXPECT_TRUE(s.ok()) << s;
  }
  DevBuf<float> y(c.m * c.n);
  y.Poison();
  TreeCombineArgs ca;
  ca.partials = partials.get();
  ca.t = t;
  ca.y = y.get();
  ca.y_dtype = DType::kF32;
  ca.ldy = c.n;
  ca.m = c.m;
  ca.n = c.n;
  EXPECT_TRUE(cuda::TreeCombine(ca, nullptr).ok());
  return y.Download();
}

TEST(TreeReduceCudaTest, IdenticalBitsForTp1248AndAccurate) {
  SKIP_WITHOUT_GPU();
  // leaf 64: whole k-blocks; 96: a partial k-block per leaf; 20: not a
  // multiple of 8 (repacked) and slices at unaligned addresses.
  for (TreeCase c : {TreeCase{77, 264, 64, DType::kBF16},
                     TreeCase{300, 520, 96, DType::kBF16},
                     TreeCase{1, 136, 20, DType::kBF16},
                     TreeCase{513, 1024, 512, DType::kBF16},
                     TreeCase{33, 70, 24, DType::kF32}}) {
    const int64_t k = 8 * c.leaf;
    std::vector<float> xf = RoundedBf16(testing::RandomFloats(c.m * k, 5 + c.m));
    std::vector<float> wf = RoundedBf16(testing::RandomFloats(c.n * k, 6 + c.n));
    DevBuf<float> xd(xf), wd(wf);
    DevBuf<uint16_t> xb(ToBf16(xf)), wb(ToBf16(wf));
    const void* x = c.dtype == DType::kF32 ? static_cast<const void*>(xd.get()) : xb.get();
    const void* w = c.dtype == DType::kF32 ? static_cast<const void*>(wd.get()) : wb.get();
    const std::vector<float> y1 = RunTp(c, 1, x, w, k);
    for (int t : {2, 4, 8}) {
      EXPECT_TRUE(testing::SameBits(y1, RunTp(c, t, x, w, k)))
          << "t=" << t << " m=" << c.m << " n=" << c.n << " leaf=" << c.leaf;
    }
    std::vector<double> ref(c.m * c.n);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        double acc = 0;
        for (int64_t q = 0; q < k; ++q) acc += double(xf[i * k + q]) * wf[j * k + q];
        ref[i * c.n + j] = acc;
      }
    }
    EXPECT_LE(RelErr(ref, y1), c.dtype == DType::kF32 ? 1e-5 : 1e-2) << "m=" << c.m;
  }
}

// The leaf-mode configurations of the tree GEMM agree bitwise, and a leaf
// computed inside the full tree equals the same leaf computed alone (t = 8
// ranks run plain row-mode GEMMs over one leaf).
TEST(TreeReduceCudaTest, TreeConfigsAndBatchInvariance) {
  SKIP_WITHOUT_GPU();
  if (!cuda::Bf16TensorCorePathAvailable()) GTEST_SKIP() << "no sm_90a path";
  const int64_t n = 4096, leaf = 512, k = 8 * leaf, pool = 300;
  std::vector<uint16_t> xh = ToBf16(testing::RandomFloats(pool * k, 71));
  DevBuf<uint16_t> x(xh), w(ToBf16(testing::RandomFloats(n * k, 72)));
  auto run = [&](const uint16_t* xp, int64_t m, const cuda::GemmTileConfig* cfg) {
    DevBuf<float> y(m * n);
    y.Poison();
    MatmulArgs a;
    a.x = xp;
    a.x_dtype = DType::kBF16;
    a.ldx = k;
    a.w = w.get();
    a.w_dtype = DType::kBF16;
    a.ldw = k;
    a.y = y.get();
    a.ldy = n;
    a.m = m;
    a.n = n;
    a.k = k;
    EXPECT_TRUE(cuda::LeafMatmul(a, 8, leaf, cfg, nullptr).ok());
    return y.Download();
  };
  std::vector<float> full;
  for (const cuda::GemmTileConfig& cfg : cuda::Bf16GemmConfigs(8)) {
    std::vector<float> y = run(x.get(), pool, &cfg);
    if (full.empty()) full = y;
    EXPECT_TRUE(testing::SameBits(full, y)) << cfg.ToString();
  }
  for (int64_t r : {0L, 7L, 299L}) {
    std::vector<float> one = run(x.get() + r * k, 1, nullptr);
    EXPECT_EQ(std::memcmp(one.data(), &full[r * n], n * sizeof(float)), 0) << r;
  }
  for (int64_t m : {1L, 2L, 65L, 129L, 257L}) {
    std::vector<float> y = run(x.get(), m, nullptr);
    EXPECT_EQ(std::memcmp(y.data(), full.data(), m * n * sizeof(float)), 0) << m;
  }
}

TEST(TreeReduceCudaTest, CombineT1IsACopyAndBf16OutputRounds) {
  SKIP_WITHOUT_GPU();
  const int64_t m = 3, n = 7;
  std::vector<float> p = testing::RandomFloats(8 * m * n, 9);
  DevBuf<float> dp(p);
  DevBuf<uint16_t> y(m * n);
  TreeCombineArgs a;
  a.partials = dp.get();
  a.t = 8;
  a.y = y.get();
  a.y_dtype = DType::kBF16;
  a.ldy = n;
  a.m = m;
  a.n = n;
  ASSERT_TRUE(cuda::TreeCombine(a, nullptr).ok());
  std::vector<uint16_t> got = y.Download();
  for (int64_t i = 0; i < m * n; ++i) {
    float leaves[8];
    for (int r = 0; r < 8; ++r) leaves[r] = p[r * m * n + i];
    EXPECT_EQ(got[i], F32ToBF16(TreeSum8(leaves)));
  }
}

}  // namespace
}  // namespace lockstep::kernels
