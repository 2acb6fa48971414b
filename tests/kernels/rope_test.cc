// Tests of rotary position embedding (kernels/rope.h): accuracy against
// float64, the contract's fp32 arithmetic bit for bit, partial rotary_dim,
// batch invariance and argument checks.

#include "kernels/rope.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <utility>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/threading.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;
using ::lockstep::testing::RandomInts;

// The plain-RoPE frequency table theta^(-2i/rot), kept alive for the test
// binary's lifetime (RopeArgs points into it).
const double* PlainTable(double theta, int64_t rot) {
  static auto* tables = new std::map<std::pair<double, int64_t>, std::vector<double>>();
  std::vector<double>& t = (*tables)[{theta, rot}];
  if (t.empty()) {
    for (int64_t i = 0; i < rot / 2; ++i) t.push_back(std::pow(theta, -2.0 * i / rot));
  }
  return t.data();
}

RopeArgs Args(std::vector<float>& x, int64_t ldx,
              const std::vector<int32_t>& pos, int64_t heads, int64_t head_dim,
              int64_t rotary_dim = 0, double theta = 10000.0) {
  RopeArgs a;
  a.x = x.data();
  a.ldx = ldx;
  a.positions = pos.data();
  a.tokens = static_cast<int64_t>(pos.size());
  a.heads = heads;
  a.head_dim = head_dim;
  a.rotary_dim = rotary_dim;
  a.inv_freq = PlainTable(theta, rotary_dim == 0 ? head_dim : rotary_dim);
  return a;
}

// The contract, written out for one head: cos/sin in double rounded to fp32,
// the rotation in fp32 without contraction.
void ContractHead(float* x, int64_t rot, int32_t pos, double theta) {
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle =
        static_cast<double>(pos) * std::pow(theta, -2.0 * i / rot);
    const float c = static_cast<float>(std::cos(angle));
    const float s = static_cast<float>(std::sin(angle));
    const float a = x[i], b = x[i + half];
    const float ac = a * c, bs = b * s, bc = b * c, as = a * s;
    x[i] = ac - bs;
    x[i + half] = bc + as;
  }
}

struct Case {
  int64_t tokens, heads, head_dim, rotary_dim, ldx;
  double theta;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "tokens=" << c.tokens << " heads=" << c.heads
      << " head_dim=" << c.head_dim << " rotary_dim=" << c.rotary_dim
      << " ldx=" << c.ldx << " theta=" << c.theta;
}

class RopeShapes : public ::testing::TestWithParam<Case> {};

TEST_P(RopeShapes, MatchesFloat64AndContractBits) {
  const Case c = GetParam();
  const int64_t rot = c.rotary_dim == 0 ? c.head_dim : c.rotary_dim;
  const auto x0 = RandomFloats(c.tokens * c.ldx, 31 + c.head_dim, -2.0f, 2.0f);
  const auto pos = RandomInts(c.tokens, 32 + c.tokens, 0, 40000);
  auto x = x0;
  ASSERT_TRUE(
      ApplyRope(Args(x, c.ldx, pos, c.heads, c.head_dim, c.rotary_dim, c.theta))
          .ok());
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int64_t h = 0; h < c.heads; ++h) {
      const float* in = x0.data() + t * c.ldx + h * c.head_dim;
      const float* out = x.data() + t * c.ldx + h * c.head_dim;
      std::vector<float> expect(in, in + c.head_dim);
      ContractHead(expect.data(), rot, pos[t], c.theta);
      EXPECT_EQ(std::memcmp(out, expect.data(), c.head_dim * 4), 0)
          << "token " << t << " head " << h;
      for (int64_t i = 0; i < rot / 2; ++i) {
        const double angle = pos[t] * std::pow(c.theta, -2.0 * i / rot);
        const double a = in[i], b = in[i + rot / 2];
        EXPECT_NEAR(out[i], a * std::cos(angle) - b * std::sin(angle), 1e-6);
        EXPECT_NEAR(out[i + rot / 2], b * std::cos(angle) + a * std::sin(angle),
                    1e-6);
      }
      // Dimensions beyond rotary_dim pass through untouched.
      for (int64_t d = rot; d < c.head_dim; ++d) EXPECT_EQ(out[d], in[d]);
    }
    // Padding between tokens is never written.
    for (int64_t d = c.heads * c.head_dim; d < c.ldx; ++d) {
      EXPECT_EQ(x[t * c.ldx + d], x0[t * c.ldx + d]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeShapes,
                         ::testing::Values(Case{1, 1, 2, 0, 2, 10000.0},
                                           Case{7, 3, 10, 0, 33, 10000.0},
                                           Case{13, 4, 64, 32, 256, 500000.0},
                                           Case{5, 2, 128, 0, 256, 1000000.0},
                                           Case{33, 5, 6, 4, 31, 10000.0}));

TEST(Rope, PositionZeroIsIdentity) {
  auto x = RandomFloats(4 * 16, 1);
  const auto x0 = x;
  const std::vector<int32_t> pos(4, 0);
  ASSERT_TRUE(ApplyRope(Args(x, 16, pos, 2, 8)).ok());
  EXPECT_TRUE(testing::SameBits(x, x0));
}

// YaRN's attention factor scales cos and sin in double before the one fp32
// rounding; any table (here a non-geometric one) is used as given.
TEST(Rope, TableAndAttentionFactor) {
  const int64_t heads = 2, dim = 8, ld = heads * dim;
  const std::vector<double> table = {1.0, 0.25, 0.003, 0.0};
  const std::vector<int32_t> pos = {0, 3, 77};
  const auto x0 = RandomFloats(pos.size() * ld, 5, -2.0f, 2.0f);
  for (double scale : {1.0, 1.1386294361119891}) {
    auto x = x0;
    RopeArgs a = Args(x, ld, pos, heads, dim);
    a.inv_freq = table.data();
    a.attention_factor = scale;
    ASSERT_TRUE(ApplyRope(a).ok());
    for (size_t t = 0; t < pos.size(); ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t o = t * ld + h * dim;
        for (int64_t i = 0; i < dim / 2; ++i) {
          const double angle = pos[t] * table[i];
          const float c = static_cast<float>(std::cos(angle) * scale);
          const float sn = static_cast<float>(std::sin(angle) * scale);
          const float xa = x0[o + i], xb = x0[o + i + dim / 2];
          const float ac = xa * c, bs = xb * sn, bc = xb * c, as = xa * sn;
          EXPECT_EQ(x[o + i], ac - bs);
          EXPECT_EQ(x[o + i + dim / 2], bc + as);
        }
      }
    }
  }
}

TEST(Rope, BatchInvariant) {
  const int64_t heads = 4, dim = 64, ld = heads * dim;
  const auto row = RandomFloats(ld, 41, -3.0f, 3.0f);
  const int32_t p = 1234;
  auto alone = row;
  ASSERT_TRUE(ApplyRope(Args(alone, ld, {p}, heads, dim)).ok());
  std::mt19937 rng(42);
  for (int64_t batch = 1; batch <= 64; ++batch) {
    auto x = RandomFloats(batch * ld, 200 + batch, -3.0f, 3.0f);
    auto pos = RandomInts(batch, 300 + batch, 0, 8000);
    const int64_t at =
        std::uniform_int_distribution<int64_t>(0, batch - 1)(rng);
    std::memcpy(x.data() + at * ld, row.data(), ld * 4);
    pos[at] = p;
    ASSERT_TRUE(ApplyRope(Args(x, ld, pos, heads, dim)).ok());
    EXPECT_EQ(std::memcmp(x.data() + at * ld, alone.data(), ld * 4), 0)
        << "batch " << batch;
  }
}

TEST(Rope, ThreadCountInvariant) {
  const int64_t heads = 3, dim = 32, ld = heads * dim, tokens = 29;
  const auto x0 = RandomFloats(tokens * ld, 5);
  const auto pos = RandomInts(tokens, 6, 0, 5000);
  const int saved = NumThreads();
  SetNumThreads(1);
  auto ref = x0;
  ASSERT_TRUE(ApplyRope(Args(ref, ld, pos, heads, dim)).ok());
  for (int t : {2, 5}) {
    SetNumThreads(t);
    auto x = x0;
    ASSERT_TRUE(ApplyRope(Args(x, ld, pos, heads, dim)).ok());
    EXPECT_TRUE(testing::SameBits(x, ref));
  }
  SetNumThreads(saved);
}

TEST(Rope, BadArguments) {
  std::vector<float> x(2 * 16, 1.0f);
  const std::vector<int32_t> pos = {0, 5};
  const RopeArgs good = Args(x, 16, pos, 2, 8);
  ASSERT_TRUE(ApplyRope(good).ok());
  auto expect_invalid = [](RopeArgs a, const char* what) {
    EXPECT_EQ(ApplyRope(a).code(), absl::StatusCode::kInvalidArgument) << what;
  };
  RopeArgs a = good;
  a.x = nullptr;
  expect_invalid(a, "null x");
  a = good;
  a.positions = nullptr;
  expect_invalid(a, "null positions");
  a = good;
  a.head_dim = 7;
  a.heads = 1;
  expect_invalid(a, "odd head_dim");
  a = good;
  a.head_dim = 0;
  expect_invalid(a, "zero head_dim");
  a = good;
  a.rotary_dim = 10;
  expect_invalid(a, "rotary_dim > head_dim");
  a = good;
  a.rotary_dim = 3;
  expect_invalid(a, "odd rotary_dim");
  a = good;
  a.ldx = 15;
  expect_invalid(a, "ldx < heads*head_dim");
  a = good;
  a.inv_freq = nullptr;
  expect_invalid(a, "null inv_freq");
  a = good;
  a.attention_factor = 0.0;
  expect_invalid(a, "attention_factor 0");
  a = good;
  a.attention_factor = std::nan("");
  expect_invalid(a, "attention_factor NaN");
  const std::vector<double> nan_table(4, std::nan(""));
  a = good;
  a.inv_freq = nan_table.data();
  expect_invalid(a, "NaN frequency");
  a = good;
  a.tokens = -1;
  expect_invalid(a, "negative tokens");
  const std::vector<int32_t> bad_pos = {3, -1};
  auto x2 = x;
  a = Args(x2, 16, bad_pos, 2, 8);
  expect_invalid(a, "negative position");
  EXPECT_TRUE(testing::SameBits(x2, x)) << "nothing written on error";
}

}  // namespace
}  // namespace lockstep::kernels
