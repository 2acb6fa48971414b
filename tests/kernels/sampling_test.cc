// Tests of batch-invariant sampling (kernels/sampling.h): Philox known-answer
// vectors, the Gumbel-max contract token for token, batch/row/thread
// invariance, seeds, empirical frequencies against softmax, top-k and top-p
// support, greedy ties and NaN, and argument checks.

#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/threading.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<int32_t> RunSample(const std::vector<float>& logits, int64_t ld,
                               int64_t vocab,
                               const std::vector<SamplingParams>& params,
                               const std::vector<int64_t>& positions) {
  const int64_t rows = static_cast<int64_t>(params.size());
  std::vector<int32_t> tokens(rows, -1);
  SampleArgs a;
  a.logits = logits.data();
  a.ld = ld;
  a.rows = rows;
  a.vocab = vocab;
  a.params = params.data();
  a.positions = positions.data();
  a.tokens_out = tokens.data();
  const absl::Status s = Sample(a);
  EXPECT_TRUE(s.ok()) << s;
  return tokens;
}

// `n` draws from one row of logits, seeds 0..n-1, at one position.
std::vector<int64_t> Histogram(const std::vector<float>& row, SamplingParams p,
                               int64_t n) {
  const int64_t vocab = static_cast<int64_t>(row.size());
  std::vector<float> logits(n * vocab);
  std::vector<SamplingParams> params(n, p);
  for (int64_t i = 0; i < n; ++i) {
    std::copy(row.begin(), row.end(), logits.begin() + i * vocab);
    params[i].seed = 0x1234567800000000ull + i;
  }
  const auto tokens =
      RunSample(logits, vocab, vocab, params, std::vector<int64_t>(n, 77));
  std::vector<int64_t> counts(vocab, 0);
  for (int32_t t : tokens) ++counts[t];
  return counts;
}

// Pearson chi-square of `counts` against probabilities `p` (cells with p = 0
// must be empty).
double ChiSquare(const std::vector<int64_t>& counts,
                 const std::vector<double>& p) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double chi = 0;
  for (size_t j = 0; j < counts.size(); ++j) {
    if (p[j] == 0) {
      EXPECT_EQ(counts[j], 0) << "token " << j << " is outside the support";
      continue;
    }
    const double e = n * p[j];
    chi += (counts[j] - e) * (counts[j] - e) / e;
  }
  return chi;
}

std::vector<double> Softmax(const std::vector<float>& x, double t) {
  double m = -INFINITY, z = 0;
  for (float v : x) m = std::max(m, v / t);
  std::vector<double> p(x.size());
  for (size_t j = 0; j < x.size(); ++j) z += p[j] = std::exp(x[j] / t - m);
  for (double& v : p) v /= z;
  return p;
}

TEST(Philox, KnownAnswerVectors) {
  // Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key, result.
  EXPECT_EQ(Philox4x32({0, 0, 0, 0}, {0, 0}),
            (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c,
                                     0x9b00dbd8}));
  EXPECT_EQ(Philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                       {0xffffffff, 0xffffffff}),
            (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6,
                                     0x6d5451fd}));
  EXPECT_EQ(Philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                       {0xa4093822, 0x299f31d0}),
            (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420,
                                     0x24126ea1}));
}

TEST(Philox, UniformLayoutAndRange) {
  const uint64_t seed = 0x0123456789abcdefull;
  const int64_t pos = (int64_t{5} << 32) + 9;
  double sum = 0;
  const int n = 100000;
  for (int64_t j = 0; j < n; ++j) {
    const float u = PhiloxUniform(seed, pos, j);
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    if (j < 64) {
      const auto w = Philox4x32({9, 5, static_cast<uint32_t>(j / 4), 0},
                                {0x89abcdef, 0x01234567});
      EXPECT_EQ(u, ((w[j % 4] >> 9) + 0.5f) * 0x1p-23f);
    }
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  // Extreme words stay strictly inside (0, 1).
  EXPECT_NE(PhiloxUniform(seed, pos, 0), PhiloxUniform(seed, pos + 1, 0));
  EXPECT_NE(PhiloxUniform(seed, pos, 0), PhiloxUniform(seed + 1, pos, 0));
}

TEST(Sample, FollowsGumbelMaxContract) {
  const int64_t vocab = 1003, rows = 40;
  const auto logits = RandomFloats(rows * vocab, 1, -4.0f, 4.0f);
  std::vector<SamplingParams> params(rows);
  std::vector<int64_t> positions(rows);
  for (int64_t r = 0; r < rows; ++r) {
    params[r].temperature = 0.3f + 0.1f * r;
    params[r].seed = 1000 + r * 7919;
    positions[r] = r * 13;
  }
  const auto tokens = RunSample(logits, vocab, vocab, params, positions);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t best = -1;
    float best_key = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const float u = PhiloxUniform(params[r].seed, positions[r], j);
      const float key =
          logits[r * vocab + j] / params[r].temperature + -logf(-logf(u));
      if (best < 0 || key > best_key) {
        best = j;
        best_key = key;
      }
    }
    EXPECT_EQ(tokens[r], best) << "row " << r;
  }
}

TEST(Sample, SameTokenAloneAndInAnyBatchAtAnyRow) {
  const int64_t vocab = 517;
  const auto row = RandomFloats(vocab, 3, -2.0f, 2.0f);
  SamplingParams mine;
  mine.temperature = 0.9f;
  mine.top_k = 40;
  mine.top_p = 0.9f;
  mine.seed = 42;
  const int64_t position = 1234;
  const int32_t alone = RunSample(row, vocab, vocab, {mine}, {position})[0];
  std::mt19937 rng(11);
  const int saved = NumThreads();
  for (int64_t batch = 1; batch <= 64; ++batch) {
    SetNumThreads(1 + batch % 3);
    const int64_t ld = vocab + batch % 5;
    auto logits = RandomFloats(batch * ld, 500 + batch, -2.0f, 2.0f);
    std::vector<SamplingParams> params(batch);
    std::vector<int64_t> positions(batch);
    for (int64_t i = 0; i < batch; ++i) {
      params[i].temperature =
          std::uniform_int_distribution<int>(0, 3)(rng) * 0.5f;
      params[i].top_k = std::uniform_int_distribution<int>(0, 50)(rng);
      params[i].top_p = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng);
      params[i].seed = rng();
      positions[i] = rng() % 4096;
    }
    const int64_t at =
        std::uniform_int_distribution<int64_t>(0, batch - 1)(rng);
    std::copy(row.begin(), row.end(), logits.begin() + at * ld);
    params[at] = mine;
    positions[at] = position;
    EXPECT_EQ(RunSample(logits, ld, vocab, params, positions)[at], alone)
        << "batch " << batch << " row " << at;
  }
  SetNumThreads(saved);
}

TEST(Sample, SeedsReproduceAndDiffer) {
  const int64_t vocab = 1000;
  const std::vector<float> flat(vocab, 0.0f);
  std::set<int32_t> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    SamplingParams p;
    p.seed = seed;
    const int32_t a = RunSample(flat, vocab, vocab, {p}, {5})[0];
    const int32_t b = RunSample(flat, vocab, vocab, {p}, {5})[0];
    EXPECT_EQ(a, b) << "seed " << seed;
    seen.insert(a);
  }
  EXPECT_GT(seen.size(), 150u) << "different seeds should sample differently";
  // The position is part of the counter too.
  std::set<int32_t> by_position;
  for (int64_t pos = 0; pos < 200; ++pos) {
    by_position.insert(
        RunSample(flat, vocab, vocab, {SamplingParams{}}, {pos})[0]);
  }
  EXPECT_GT(by_position.size(), 150u);
}

TEST(Sample, FrequenciesMatchSoftmax) {
  // Chi-square with 7 degrees of freedom; 29.9 is the 1e-4 tail. The draws
  // are deterministic (fixed seeds), so this never flakes.
  const std::vector<float> row = {1.0f, 0.0f,  -1.0f, 2.0f,
                                  0.5f, -3.0f, 1.5f,  0.0f};
  for (float t : {1.0f, 0.6f, 2.0f}) {
    SamplingParams p;
    p.temperature = t;
    const auto counts = Histogram(row, p, 40000);
    EXPECT_LT(ChiSquare(counts, Softmax(row, t)), 29.9) << "T = " << t;
  }
}

TEST(Sample, TopKRestrictsSupport) {
  const std::vector<float> row = {0.1f,  3.0f, 2.0f, 2.5f,
                                  -1.0f, 2.0f, 2.0f, 1.0f};
  SamplingParams p;
  p.top_k = 3;  // 3.0 (1), 2.5 (3), then 2.0 ties: lowest index 2 wins
  const auto counts = Histogram(row, p, 20000);
  std::vector<double> expect(row.size(), 0.0);
  const double z = std::exp(3.0) + std::exp(2.5) + std::exp(2.0);
  expect[1] = std::exp(3.0) / z;
  expect[3] = std::exp(2.5) / z;
  expect[2] = std::exp(2.0) / z;
  EXPECT_LT(ChiSquare(counts, expect), 13.8);  // 2 dof, 1e-3 tail
  p.top_k = 1;
  EXPECT_EQ(Histogram(row, p, 500)[1], 500);
  p.top_k = 8;  // >= vocab: off
  const auto all = Histogram(row, p, 20000);
  EXPECT_LT(ChiSquare(all, Softmax(row, 1.0)), 29.9);
}

TEST(Sample, TopPRestrictsSupport) {
  const std::vector<float> row = {logf(0.15f), logf(0.5f), logf(0.05f),
                                  logf(0.3f)};
  SamplingParams p;
  p.top_p = 0.45f;  // {1}
  EXPECT_EQ(Histogram(row, p, 500)[1], 500);
  p.top_p = 1e-9f;  // never empty
  EXPECT_EQ(Histogram(row, p, 500)[1], 500);
  p.top_p = 0.75f;  // {1, 3}: 0.5 + 0.3
  auto counts = Histogram(row, p, 20000);
  EXPECT_LT(ChiSquare(counts, {0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8}),
            10.8);  // 1 dof
  p.top_p = 0.9f;   // {1, 3, 0}
  counts = Histogram(row, p, 20000);
  EXPECT_LT(ChiSquare(counts, {0.15 / 0.95, 0.5 / 0.95, 0.0, 0.3 / 0.95}),
            13.8);
  p.top_p = 1.0f;
  counts = Histogram(row, p, 20000);
  EXPECT_LT(ChiSquare(counts, {0.15, 0.5, 0.05, 0.3}), 16.3);
  // Top-p is measured at the sampling temperature: at T = 1, 0.68 keeps
  // {1, 3}; at T = 0.5 token 1 alone has probability 0.25 / 0.365 = 0.685.
  p.top_p = 0.68f;
  EXPECT_LT(Histogram(row, p, 500)[1], 500);
  p.temperature = 0.5f;
  EXPECT_EQ(Histogram(row, p, 500)[1], 500);
  // top_k and top_p together keep the shorter prefix.
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.top_k = 2;
  counts = Histogram(row, p, 20000);
  EXPECT_LT(ChiSquare(counts, {0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8}), 10.8);
}

TEST(Sample, TopPWithManyTokensAndTies) {
  // A large flat vocabulary: top_p = 0.25 keeps the first quarter of the
  // tie order, i.e. the lowest indices.
  const int64_t vocab = 4000;
  const std::vector<float> flat(vocab, 1.0f);
  SamplingParams p;
  p.top_p = 0.25f;
  const auto counts = Histogram(flat, p, 1000);
  int64_t inside = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    if (j < vocab / 4 + 1) inside += counts[j];
  }
  EXPECT_EQ(inside, 1000);
}

TEST(Sample, GreedyAndArgmax) {
  const std::vector<float> row = {1.0f, 5.0f, -2.0f, 5.0f, 4.0f};
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  for (int64_t seed : {0, 1, 99}) {
    greedy.seed = static_cast<uint64_t>(seed);
    EXPECT_EQ(RunSample(row, 5, 5, {greedy}, {seed * 3})[0], 1)
        << "ties -> lowest";
  }
  const float nan = std::nanf("");
  const std::vector<std::pair<std::vector<float>, int32_t>> cases = {
      {{nan, 1.0f, 3.0f, nan, 3.0f}, 2},
      {{nan, nan, nan}, 0},
      {{-kInf, -kInf, -kInf}, 0},
      {{-kInf, nan, -5.0f}, 2},
      {{kInf, 1.0f, kInf}, 0},
      {{-0.0f, 0.0f}, 0},
      {{7.0f}, 0}};
  for (const auto& [x, expect] : cases) {
    const int64_t v = static_cast<int64_t>(x.size());
    int32_t token = -1;
    ASSERT_TRUE(Argmax(x.data(), v, 1, v, &token).ok());
    EXPECT_EQ(token, expect);
    EXPECT_EQ(RunSample(x, v, v, {greedy}, {0})[0], expect);
  }
  // Many rows with a stride.
  const auto logits = RandomFloats(9 * 70, 5);
  std::vector<int32_t> tokens(9);
  ASSERT_TRUE(Argmax(logits.data(), 70, 9, 64, tokens.data()).ok());
  for (int r = 0; r < 9; ++r) {
    const auto begin = logits.begin() + r * 70;
    EXPECT_EQ(tokens[r], std::max_element(begin, begin + 64) - begin);
  }
}

TEST(Sample, NonFiniteLogitsAtPositiveTemperature) {
  SamplingParams p;
  // Only one finite logit: it must win whatever the noise.
  EXPECT_EQ(Histogram({-kInf, -kInf, 0.5f, -kInf}, p, 200)[2], 200);
  // NaN logits never win.
  const float nan = std::nanf("");
  EXPECT_EQ(Histogram({nan, 0.0f, nan}, p, 200)[1], 200);
}

TEST(Sample, BadArguments) {
  const std::vector<float> logits(2 * 4, 0.0f);
  std::vector<SamplingParams> params(2);
  std::vector<int64_t> positions = {0, 1};
  std::vector<int32_t> tokens(2, -7);
  SampleArgs good;
  good.logits = logits.data();
  good.ld = 4;
  good.rows = 2;
  good.vocab = 4;
  good.params = params.data();
  good.positions = positions.data();
  good.tokens_out = tokens.data();
  ASSERT_TRUE(Sample(good).ok());
  auto invalid = [](const absl::Status& s, const char* what) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << s;
  };
  SampleArgs a = good;
  a.logits = nullptr;
  invalid(Sample(a), "null logits");
  a = good;
  a.params = nullptr;
  invalid(Sample(a), "null params");
  a = good;
  a.positions = nullptr;
  invalid(Sample(a), "null positions");
  a = good;
  a.tokens_out = nullptr;
  invalid(Sample(a), "null tokens_out");
  a = good;
  a.ld = 3;
  invalid(Sample(a), "ld < vocab");
  a = good;
  a.vocab = 0;
  invalid(Sample(a), "vocab 0");
  a = good;
  a.vocab = int64_t{1} << 31;
  a.ld = a.vocab;
  invalid(Sample(a), "vocab beyond int32");
  a = good;
  a.rows = -1;
  invalid(Sample(a), "rows < 0");
  const float nan = std::nanf("");
  const std::vector<std::pair<SamplingParams, const char*>> bad = {
      {{-1.0f, 0, 1.0f, 0}, "negative temperature"},
      {{nan, 0, 1.0f, 0}, "NaN temperature"},
      {{kInf, 0, 1.0f, 0}, "infinite temperature"},
      {{1.0f, -1, 1.0f, 0}, "negative top_k"},
      {{1.0f, 0, 0.0f, 0}, "top_p 0"},
      {{1.0f, 0, -0.5f, 0}, "negative top_p"},
      {{1.0f, 0, 1.5f, 0}, "top_p > 1"},
      {{1.0f, 0, nan, 0}, "NaN top_p"},
  };
  for (const auto& [sp, what] : bad) {
    std::vector<SamplingParams> ps = {SamplingParams{}, sp};
    std::vector<int32_t> out(2, -7);
    a = good;
    a.params = ps.data();
    a.tokens_out = out.data();
    invalid(Sample(a), what);
    EXPECT_EQ(out[0], -7) << "nothing written on error";
  }
  int32_t token;
  invalid(Argmax(nullptr, 4, 1, 4, &token), "argmax null logits");
  invalid(Argmax(logits.data(), 4, 1, 4, nullptr), "argmax null tokens");
  invalid(Argmax(logits.data(), 3, 1, 4, &token), "argmax ld < vocab");
  invalid(Argmax(logits.data(), 4, 1, 0, &token), "argmax vocab 0");
  invalid(Argmax(logits.data(), 4, -1, 4, &token), "argmax rows < 0");
  EXPECT_TRUE(Argmax(nullptr, 0, 0, 4, nullptr).ok()) << "zero rows is a no-op";
  if (!CudaKernelsBuilt()) {
    const ExecContext cuda{Device::kCuda, nullptr};
    EXPECT_EQ(Sample(good, cuda).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(Argmax(logits.data(), 4, 1, 4, &token, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lockstep::kernels
