// Tests of the TP-invariant tree matmul (kernels/tree_reduce.h): every TP
// degree gives the TP=1 bits, the bits follow the documented tree, accuracy
// against float64, and "standard twins" (sequential K, other sum orders) that
// show the bitwise checks can fail.

#include "kernels/tree_reduce.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"
#include "kernels/matmul.h"
#include "tests/testing/kernel_state.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;

// Row-major [rows, ld] buffer of either dtype; the logical matrix is
// [rows, cols].
struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  std::vector<uint8_t> bytes;

  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  // Address of element (i, j), for column-slice views.
  const void* At(int64_t i, int64_t j) const {
    return bytes.data() + (i * ld + j) * DTypeSize(dtype);
  }
  float Get(int64_t i, int64_t j) const {
    return LoadAsF32(bytes.data(), dtype, i * ld + j);
  }
};

Matrix RandomMatrix(int64_t rows, int64_t cols, int64_t ld, DType dtype,
                    uint64_t seed) {
  Matrix m{dtype, rows, cols, ld, {}};
  const int64_t count = std::max<int64_t>(rows * ld, 1);
  m.bytes.resize(count * DTypeSize(dtype));
  const std::vector<float> v = RandomFloats(count, seed);
  for (int64_t i = 0; i < count; ++i) StoreFromF32(m.data(), dtype, i, v[i]);
  return m;
}

// Rank r of a TP group of size t: columns [r*K/t, (r+1)*K/t) of x and w,
// leaves [r*8/t, (r+1)*8/t), fp32 subtree values into `partial` [m, n].
TreeMatmulArgs RankArgs(const Matrix& x, const Matrix& w, int t, int r,
                        float* partial) {
  const int64_t k_total = x.cols;
  const int64_t k_local = k_total / t;
  TreeMatmulArgs a;
  a.base.x = x.At(0, r * k_local);
  a.base.x_dtype = x.dtype;
  a.base.ldx = x.ld;
  a.base.w = w.At(0, r * k_local);
  a.base.w_dtype = w.dtype;
  a.base.ldw = w.ld;
  a.base.y = partial;
  a.base.y_dtype = DType::kF32;
  a.base.ldy = w.rows;
  a.base.m = x.rows;
  a.base.n = w.rows;
  a.base.k = k_local;
  a.k_total = k_total;
  a.leaf_begin = r * kTreeLeaves / t;
  a.leaf_count = kTreeLeaves / t;
  return a;
}

// TP=t: every rank's partial, then TreeCombine into y.
std::vector<float> RunTp(const Matrix& x, const Matrix& w, int t,
                         DType y_dtype, std::vector<float>* partials_out) {
  const int64_t m = x.rows, n = w.rows;
  std::vector<float> partials(t * m * n);
  for (int r = 0; r < t; ++r) {
    const absl::Status s =
        TreeMatmulPartial(RankArgs(x, w, t, r, partials.data() + r * m * n));
    EXPECT_TRUE(s.ok()) << s;
  }
  std::vector<float> y(m * n + 1, -7.0f);  // fp32 view; bf16 uses half
  TreeCombineArgs c;
  c.partials = partials.data();
  c.t = t;
  c.y = y.data();
  c.y_dtype = y_dtype;
  c.ldy = n;
  c.m = m;
  c.n = n;
  const absl::Status s = TreeCombine(c);
  EXPECT_TRUE(s.ok()) << s;
  if (partials_out != nullptr) *partials_out = std::move(partials);
  return y;
}

// The documented tree written out with std::fma leaf chains.
std::vector<float> TreeReference(const Matrix& x, const Matrix& w) {
  const int64_t leaf = x.cols / kTreeLeaves;
  std::vector<float> y(x.rows * w.rows);
  for (int64_t i = 0; i < x.rows; ++i) {
    for (int64_t j = 0; j < w.rows; ++j) {
      float p[kTreeLeaves];
      for (int l = 0; l < kTreeLeaves; ++l) {
        float acc = 0.0f;
        for (int64_t k = l * leaf; k < (l + 1) * leaf; ++k) {
          acc = std::fma(x.Get(i, k), w.Get(j, k), acc);
        }
        p[l] = acc;
      }
      y[i * w.rows + j] = TreeSum8(p);
    }
  }
  return y;
}

class TreeReduceTest : public testing::KernelStateTest {};

struct Shape {
  int64_t m, n, k;
};

const Shape kShapes[] = {{1, 1, 8},     {1, 65, 64},   {3, 17, 24},
                         {7, 33, 136},  {9, 100, 512}, {17, 31, 72},
                         {33, 129, 256}, {64, 48, 1024}};

TEST_F(TreeReduceTest, EveryTpDegreeGivesTheSameBits) {
  int seed = 0;
  for (const Shape& s : kShapes) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      ++seed;
      SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n
                                        << " k=" << s.k << " "
                                        << DTypeName(dt));
      const Matrix x = RandomMatrix(s.m, s.k, s.k + 3, dt, 10 + seed);
      const Matrix w = RandomMatrix(s.n, s.k, s.k + 1, dt, 20 + seed);
      const std::vector<float> want = TreeReference(x, w);
      for (int t : {1, 2, 4, 8}) {
        SCOPED_TRACE(::testing::Message() << "t=" << t);
        std::vector<float> y = RunTp(x, w, t, DType::kF32, nullptr);
        y.resize(want.size());
        ASSERT_EQ(0, std::memcmp(y.data(), want.data(),
                                 want.size() * sizeof(float)));
      }
      // A bf16 output is the rounding of the same value, for every t.
      const std::vector<float> y1 = RunTp(x, w, 1, DType::kBF16, nullptr);
      for (int t : {2, 4, 8}) {
        const std::vector<float> yt = RunTp(x, w, t, DType::kBF16, nullptr);
        ASSERT_EQ(0, std::memcmp(y1.data(), yt.data(), s.m * s.n * 2));
      }
      const uint16_t* b = reinterpret_cast<const uint16_t*>(y1.data());
      for (int64_t i = 0; i < s.m * s.n; ++i) {
        ASSERT_EQ(b[i], F32ToBF16(want[i]));
      }
    }
  }
}

TEST_F(TreeReduceTest, InvariantToBatchThreadsAndSimdLevel) {
  const Matrix w = RandomMatrix(70, 160, 160, DType::kBF16, 5);
  const Matrix target = RandomMatrix(1, 160, 160, DType::kF32, 6);
  std::vector<float> want(70);
  {
    TreeMatmulArgs a = RankArgs(target, w, 1, 0, want.data());
    ASSERT_TRUE(TreeMatmulPartial(a).ok());
  }
  std::vector<SimdLevel> levels = {SimdLevel::kScalar};
  if (static_cast<int>(DetectSimdLevel()) >= 1) levels.push_back(SimdLevel::kAvx2);
  if (static_cast<int>(DetectSimdLevel()) >= 2) levels.push_back(SimdLevel::kAvx512);
  for (SimdLevel level : levels) {
    ASSERT_TRUE(SetSimdLevel(level).ok());
    for (int threads : {1, 2, 3}) {
      SetNumThreads(threads);
      for (int64_t m : {1, 2, 5, 8, 13, 40}) {
        for (int t : {2, 8}) {
          SCOPED_TRACE(::testing::Message()
                       << SimdLevelName(level) << " threads=" << threads
                       << " m=" << m << " t=" << t);
          Matrix x = RandomMatrix(m, 160, 160, DType::kF32, 100 + m);
          const int64_t pos = m - 1;
          std::memcpy(x.bytes.data() + pos * 160 * 4, target.data(), 160 * 4);
          std::vector<float> y = RunTp(x, w, t, DType::kF32, nullptr);
          ASSERT_EQ(0, std::memcmp(y.data() + pos * 70, want.data(),
                                   70 * sizeof(float)));
        }
      }
    }
  }
}

TEST_F(TreeReduceTest, PackedWeightsGiveTheSameBits) {
  int seed = 0;
  for (const Shape& s : kShapes) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      ++seed;
      const Matrix x = RandomMatrix(s.m, s.k, s.k, DType::kF32, 50 + seed);
      const Matrix w = RandomMatrix(s.n, s.k, s.k + 2, dt, 60 + seed);
      for (int t : {1, 2, 4, 8}) {
        SCOPED_TRACE(::testing::Message() << "m=" << s.m << " n=" << s.n
                                          << " k=" << s.k << " t=" << t);
        for (int r = 0; r < t; ++r) {
          std::vector<float> plain(s.m * s.n), packed(s.m * s.n);
          TreeMatmulArgs a = RankArgs(x, w, t, r, plain.data());
          ASSERT_TRUE(TreeMatmulPartial(a).ok());
          auto pw = PackedWeight::Pack(a.base.w, dt, w.ld, s.n, a.base.k);
          ASSERT_TRUE(pw.ok());
          a.base.y = packed.data();
          a.base.w = nullptr;  // taken from the packed weight
          ASSERT_TRUE(TreeMatmulPartialPacked(a, **pw).ok());
          ASSERT_EQ(plain, packed) << "rank " << r;
        }
      }
    }
  }
}

TEST_F(TreeReduceTest, AccurateAgainstFloat64) {
  const Matrix x = RandomMatrix(13, 1024, 1024, DType::kF32, 31);
  const Matrix w = RandomMatrix(37, 1024, 1024, DType::kF32, 32);
  const std::vector<float> y = RunTp(x, w, 4, DType::kF32, nullptr);
  for (int64_t i = 0; i < 13; ++i) {
    for (int64_t j = 0; j < 37; ++j) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < 1024; ++k) {
        const double p = double{x.Get(i, k)} * double{w.Get(j, k)};
        ref += p;
        mag += std::fabs(p);
      }
      // Leaves of 128 sequential fmas, then 3 tree levels.
      const double bound = 1.01 * (128 + 3) * std::ldexp(1.0, -24) * mag;
      ASSERT_LE(std::fabs(y[i * 37 + j] - ref), bound);
    }
  }
}

// The standard twins: a sequential-K matmul, and rank partials summed in
// another order, must differ from the tree somewhere; otherwise the bitwise
// checks above would prove nothing.
TEST_F(TreeReduceTest, StandardTwinsDiffer) {
  const Matrix x = RandomMatrix(16, 512, 512, DType::kF32, 41);
  const Matrix w = RandomMatrix(64, 512, 512, DType::kF32, 42);
  std::vector<float> partials;
  const std::vector<float> tree = RunTp(x, w, 8, DType::kF32, &partials);

  MatmulArgs a;
  std::vector<float> seq(16 * 64);
  a.x = x.data();
  a.ldx = 512;
  a.w = w.data();
  a.ldw = 512;
  a.y = seq.data();
  a.ldy = 64;
  a.m = 16;
  a.n = 64;
  a.k = 512;
  ASSERT_TRUE(Matmul(a).ok());
  int64_t seq_diffs = 0, order_diffs = 0;
  for (int64_t e = 0; e < 16 * 64; ++e) {
    seq_diffs += std::memcmp(&seq[e], &tree[e], sizeof(float)) != 0;
    // Naive rank-order accumulation (what a ring all-reduce might do).
    float naive = 0.0f;
    for (int r = 0; r < 8; ++r) naive += partials[r * 16 * 64 + e];
    order_diffs += std::memcmp(&naive, &tree[e], sizeof(float)) != 0;
  }
  EXPECT_GT(seq_diffs, 0);
  EXPECT_GT(order_diffs, 0);
}

TEST_F(TreeReduceTest, CombineAppliesTheDocumentedLevels) {
  const std::vector<float> p = RandomFloats(8 * 3, 9, -1e3f, 1e3f);
  std::vector<float> y(3);
  TreeCombineArgs c;
  c.partials = p.data();
  c.y = y.data();
  c.ldy = 1;
  c.m = 3;
  c.n = 1;
  for (int t : {1, 2, 4, 8}) {
    c.t = t;
    ASSERT_TRUE(TreeCombine(c).ok());
    for (int i = 0; i < 3; ++i) {
      float want;
      const float* q = p.data() + i;  // rank r at q[3 * r]
      switch (t) {
        case 1: want = q[0]; break;
        case 2: want = q[0] + q[3]; break;
        case 4: want = (q[0] + q[3]) + (q[6] + q[9]); break;
        default: {
          const float v[8] = {q[0], q[3], q[6], q[9], q[12], q[15], q[18], q[21]};
          want = TreeSum8(v);
        }
      }
      EXPECT_EQ(0, std::memcmp(&want, &y[i], sizeof(float))) << "t=" << t;
    }
  }
}

TEST_F(TreeReduceTest, BadArgumentsAreInvalid) {
  const Matrix x = RandomMatrix(2, 16, 16, DType::kF32, 1);
  const Matrix w = RandomMatrix(3, 16, 16, DType::kF32, 2);
  std::vector<float> y(2 * 3 * 8);
  const TreeMatmulArgs good = RankArgs(x, w, 2, 1, y.data());
  ASSERT_TRUE(TreeMatmulPartial(good).ok());
  auto expect_invalid = [](const TreeMatmulArgs& a, const char* what) {
    const absl::Status s = TreeMatmulPartial(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
  };
  TreeMatmulArgs a = good;
  a.k_total = 12;
  expect_invalid(a, "k_total % 8");
  a = good;
  a.leaf_count = 3;
  expect_invalid(a, "leaf_count 3");
  a = good;
  a.leaf_begin = 2;  // not a multiple of 4
  expect_invalid(a, "misaligned leaf_begin");
  a = good;
  a.leaf_begin = 8;
  expect_invalid(a, "leaf_begin past the tree");
  a = good;
  a.leaf_begin = -4;
  expect_invalid(a, "negative leaf_begin");
  a = good;
  a.base.k = 6;
  a.base.ldx = a.base.ldw = 16;
  expect_invalid(a, "k != leaf_count * k_total / 8");
  a = good;
  a.base.x = nullptr;
  expect_invalid(a, "null x");
  a = good;
  a.base.w = nullptr;
  expect_invalid(a, "null w");
  a = good;
  a.base.y = nullptr;
  expect_invalid(a, "null y");
  a = good;
  a.base.ldw = 7;
  expect_invalid(a, "ldw < k");
  a = good;
  a.base.ldy = 2;
  expect_invalid(a, "ldy < n");
  a = good;
  a.base.m = -1;
  expect_invalid(a, "negative m");

  // The packed variant checks k against the packed weight.
  auto pw = PackedWeight::Pack(w.data(), DType::kF32, 16, 3, 16);
  ASSERT_TRUE(pw.ok());
  EXPECT_EQ(TreeMatmulPartialPacked(good, **pw).code(),
            absl::StatusCode::kInvalidArgument);
  auto pw8 = PackedWeight::Pack(w.At(0, 8), DType::kF32, 16, 3, 8);
  ASSERT_TRUE(pw8.ok());
  EXPECT_TRUE(TreeMatmulPartialPacked(good, **pw8).ok());
  a = good;
  a.base.x = nullptr;
  EXPECT_EQ(TreeMatmulPartialPacked(a, **pw8).code(),
            absl::StatusCode::kInvalidArgument);

  TreeCombineArgs c;
  c.partials = y.data();
  c.y = y.data() + 24;
  c.m = 2;
  c.n = 3;
  c.ldy = 3;
  for (int t : {0, 3, 5, 16}) {
    c.t = t;
    EXPECT_EQ(TreeCombine(c).code(), absl::StatusCode::kInvalidArgument) << t;
  }
  c.t = 2;
  ASSERT_TRUE(TreeCombine(c).ok());
  c.ldy = 2;
  EXPECT_EQ(TreeCombine(c).code(), absl::StatusCode::kInvalidArgument);
  c.ldy = 3;
  c.partials = nullptr;
  EXPECT_EQ(TreeCombine(c).code(), absl::StatusCode::kInvalidArgument);
  c.partials = y.data();
  c.y = nullptr;
  EXPECT_EQ(TreeCombine(c).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lockstep::kernels
