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
#include "tests/testing/random.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/rms_norm.h"

namespace lockstep::kernels {
namespace {

// ---- Device test helpers (kept local to each *_cuda_test.cc) ----
bool HasCudaDevice() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";  \
  } while (0)

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// A device buffer of n elements of T.
template <typename T>
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t n) : n_(n) {
    if (n > 0 && cudaMalloc(&p_, n * sizeof(T)) != cudaSuccess) p_ = nullptr;
  }
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) { Upload(h); }
  ~DevBuf() {
    if (p_ != nullptr) cudaFree(p_);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      if (p_ != nullptr) cudaFree(p_);
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
    }
    return *this;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void Upload(const std::vector<T>& h) {
    cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> h(n_);
    cudaDeviceSynchronize();
    cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
  // Fills with 0xFF bytes (NaN for floats) so that unwritten outputs show.
  void Poison() { cudaMemset(p_, 0xFF, n_ * sizeof(T)); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = kernels::F32ToBF16(v[i]);
  return out;
}

std::vector<float> RoundedBf16(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = kernels::RoundToBF16(v[i]);
  return out;
}

// ||a - ref|| / ||ref|| (NaN if any NaN).
double RelErr(const std::vector<double>& ref, const std::vector<float>& a) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}
// ---- end of helpers ----

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
