// CUDA sampling: Philox equals the CPU PhiloxUniform bit for bit; seeded
// samples are batch invariant and respect top-k/top-p; argmax ties and NaN.
// Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
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
#include "kernels/cuda/sampling.h"
#include "kernels/sampling.h"

namespace lockstep::kernels {
namespace {


TEST(SamplingCudaTest, PhiloxMatchesCpuBitwise) {
  SKIP_WITHOUT_GPU();
  // Known answer of Philox4x32-10 (Random123): zero counter and key.
  const std::array<uint32_t, 4> kat = Philox4x32({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(kat[0], 0x6627e8d5u);
  EXPECT_EQ(kat[1], 0xe169c58du);
  EXPECT_EQ(kat[2], 0xbc57ac4cu);
  EXPECT_EQ(kat[3], 0x9b00dbd8u);
  const int64_t count = 4099;
  DevBuf<float> u(count);
  for (uint64_t seed : {0ull, 1ull, 0xdeadbeefcafef00dull}) {
    for (int64_t pos : {0L, 1L, 4097L, (1L << 33) + 5}) {
      ASSERT_TRUE(cuda::PhiloxUniformDevice(seed, pos, count, u.get(), nullptr).ok());
      const std::vector<float> got = u.Download();
      for (int64_t i = 0; i < count; ++i) {
        const float want = PhiloxUniform(seed, pos, i);
        ASSERT_EQ(std::memcmp(&got[i], &want, 4), 0)
            << "seed " << seed << " pos " << pos << " i " << i;
        ASSERT_GT(got[i], 0.0f);
        ASSERT_LT(got[i], 1.0f);
      }
    }
  }
}

std::vector<int32_t> RunSample(const DevBuf<float>& logits, int64_t vocab,
                               const std::vector<int64_t>& rows,
                               const std::vector<SamplingParams>& params,
                               const std::vector<int64_t>& positions) {
  // Gather the chosen rows into a batch.
  std::vector<float> all = logits.Download();
  std::vector<float> x(rows.size() * vocab);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(&x[i * vocab], &all[rows[i] * vocab], vocab * sizeof(float));
  }
  DevBuf<float> dx(x);
  DevBuf<SamplingParams> dp(params);
  DevBuf<int64_t> dpos(positions);
  DevBuf<int32_t> out(rows.size());
  SampleArgs a;
  a.logits = dx.get();
  a.ld = vocab;
  a.rows = static_cast<int64_t>(rows.size());
  a.vocab = vocab;
  a.params = dp.get();
  a.positions = dpos.get();
  a.tokens_out = out.get();
  absl::Status s = cuda::Sample(a, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  return out.Download();
}

TEST(SamplingCudaTest, SeededSamplesAreBatchInvariantAndRespectFilters) {
  SKIP_WITHOUT_GPU();
  const int64_t vocab = 32000, pool = 16;
  DevBuf<float> logits(testing::RandomFloats(pool * vocab, 8, -5.0f, 5.0f));
  std::vector<float> host = logits.Download();
  std::vector<SamplingParams> kinds(6);
  kinds[0] = {1.0f, 0, 1.0f, 7};
  kinds[1] = {0.7f, 50, 1.0f, 8};
  kinds[2] = {1.3f, 0, 0.9f, 9};
  kinds[3] = {1.0f, 20, 0.5f, 10};
  kinds[4] = {0.0f, 0, 1.0f, 11};
  kinds[5] = {2.0f, 1, 1.0f, 12};
  // Alone.
  std::vector<int32_t> alone(pool * kinds.size());
  for (int64_t r = 0; r < pool; ++r) {
    for (size_t k = 0; k < kinds.size(); ++k) {
      alone[r * kinds.size() + k] = RunSample(logits, vocab, {r}, {kinds[k]}, {100 + r})[0];
    }
  }
  // In one mixed batch, shuffled.
  std::vector<int64_t> rows, positions;
  std::vector<SamplingParams> params;
  std::vector<size_t> id;
  for (int64_t r = 0; r < pool; ++r) {
    for (size_t k = 0; k < kinds.size(); ++k) id.push_back(r * kinds.size() + k);
  }
  std::mt19937_64 rng(3);
  std::shuffle(id.begin(), id.end(), rng);
  for (size_t i : id) {
    rows.push_back(static_cast<int64_t>(i / kinds.size()));
    params.push_back(kinds[i % kinds.size()]);
    positions.push_back(100 + static_cast<int64_t>(i / kinds.size()));
  }
  std::vector<int32_t> batch = RunSample(logits, vocab, rows, params, positions);
  for (size_t i = 0; i < id.size(); ++i) EXPECT_EQ(batch[i], alone[id[i]]) << i;
  // Filters: the token is inside the kept set.
  for (int64_t r = 0; r < pool; ++r) {
    const float* x = &host[r * vocab];
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return x[a] > x[b]; });
    auto rank_of = [&](int32_t tok) {
      return std::find(order.begin(), order.end(), tok) - order.begin();
    };
    EXPECT_LT(rank_of(alone[r * kinds.size() + 1]), 50);
    EXPECT_LT(rank_of(alone[r * kinds.size() + 3]), 20);
    EXPECT_EQ(alone[r * kinds.size() + 4], order[0]);  // T = 0: argmax
    EXPECT_EQ(alone[r * kinds.size() + 5], order[0]);  // top_k = 1
    // top_p = 0.9 at T = 1.3: the prefix whose mass reaches 0.9.
    double zmax = x[order[0]] / 1.3, den = 0;
    for (int64_t j = 0; j < vocab; ++j) den += std::exp(x[j] / 1.3 - zmax);
    double cum = 0;
    int64_t n = 0;
    while (cum < 0.9 * den) cum += std::exp(x[order[n++]] / 1.3 - zmax);
    EXPECT_LE(rank_of(alone[r * kinds.size() + 2]), n);
  }
}

TEST(SamplingCudaTest, ArgmaxTiesNaNAndBadParams) {
  SKIP_WITHOUT_GPU();
  const float nan = std::nanf("");
  std::vector<float> x = {1, 3, 3, 2,  nan, nan, nan, nan,  nan, -1, nan, -1,
                          -0.0f, 0.0f, -5, -5};
  DevBuf<float> dx(x);
  DevBuf<int32_t> out(4);
  ASSERT_TRUE(cuda::Argmax(dx.get(), 4, 4, 4, out.get(), nullptr).ok());
  EXPECT_EQ(out.Download(), (std::vector<int32_t>{1, 0, 1, 0}));
  std::vector<SamplingParams> bad = {{-1.0f, 0, 1.0f, 0}};
  DevBuf<SamplingParams> dp(bad);
  DevBuf<int64_t> pos(std::vector<int64_t>{0});
  SampleArgs a;
  a.logits = dx.get();
  a.ld = 4;
  a.rows = 1;
  a.vocab = 4;
  a.params = dp.get();
  a.positions = pos.get();
  a.tokens_out = out.get();
  EXPECT_EQ(cuda::Sample(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lockstep::kernels
