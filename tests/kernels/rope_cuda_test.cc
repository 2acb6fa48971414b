// CUDA RoPE: accuracy against float64; a token depends on its position only.
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
#include "kernels/cuda/rope.h"
#include "kernels/rope.h"

namespace lockstep::kernels {
namespace {


TEST(RopeCudaTest, AccurateAndPositionOnly) {
  SKIP_WITHOUT_GPU();
  const int64_t tokens = 300, heads = 4, hd = 128;
  for (int64_t rot : {0L, 64L}) {
    std::vector<float> x = testing::RandomFloats(tokens * heads * hd, 4);
    std::vector<int32_t> pos(tokens);
    for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>((t * 37) % 5000);
    const int64_t rot_dim = rot == 0 ? hd : rot;
    std::vector<double> freq(rot_dim / 2);
    for (int64_t i = 0; i < rot_dim / 2; ++i) freq[i] = std::pow(1000000.0, -2.0 * i / rot_dim);
    DevBuf<double> dfreq(freq);
    auto run = [&](int64_t t0, int64_t m) {
      DevBuf<float> dx(std::vector<float>(x.begin() + t0 * heads * hd,
                                          x.begin() + (t0 + m) * heads * hd));
      DevBuf<int32_t> dp(std::vector<int32_t>(pos.begin() + t0, pos.begin() + t0 + m));
      RopeArgs a;
      a.x = dx.get();
      a.ldx = heads * hd;
      a.positions = dp.get();
      a.tokens = m;
      a.heads = heads;
      a.head_dim = hd;
      a.rotary_dim = rot;
      a.inv_freq = dfreq.get();
      EXPECT_TRUE(cuda::ApplyRope(a, nullptr).ok());
      return dx.Download();
    };
    const std::vector<float> all = run(0, tokens);
    const int64_t r = rot == 0 ? hd : rot, half = r / 2;
    std::vector<double> ref(x.begin(), x.end());
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < half; ++i) {
          const double ang = pos[t] * std::pow(1000000.0, -2.0 * i / r);
          const int64_t o = (t * heads + h) * hd;
          const double a = x[o + i], b = x[o + i + half];
          ref[o + i] = a * std::cos(ang) - b * std::sin(ang);
          ref[o + i + half] = b * std::cos(ang) + a * std::sin(ang);
        }
      }
    }
    EXPECT_LE(RelErr(ref, all), 1e-5);
    for (int64_t t0 : {0L, 17L, 299L}) {
      const std::vector<float> one = run(t0, 1);
      EXPECT_EQ(std::memcmp(one.data(), &all[t0 * heads * hd], heads * hd * 4), 0);
    }
  }
}

}  // namespace
}  // namespace lockstep::kernels
