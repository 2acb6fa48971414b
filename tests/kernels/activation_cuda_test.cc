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
#include "tests/testing/random.h"
#include "kernels/activation.h"
#include "kernels/cuda/activation.h"

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
