// Tests of the batch-invariant CPU matmul (kernels/matmul.h): accuracy,
// bitwise agreement with the fma contract, batch/thread/SIMD invariance,
// prepacked weights, argument checks, and the worker pool it runs on.

#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"
#include "tests/testing/kernel_state.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;

// A row-major matrix of either dtype with row stride ld >= cols.
struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  std::vector<uint8_t> bytes;

  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  float Get(int64_t i, int64_t j) const {
    return LoadAsF32(bytes.data(), dtype, i * ld + j);
  }
  // The bytes of row i, columns [0, cols).
  std::vector<uint8_t> Row(int64_t i) const {
    const int64_t sz = DTypeSize(dtype);
    return std::vector<uint8_t>(bytes.begin() + i * ld * sz,
                                bytes.begin() + (i * ld + cols) * sz);
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

// Output buffer pre-filled with a byte pattern, so writes outside [rows,
// cols] show up.
Matrix OutputMatrix(int64_t rows, int64_t cols, int64_t ld, DType dtype) {
  Matrix m{dtype, rows, cols, ld, {}};
  m.bytes.assign(std::max<int64_t>(rows * ld, 1) * DTypeSize(dtype), 0xAB);
  return m;
}

MatmulArgs Args(const Matrix& x, const Matrix& w, Matrix& y) {
  MatmulArgs a;
  a.x = x.data();
  a.x_dtype = x.dtype;
  a.ldx = x.ld;
  a.w = w.data();
  a.w_dtype = w.dtype;
  a.ldw = w.ld;
  a.y = y.data();
  a.y_dtype = y.dtype;
  a.ldy = y.ld;
  a.m = x.rows;
  a.n = w.rows;
  a.k = x.cols;
  return a;
}

// The numerics contract written out: one fma chain per element.
Matrix ContractReference(const Matrix& x, const Matrix& w, DType y_dtype,
                         int64_t ldy) {
  Matrix y = OutputMatrix(x.rows, w.rows, ldy, y_dtype);
  for (int64_t i = 0; i < x.rows; ++i) {
    for (int64_t j = 0; j < w.rows; ++j) {
      float acc = 0.0f;
      for (int64_t k = 0; k < x.cols; ++k) {
        acc = std::fma(x.Get(i, k), w.Get(j, k), acc);
      }
      StoreFromF32(y.data(), y_dtype, i * ldy + j, acc);
    }
  }
  return y;
}

// Restores the global thread count and SIMD level after each test.
class MatmulTest : public testing::KernelStateTest {};

std::vector<SimdLevel> SupportedLevels() {
  std::vector<SimdLevel> levels = {SimdLevel::kScalar};
  if (static_cast<int>(DetectSimdLevel()) >= 1) levels.push_back(SimdLevel::kAvx2);
  if (static_cast<int>(DetectSimdLevel()) >= 2) {
    levels.push_back(SimdLevel::kAvx512);
  }
  return levels;
}

struct Shape {
  int64_t m, n, k;
};

TEST_F(MatmulTest, MatchesFmaContractAndFloat64Reference) {
  const int64_t sizes_m[] = {1, 3, 7, 8, 9, 17, 33, 65, 129};
  const int64_t sizes_n[] = {1, 3, 7, 16, 17, 33, 65, 129, 160};
  const int64_t sizes_k[] = {1, 7, 17, 64, 65, 129, 300};
  const DType dtypes[] = {DType::kF32, DType::kBF16};
  std::mt19937_64 rng(7);
  for (int c = 0; c < 90; ++c) {
    const int64_t m = sizes_m[rng() % std::size(sizes_m)];
    const int64_t n = sizes_n[rng() % std::size(sizes_n)];
    const int64_t k = sizes_k[rng() % std::size(sizes_k)];
    const DType xd = dtypes[rng() % 2], wd = dtypes[rng() % 2],
                yd = dtypes[rng() % 2];
    const bool strided = rng() % 2;
    SCOPED_TRACE(::testing::Message()
                 << "m=" << m << " n=" << n << " k=" << k << " x="
                 << DTypeName(xd) << " w=" << DTypeName(wd) << " y="
                 << DTypeName(yd) << " strided=" << strided);
    const Matrix x = RandomMatrix(m, k, k + (strided ? 5 : 0), xd, 100 + c);
    const Matrix w = RandomMatrix(n, k, k + (strided ? 3 : 0), wd, 200 + c);
    Matrix y = OutputMatrix(m, n, n + (strided ? 7 : 0), yd);
    ASSERT_TRUE(Matmul(Args(x, w, y)).ok());

    // Bitwise: the fma chain of the contract, padding untouched.
    const Matrix want = ContractReference(x, w, yd, y.ld);
    ASSERT_EQ(0, std::memcmp(y.data(), want.data(), y.bytes.size()));

    // Accuracy against float64: the forward error of a length-k fp32 fma
    // chain is at most k * 2^-24 * sum |x w| (plus bf16 output rounding).
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double ref = 0, mag = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
          const double p = double{x.Get(i, kk)} * double{w.Get(j, kk)};
          ref += p;
          mag += std::fabs(p);
        }
        double bound = 1.01 * k * std::ldexp(1.0, -24) * mag + 1e-30;
        if (yd == DType::kBF16) bound += std::ldexp(1.0, -8) * std::fabs(ref);
        ASSERT_LE(std::fabs(y.Get(i, j) - ref), bound) << "i=" << i
                                                       << " j=" << j;
      }
    }
  }
}

TEST_F(MatmulTest, LargeShapeMatchesContract) {
  SetNumThreads(2);
  const Matrix x = RandomMatrix(70, 1024, 1030, DType::kF32, 1);
  const Matrix w = RandomMatrix(300, 1024, 1024, DType::kBF16, 2);
  Matrix y = OutputMatrix(70, 300, 301, DType::kF32);
  ASSERT_TRUE(Matmul(Args(x, w, y)).ok());
  const Matrix want = ContractReference(x, w, DType::kF32, 301);
  EXPECT_EQ(0, std::memcmp(y.data(), want.data(), y.bytes.size()));
}

TEST_F(MatmulTest, ZeroSizes) {
  const Matrix x = RandomMatrix(3, 0, 0, DType::kF32, 1);
  const Matrix w = RandomMatrix(5, 0, 0, DType::kF32, 2);
  Matrix y = OutputMatrix(3, 5, 5, DType::kF32);
  ASSERT_TRUE(Matmul(Args(x, w, y)).ok());
  for (int64_t i = 0; i < 15; ++i) {
    EXPECT_EQ(0.0f, y.Get(0, i));
    EXPECT_FALSE(std::signbit(y.Get(0, i)));
  }
  MatmulArgs empty;  // m = n = k = 0, all pointers null
  EXPECT_TRUE(Matmul(empty).ok());
}

// A row's output bits do not depend on M, on the row's position, on the
// other rows or on the thread count.
TEST_F(MatmulTest, BatchAndThreadInvariance) {
  struct Case {
    DType x, w, y;
    int64_t n, k;
  };
  const Case cases[] = {{DType::kF32, DType::kF32, DType::kF32, 100, 129},
                        {DType::kBF16, DType::kBF16, DType::kBF16, 161, 64},
                        {DType::kF32, DType::kBF16, DType::kF32, 33, 257}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " k=" << c.k);
    const Matrix target = RandomMatrix(1, c.k, c.k, c.x, 11);
    const Matrix w = RandomMatrix(c.n, c.k, c.k + 1, c.w, 12);
    auto packed = PackedWeight::Pack(w.data(), w.dtype, w.ld, c.n, c.k);
    ASSERT_TRUE(packed.ok());

    SetNumThreads(1);
    Matrix base = OutputMatrix(1, c.n, c.n, c.y);
    ASSERT_TRUE(Matmul(Args(target, w, base)).ok());
    const std::vector<uint8_t> want = base.Row(0);

    for (int threads : {1, 2, 3}) {
      SetNumThreads(threads);
      for (int64_t m = 1; m <= 64; ++m) {
        for (int64_t pos : {int64_t{0}, m / 2, m - 1}) {
          SCOPED_TRACE(::testing::Message() << "threads=" << threads
                                            << " m=" << m << " pos=" << pos);
          Matrix x = RandomMatrix(m, c.k, c.k + 2, c.x, 1000 + m * 7 + pos);
          const int64_t sz = DTypeSize(c.x);
          std::memcpy(x.bytes.data() + pos * x.ld * sz, target.data(),
                      c.k * sz);
          Matrix y = OutputMatrix(m, c.n, c.n + 1, c.y);
          ASSERT_TRUE(Matmul(Args(x, w, y)).ok());
          ASSERT_EQ(y.Row(pos), want);
          Matrix yp = OutputMatrix(m, c.n, c.n, c.y);
          ASSERT_TRUE(MatmulPacked(Args(x, w, yp), **packed).ok());
          ASSERT_EQ(yp.Row(pos), want);
        }
      }
    }
  }
}

TEST_F(MatmulTest, SimdLevelsAgreeBitwise) {
  const std::vector<SimdLevel> levels = SupportedLevels();
  if (levels.size() == 1) GTEST_SKIP() << "CPU has neither AVX2 nor AVX-512";
  const Shape shapes[] = {{1, 1, 1},    {1, 7, 33},    {2, 129, 65},
                          {3, 40, 17},  {5, 24, 100},  {7, 97, 31},
                          {8, 8, 8},    {9, 150, 64},  {13, 33, 129},
                          {16, 200, 9}, {17, 65, 255}, {31, 48, 70},
                          {64, 129, 128}};
  const DType dtypes[] = {DType::kF32, DType::kBF16};
  int seed = 0;
  for (const Shape& s : shapes) {
    for (DType xd : dtypes) {
      for (DType wd : dtypes) {
        for (DType yd : dtypes) {
          ++seed;
          SCOPED_TRACE(::testing::Message()
                       << "m=" << s.m << " n=" << s.n << " k=" << s.k << " x="
                       << DTypeName(xd) << " w=" << DTypeName(wd)
                       << " y=" << DTypeName(yd));
          const Matrix x = RandomMatrix(s.m, s.k, s.k + 1, xd, 300 + seed);
          const Matrix w = RandomMatrix(s.n, s.k, s.k, wd, 400 + seed);
          std::vector<std::vector<uint8_t>> outs;
          for (SimdLevel level : levels) {
            ASSERT_TRUE(SetSimdLevel(level).ok());
            for (int threads : {1, 2}) {
              SetNumThreads(threads);
              Matrix y = OutputMatrix(s.m, s.n, s.n + 3, yd);
              ASSERT_TRUE(Matmul(Args(x, w, y)).ok());
              outs.push_back(y.bytes);
            }
          }
          for (size_t i = 1; i < outs.size(); ++i) {
            ASSERT_EQ(outs[i], outs[0]) << "run " << i;
          }
        }
      }
    }
  }
}

TEST_F(MatmulTest, PackedMatchesUnpackedBitwise) {
  const Shape shapes[] = {{1, 1, 1},     {1, 1000, 64}, {4, 33, 17},
                          {8, 96, 128},  {9, 31, 300},  {33, 257, 65},
                          {100, 64, 48}};
  int seed = 0;
  for (SimdLevel level : SupportedLevels()) {
    ASSERT_TRUE(SetSimdLevel(level).ok());
    for (const Shape& s : shapes) {
      for (DType wd : {DType::kF32, DType::kBF16}) {
        for (DType yd : {DType::kF32, DType::kBF16}) {
          ++seed;
          SCOPED_TRACE(::testing::Message()
                       << "level=" << SimdLevelName(level) << " m=" << s.m
                       << " n=" << s.n << " k=" << s.k);
          const Matrix x = RandomMatrix(s.m, s.k, s.k, DType::kF32, seed);
          const Matrix w = RandomMatrix(s.n, s.k, s.k + 4, wd, 50 + seed);
          auto packed = PackedWeight::Pack(w.data(), wd, w.ld, s.n, s.k);
          ASSERT_TRUE(packed.ok()) << packed.status();
          EXPECT_EQ((*packed)->n(), s.n);
          EXPECT_EQ((*packed)->k(), s.k);
          EXPECT_EQ((*packed)->dtype(), wd);
          Matrix y1 = OutputMatrix(s.m, s.n, s.n, yd);
          Matrix y2 = OutputMatrix(s.m, s.n, s.n, yd);
          ASSERT_TRUE(Matmul(Args(x, w, y1)).ok());
          MatmulArgs a = Args(x, w, y2);
          a.w = nullptr;  // ignored by MatmulPacked
          a.n = a.k = a.ldw = 0;
          ASSERT_TRUE(MatmulPacked(a, **packed).ok());
          ASSERT_EQ(y1.bytes, y2.bytes);
        }
      }
    }
  }
}

// Stacked projections (q/k/v, gate/up held as one weight, the inference
// model's Ops::StackedLinear): one GEMM over the stacked weight gives each
// column block exactly the bits of that block's own GEMM on a weight of its
// own, packed or not, at every M, SIMD level and thread count; block sizes
// that are not multiples of the 32-column panel included.
TEST_F(MatmulTest, StackedWeightGivesEachBlockItsOwnGemmBits) {
  struct Stack {
    std::vector<int64_t> splits;
    int64_t k;
  };
  const Stack stacks[] = {{{256, 128, 128}, 256},  // qwen3-style q, k, v (scaled)
                          {{96, 40, 40}, 200},     // blocks off the panel grid
                          {{200, 200}, 128},       // gate, up
                          {{1, 33, 7}, 65}};
  int seed = 0;
  for (SimdLevel level : SupportedLevels()) {
    ASSERT_TRUE(SetSimdLevel(level).ok());
    for (int threads : {1, 3}) {
      SetNumThreads(threads);
      for (const Stack& st : stacks) {
        for (DType xd : {DType::kF32, DType::kBF16}) {
          for (DType wd : {DType::kF32, DType::kBF16}) {
            ++seed;
            int64_t n = 0;
            for (int64_t b : st.splits) n += b;
            // The separate weights, each in its own buffer, and their stack.
            std::vector<Matrix> blocks;
            Matrix stacked{wd, n, st.k, st.k, {}};
            for (size_t i = 0; i < st.splits.size(); ++i) {
              blocks.push_back(RandomMatrix(st.splits[i], st.k, st.k, wd, 700 + 10 * seed + i));
              stacked.bytes.insert(stacked.bytes.end(), blocks.back().bytes.begin(),
                                   blocks.back().bytes.end());
            }
            auto packed = PackedWeight::Pack(stacked.data(), wd, st.k, n, st.k);
            ASSERT_TRUE(packed.ok()) << packed.status();
            const Matrix pool = RandomMatrix(200, st.k, st.k, xd, 900 + seed);
            for (int64_t m : {1, 3, 16, 64, 200}) {
              SCOPED_TRACE(::testing::Message()
                           << "level=" << SimdLevelName(level) << " threads=" << threads
                           << " n=" << n << " k=" << st.k << " m=" << m
                           << " x=" << DTypeName(xd) << " w=" << DTypeName(wd));
              Matrix x = pool;
              x.rows = m;
              Matrix y = OutputMatrix(m, n, n, DType::kF32);
              Matrix yp = OutputMatrix(m, n, n, DType::kF32);
              ASSERT_TRUE(Matmul(Args(x, stacked, y)).ok());
              MatmulArgs a = Args(x, stacked, yp);
              a.w = nullptr;  // ignored by MatmulPacked
              ASSERT_TRUE(MatmulPacked(a, **packed).ok());
              ASSERT_EQ(y.bytes, yp.bytes) << "stacked: packed vs unpacked";
              int64_t col = 0;
              for (size_t i = 0; i < blocks.size(); ++i) {
                const int64_t nb = blocks[i].rows;
                Matrix yb = OutputMatrix(m, nb, nb, DType::kF32);
                ASSERT_TRUE(Matmul(Args(x, blocks[i], yb)).ok());
                auto pb = PackedWeight::Pack(blocks[i].data(), wd, st.k, nb, st.k);
                ASSERT_TRUE(pb.ok()) << pb.status();
                Matrix ybp = OutputMatrix(m, nb, nb, DType::kF32);
                MatmulArgs ab = Args(x, blocks[i], ybp);
                ab.w = nullptr;
                ASSERT_TRUE(MatmulPacked(ab, **pb).ok());
                ASSERT_EQ(yb.bytes, ybp.bytes) << "block " << i << ": packed vs unpacked";
                for (int64_t r = 0; r < m; ++r) {
                  ASSERT_EQ(0, std::memcmp(y.bytes.data() + (r * n + col) * 4,
                                           yb.bytes.data() + r * nb * 4, nb * 4))
                      << "block " << i << " row " << r;
                }
                col += nb;
              }
            }
          }
        }
      }
    }
  }
}

TEST_F(MatmulTest, BadArgumentsAreInvalid) {
  const Matrix x = RandomMatrix(4, 8, 8, DType::kF32, 1);
  const Matrix w = RandomMatrix(5, 8, 8, DType::kF32, 2);
  Matrix y = OutputMatrix(4, 5, 5, DType::kF32);
  const MatmulArgs good = Args(x, w, y);
  ASSERT_TRUE(Matmul(good).ok());

  auto expect_invalid = [](const MatmulArgs& a, const char* what) {
    const absl::Status s = Matmul(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
    EXPECT_FALSE(s.message().empty());
  };
  MatmulArgs a = good;
  a.x = nullptr;
  expect_invalid(a, "null x");
  a = good;
  a.w = nullptr;
  expect_invalid(a, "null w");
  a = good;
  a.y = nullptr;
  expect_invalid(a, "null y");
  a = good;
  a.m = -1;
  expect_invalid(a, "negative m");
  a = good;
  a.n = -2;
  expect_invalid(a, "negative n");
  a = good;
  a.k = -3;
  expect_invalid(a, "negative k");
  a = good;
  a.ldx = 7;
  expect_invalid(a, "ldx < k");
  a = good;
  a.ldw = 7;
  expect_invalid(a, "ldw < k");
  a = good;
  a.ldy = 4;
  expect_invalid(a, "ldy < n");
  a = good;
  a.x_dtype = static_cast<DType>(7);
  expect_invalid(a, "bad dtype");

  EXPECT_EQ(PackedWeight::Pack(nullptr, DType::kF32, 8, 5, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackedWeight::Pack(w.data(), DType::kF32, 7, 5, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackedWeight::Pack(w.data(), DType::kF32, 8, -5, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto packed = PackedWeight::Pack(w.data(), DType::kF32, 8, 5, 8);
  ASSERT_TRUE(packed.ok());
  a = good;
  a.ldx = 6;
  EXPECT_EQ(MatmulPacked(a, **packed).code(),
            absl::StatusCode::kInvalidArgument);
  a = good;
  a.y = nullptr;
  EXPECT_EQ(MatmulPacked(a, **packed).code(),
            absl::StatusCode::kInvalidArgument);

  // A CUDA request in a CPU-only build fails cleanly.
  if (!CudaKernelsBuilt()) {
    ExecContext cuda;
    cuda.device = Device::kCuda;
    EXPECT_EQ(Matmul(good, cuda).code(), absl::StatusCode::kFailedPrecondition);
  }
}

// Tensor-parallel ranks run as application threads that call kernels at the
// same time; each must get exactly its single-threaded result.
TEST_F(MatmulTest, ConcurrentCallersGetTheirOwnBits) {
  SetNumThreads(2);
  constexpr int kCallers = 4;
  std::vector<Matrix> xs, ws, want;
  for (int c = 0; c < kCallers; ++c) {
    xs.push_back(RandomMatrix(9 + c, 96, 96, DType::kF32, 60 + c));
    ws.push_back(RandomMatrix(70, 96, 96, DType::kBF16, 70 + c));
    want.push_back(ContractReference(xs[c], ws[c], DType::kF32, 70));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int rep = 0; rep < 50; ++rep) {
        Matrix y = OutputMatrix(xs[c].rows, 70, 70, DType::kF32);
        if (!Matmul(Args(xs[c], ws[c], y)).ok() || y.bytes != want[c].bytes) {
          failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

#if defined(__x86_64__)
// Flush-to-zero / denormals-are-zero are per-thread state; pool workers must
// follow the calling thread or the bits would depend on who ran a chunk.
TEST_F(MatmulTest, WorkersFollowTheCallersDenormalMode) {
  SetNumThreads(2);
  Matrix x = RandomMatrix(4, 64, 64, DType::kF32, 81);
  Matrix w = RandomMatrix(256, 64, 64, DType::kF32, 82);
  for (int64_t i = 0; i < 4 * 64; ++i) {
    static_cast<float*>(x.data())[i] *= 1e-20f;
  }
  for (int64_t i = 0; i < 256 * 64; ++i) {
    static_cast<float*>(w.data())[i] *= 1e-19f;
  }
  Matrix normal = OutputMatrix(4, 256, 256, DType::kF32);
  ASSERT_TRUE(Matmul(Args(x, w, normal)).ok());  // also starts the workers

  const unsigned saved_csr = _mm_getcsr();
  _mm_setcsr(saved_csr | 0x8040);  // FTZ | DAZ
  Matrix two = OutputMatrix(4, 256, 256, DType::kF32);
  ASSERT_TRUE(Matmul(Args(x, w, two)).ok());
  SetNumThreads(1);
  Matrix one = OutputMatrix(4, 256, 256, DType::kF32);
  ASSERT_TRUE(Matmul(Args(x, w, one)).ok());
  _mm_setcsr(saved_csr);

  EXPECT_EQ(one.bytes, two.bytes);
  EXPECT_NE(one.bytes, normal.bytes);  // the mode matters for this data
}
#endif

TEST(ParallelForTest, CoversRangeOnceInGrainAlignedChunks) {
  const int saved = NumThreads();
  for (int threads : {1, 2, 3, 5}) {
    SetNumThreads(threads);
    for (int64_t n : {1, 2, 7, 64, 1000}) {
      for (int64_t grain : {1, 3, 16}) {
        std::vector<std::atomic<int>> hits(n);
        std::atomic<int> chunks{0};
        std::atomic<bool> misaligned{false};
        ParallelFor(n, grain, [&](int64_t b, int64_t e) {
          chunks.fetch_add(1);
          if (b % grain != 0 || b >= e) misaligned = true;
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1);
        EXPECT_LE(chunks.load(), threads);
        EXPECT_FALSE(misaligned.load());
      }
    }
  }
  ParallelFor(0, 1, [](int64_t, int64_t) { FAIL() << "called for n = 0"; });
  SetNumThreads(saved);
}

#if defined(__x86_64__)
TEST(ParallelForTest, WorkersUseTheCallersMxcsr) {
  const int saved = NumThreads();
  SetNumThreads(2);
  ParallelFor(2, 1, [](int64_t, int64_t) {});  // make sure a worker exists
  const unsigned saved_csr = _mm_getcsr();
  const unsigned want = saved_csr | 0x8040;  // FTZ | DAZ
  _mm_setcsr(want);
  std::atomic<int> entered{0};
  std::atomic<int> mismatches{0};
  std::vector<std::thread::id> ids(2);
  ParallelFor(2, 1, [&](int64_t b, int64_t) {
    ids[b] = std::this_thread::get_id();
    if (_mm_getcsr() != want) mismatches.fetch_add(1);
    // Hold the first chunk until the other one has started, so that a
    // worker (not the caller) runs it.
    entered.fetch_add(1);
    for (int i = 0; i < 2000 && entered.load() < 2; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  _mm_setcsr(saved_csr);
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_EQ(mismatches.load(), 0);
  SetNumThreads(saved);
}
#endif

TEST(ParallelForTest, NestedCallsRunInline) {
  const int saved = NumThreads();
  SetNumThreads(2);
  std::atomic<int64_t> total{0};
  ParallelFor(8, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const std::thread::id outer = std::this_thread::get_id();
      ParallelFor(100, 1, [&](int64_t ib, int64_t ie) {
        EXPECT_EQ(std::this_thread::get_id(), outer);
        total.fetch_add(ie - ib);
      });
    }
  });
  EXPECT_EQ(total.load(), 800);
  SetNumThreads(saved);
}

TEST(ParallelForTest, ConcurrentCallers) {
  const int saved = NumThreads();
  SetNumThreads(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 6; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 200; ++rep) {
        ParallelFor(1000, 10, [&](int64_t b, int64_t e) {
          total.fetch_add(e - b);
        });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 6 * 200 * 1000);
  SetNumThreads(saved);
}

TEST(ParallelForTest, SetNumThreadsClampsToOne) {
  const int saved = NumThreads();
  SetNumThreads(0);
  EXPECT_EQ(NumThreads(), 1);
  SetNumThreads(-4);
  EXPECT_EQ(NumThreads(), 1);
  SetNumThreads(saved);
  EXPECT_GE(NumThreads(), 1);
}

}  // namespace
}  // namespace lockstep::kernels
