// CUDA embedding gather. Skips without a GPU.
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
#include "kernels/cuda/embedding.h"
#include "kernels/embedding.h"

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

TEST(EmbeddingCudaTest, GathersExactlyAndRejectsBadIds) {
  SKIP_WITHOUT_GPU();
  const int64_t vocab = 500, dim = 96, tokens = 33;
  std::vector<float> table = RoundedBf16(testing::RandomFloats(vocab * dim, 1));
  std::vector<int32_t> ids = testing::RandomInts(tokens, 2, 0, vocab - 1);
  DevBuf<float> tf(table);
  DevBuf<uint16_t> tb(ToBf16(table));
  DevBuf<int32_t> di(ids);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    DevBuf<float> out(tokens * dim);
    out.Poison();
    EmbeddingArgs a;
    a.table = dt == DType::kF32 ? static_cast<const void*>(tf.get()) : tb.get();
    a.table_dtype = dt;
    a.ld_table = dim;
    a.vocab = vocab;
    a.ids = di.get();
    a.out = out.get();
    a.ld_out = dim;
    a.tokens = tokens;
    a.dim = dim;
    ASSERT_TRUE(cuda::Embedding(a, nullptr).ok());
    const std::vector<float> y = out.Download();
    for (int64_t t = 0; t < tokens; ++t) {
      ASSERT_EQ(std::memcmp(&y[t * dim], &table[ids[t] * dim], dim * 4), 0);
    }
    DevBuf<int32_t> bad(std::vector<int32_t>{1, static_cast<int32_t>(vocab)});
    a.ids = bad.get();
    a.tokens = 2;
    EXPECT_EQ(cuda::Embedding(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace lockstep::kernels
