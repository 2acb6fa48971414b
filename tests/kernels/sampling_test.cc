// Tests of batch-invariant sampling on the CPU (kernels/sampling.h,
// kernels/sampling_math.h): Philox known answers and the uniform's layout,
// the portable log / exp against libm in double, stream keys, the kept set,
// last kept index and sampled logprob against a float64 reference of steps
// 1-8, scoring (targets) mode, batch / thread invariance (memcmp), non-finite
// logits and bans, chi-square goodness of fit of the sampled frequencies (and
// a twin that must fail it), and argument validation.
//
// The CUDA backend is compared with this one bit for bit by the backend
// harness (backend_ops_cases_sampling.cc).

#include "kernels/sampling.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/threading.h"
#include "kernels/sampling_math.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

namespace sm = sampling_math;
using ::lockstep::testing::RandomFloats;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------
// Problems, runs and the float64 reference.

// One row of a sampling problem (host side).
struct Row {
  std::vector<float> x;  // [vocab] logits
  SamplingParams sp;
  int64_t position = 0;
  std::vector<LogitAdjustment> adj;  // distinct tokens
  int32_t target = -1;               // scoring mode when >= 0 for all rows
};

struct Out {
  int32_t token = -7;
  float logprob = -7.0f;
  int32_t last = -7;
};

bool SameBits(const Out& a, const Out& b) {
  return a.token == b.token && a.last == b.last &&
         std::memcmp(&a.logprob, &b.logprob, sizeof(float)) == 0;
}

std::string Describe(const Out& o) {
  return "token " + std::to_string(o.token) + " logprob " +
         std::to_string(o.logprob) + " last " + std::to_string(o.last);
}

// Runs `rows` as one batch with row stride vocab + pad; scoring mode when
// `score` (every row's target).
absl::Status RunRows(const std::vector<Row>& rows, int64_t vocab, int64_t pad,
                     bool score, std::vector<Out>* out) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t ld = vocab + pad;
  std::vector<float> logits(n * ld, 123.0f);
  std::vector<SamplingParams> params(n);
  std::vector<int64_t> positions(n), offsets(n + 1, 0);
  std::vector<LogitAdjustment> adjustments;
  std::vector<int32_t> targets(n);
  bool any_adj = false;
  for (int64_t r = 0; r < n; ++r) {
    std::copy(rows[r].x.begin(), rows[r].x.end(), logits.begin() + r * ld);
    params[r] = rows[r].sp;
    positions[r] = rows[r].position;
    targets[r] = rows[r].target;
    adjustments.insert(adjustments.end(), rows[r].adj.begin(),
                       rows[r].adj.end());
    offsets[r + 1] = static_cast<int64_t>(adjustments.size());
    any_adj = any_adj || !rows[r].adj.empty();
  }
  std::vector<int32_t> tokens(n, -7), last(n, -7);
  std::vector<float> logprobs(n, -7.0f);
  SampleArgs a;
  a.logits = logits.data();
  a.ld = ld;
  a.rows = n;
  a.vocab = vocab;
  a.params = params.data();
  a.positions = positions.data();
  if (any_adj) {
    a.adjust_offsets = offsets.data();
    a.adjustments = adjustments.data();
  }
  if (score) a.targets = targets.data();
  a.tokens_out = tokens.data();
  a.logprobs_out = logprobs.data();
  a.last_kept_out = last.data();
  absl::Status s = Sample(a);
  out->resize(n);
  for (int64_t r = 0; r < n; ++r) (*out)[r] = {tokens[r], logprobs[r], last[r]};
  return s;
}

Out RunOne(const Row& row, bool score = false) {
  std::vector<Out> out;
  const absl::Status s =
      RunRows({row}, static_cast<int64_t>(row.x.size()), 0, score, &out);
  EXPECT_TRUE(s.ok()) << s;
  return out.at(0);
}

float Adjusted(float v, const LogitAdjustment& e) {
  if (e.banned) return -kInf;
  v = v + e.bias;
  if (e.repetition != 1.0f) v = v > 0.0f ? v / e.repetition : v * e.repetition;
  return v - e.subtract;
}

// Steps 1-8 written the plain way: sort the candidates, cut prefixes, and
// compute the renormalised distribution in double with libm. The top_p cut
// uses the contract's integer masses (sm::Mass), so that the set is exactly
// defined; min_p uses std::log.
struct Reference {
  bool greedy = false;
  bool none = false;          // no candidate
  int32_t argmax = 0;         // lowest index of max a (NaN never wins)
  std::vector<float> a, z;    // adjusted and scaled logits
  std::vector<int32_t> kept;  // the kept set, in O
  std::vector<char> in_kept;  // [vocab]
  double zmax = 0.0;
  double log_den = 0.0;  // log sum_K e^(z - zmax)

  // The float64 sampled logprob of t.
  double Logprob(int32_t t) const {
    if (greedy) return t == argmax ? 0.0 : -INFINITY;
    if (none || !in_kept[t]) return -INFINITY;
    return (static_cast<double>(z[t]) - zmax) - log_den;
  }
  // Probabilities over the vocabulary.
  std::vector<double> Probabilities() const {
    std::vector<double> p(a.size(), 0.0);
    for (int32_t j : kept) p[j] = std::exp(Logprob(j));
    return p;
  }
};

Reference MakeReference(const Row& row) {
  Reference ref;
  const int64_t vocab = static_cast<int64_t>(row.x.size());
  ref.a = row.x;
  for (const LogitAdjustment& e : row.adj)
    ref.a[e.token] = Adjusted(ref.a[e.token], e);
  const std::vector<float>& a = ref.a;
  int64_t best = -1;
  for (int64_t j = 0; j < vocab; ++j) {
    if (!std::isnan(a[j]) && (best < 0 || a[j] > a[best])) best = j;
  }
  ref.argmax = static_cast<int32_t>(best < 0 ? 0 : best);
  ref.in_kept.assign(vocab, 0);
  const SamplingParams& sp = row.sp;
  if (sp.temperature < kMinSamplingTemperature) {
    ref.greedy = true;
    return ref;
  }
  std::vector<int32_t> order;
  ref.z.assign(vocab, 0.0f);
  for (int64_t j = 0; j < vocab; ++j) {
    if (std::isnan(a[j]) || a[j] == -kInf) continue;
    order.push_back(static_cast<int32_t>(j));
    const float q = a[j] / sp.temperature;
    ref.z[j] = std::min(std::max(q, -std::numeric_limits<float>::max()),
                        std::numeric_limits<float>::max());
  }
  if (order.empty()) {
    ref.none = true;
    return ref;
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t i, int32_t j) { return a[i] > a[j]; });
  ref.zmax = ref.z[order[0]];
  for (int32_t j : order) ref.zmax = std::max<double>(ref.zmax, ref.z[j]);
  // Step 4.
  if (sp.min_p > 0.0f) {
    const double c = std::log(static_cast<double>(sp.min_p));
    size_t n = 0;
    while (n < order.size() &&
           static_cast<double>(ref.z[order[n]]) - ref.zmax >= c)
      ++n;
    order.resize(n);
  }
  // Step 5.
  if (sp.top_k > 0 && static_cast<size_t>(sp.top_k) < order.size())
    order.resize(sp.top_k);
  // Step 6.
  if (sp.top_p < 1.0f) {
    uint64_t total = 0;
    for (int32_t j : order) total += sm::Mass(ref.z[j], ref.zmax);
    const double want =
        std::ceil(static_cast<double>(sp.top_p) * static_cast<double>(total));
    const uint64_t target =
        want < 1.0 ? 1 : std::min<uint64_t>(total, static_cast<uint64_t>(want));
    uint64_t cum = 0;
    size_t n = 0;
    while (n < order.size() && cum < target)
      cum += sm::Mass(ref.z[order[n++]], ref.zmax);
    order.resize(std::max<size_t>(n, 1));
  }
  ref.kept = order;
  double den = 0.0;
  for (int32_t j : order) {
    ref.in_kept[j] = 1;
    den += std::exp(static_cast<double>(ref.z[j]) - ref.zmax);
  }
  ref.log_den = std::log(den);
  return ref;
}

// The learner's mask from last_kept (common/model/sequence_logprobs.cc).
std::vector<char> MaskFromLast(const std::vector<float>& a, int32_t last) {
  std::vector<char> m(a.size(), 0);
  for (size_t j = 0; j < a.size(); ++j) {
    m[j] = !std::isnan(a[j]) && a[j] != -kInf &&
           (a[j] > a[last] ||
            (a[j] == a[last] && static_cast<int32_t>(j) <= last));
  }
  return m;
}

// Logits of various shapes: uniform, wide normal, integer ties, a peak,
// signed zeros, sprinkled non-finite values.
std::vector<float> MakeLogits(int64_t vocab, int kind, std::mt19937_64& rng) {
  std::vector<float> x(vocab);
  std::uniform_real_distribution<float> uni(-5.0f, 5.0f);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::uniform_int_distribution<int> small(-3, 3);
  for (int64_t j = 0; j < vocab; ++j) {
    switch (kind % 6) {
      case 0:
        x[j] = uni(rng);
        break;
      case 1:
        x[j] = normal(rng);
        break;
      case 2:
        x[j] = static_cast<float>(small(rng));
        break;
      case 3:
        x[j] = normal(rng) * 0.25f;
        break;
      case 4:
        x[j] =
            (rng() % 3 == 0) ? ((rng() & 1) ? 0.0f : -0.0f) : uni(rng) - 6.0f;
        break;
      default: {
        const uint64_t c = rng() % 20;
        x[j] = c == 0 ? -kInf : c == 1 ? kNaN : uni(rng);
      }
    }
  }
  if (kind % 6 == 3 && vocab > 0) x[rng() % vocab] = 12.0f;
  return x;
}

std::vector<LogitAdjustment> MakeAdjustments(int64_t vocab, int64_t count,
                                             std::mt19937_64& rng) {
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<LogitAdjustment> adj;
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t i = 0; i < std::min(vocab, count); ++i) {
    LogitAdjustment e;
    e.token = ids[i];
    e.bias = (rng() % 2) ? u(rng) : 0.0f;
    e.repetition = (rng() % 2) ? 1.0f + std::abs(u(rng)) * 0.2f
                               : ((rng() % 4) ? 1.0f : 0.8f);
    e.subtract = (rng() % 3 == 0) ? std::abs(u(rng)) * 0.3f : 0.0f;
    e.banned = rng() % 10 == 0;
    adj.push_back(e);
  }
  // Tokens of a row are strictly ascending (kernels/sampling.h).
  std::sort(adj.begin(), adj.end(),
            [](const LogitAdjustment& x, const LogitAdjustment& y) { return x.token < y.token; });
  return adj;
}

SamplingParams RandomParams(int64_t vocab, std::mt19937_64& rng) {
  SamplingParams sp;
  const float temps[] = {0.6f, 1.0f, 1.3f};
  sp.temperature = temps[rng() % 3];
  const int mode = static_cast<int>(rng() % 8);
  if (mode & 1) {
    const int32_t ks[] = {
        1,
        2,
        5,
        50,
        static_cast<int32_t>(vocab),
        static_cast<int32_t>(vocab) + 3,
        std::max<int32_t>(1, static_cast<int32_t>(vocab) - 1)};
    sp.top_k = ks[rng() % 7];
  }
  if (mode & 2) {
    const float ps[] = {0.9f, 0.5f, 1e-3f, 0.999f, 0.95f};
    sp.top_p = ps[rng() % 5];
  }
  if (mode & 4) {
    const float mps[] = {0.05f, 0.3f, 1.0f, 1e-4f};
    sp.min_p = mps[rng() % 4];
  }
  sp.seed = SampleStreamKey(rng(), rng() % 16, rng() % 4);
  return sp;
}

// A random row with vocabulary `vocab`.
Row RandomRow(int64_t vocab, std::mt19937_64& rng, bool adjust) {
  Row row;
  row.x = MakeLogits(vocab, static_cast<int>(rng() % 6), rng);
  row.sp = RandomParams(vocab, rng);
  row.position = static_cast<int64_t>(rng() % (int64_t{1} << 40));
  if (adjust && rng() % 2)
    row.adj = MakeAdjustments(vocab, 1 + rng() % 64, rng);
  return row;
}

// ---------------------------------------------------------------------------
// Philox, uniforms, portable math, stream keys.

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
  const uint64_t key = 0x0123456789abcdefull;
  const int64_t pos = (int64_t{5} << 32) + 9;
  double sum = 0;
  const int n = 100000;
  for (int64_t j = 0; j < n; ++j) {
    const double u = PhiloxUniform(key, pos, j);
    ASSERT_GE(u, 0x1p-53);
    ASSERT_LE(u, 1.0 - 0x1p-53);
    sum += u;
    // Counter (pos lo, pos hi, j / 2, 0), key (lo, hi); words 2 (j % 2) and
    // 2 (j % 2) + 1 as (hi, lo); the top 52 bits, + 1/2, times 2^-52.
    const auto w = Philox4x32({9, 5, static_cast<uint32_t>(j / 2), 0},
                              {0x89abcdef, 0x01234567});
    const uint64_t bits = (uint64_t{w[2 * (j % 2)]} << 32) | w[2 * (j % 2) + 1];
    ASSERT_EQ(u, (static_cast<double>(bits >> 12) + 0.5) * 0x1p-52) << j;
    ASSERT_EQ(sm::StreamBits(key, pos, j), bits) << j;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.003);
  // The extreme bit patterns stay strictly inside (0, 1), exactly.
  EXPECT_EQ(sm::UniformFromBits(0), 0x1p-53);
  EXPECT_EQ(sm::UniformFromBits(~uint64_t{0}), 1.0 - 0x1p-53);
  EXPECT_NE(PhiloxUniform(key, pos, 0), PhiloxUniform(key, pos + 1, 0));
  EXPECT_NE(PhiloxUniform(key, pos, 0), PhiloxUniform(key + 1, pos, 0));
  EXPECT_NE(PhiloxUniform(key, pos, 0),
            PhiloxUniform(key + (uint64_t{1} << 32), pos, 0));
}

// |got - want| in units of the last place of want.
double Ulps(double got, double want) {
  if (got == want) return 0.0;
  const double w = std::fabs(want);
  const double ulp = std::nextafter(w, INFINITY) - w;
  return std::fabs(got - want) / ulp;
}

TEST(PortableMath, LogWithinTwoUlpsOfLibm) {
  std::vector<double> xs = {1.0,
                            2.0,
                            0.5,
                            1.0 - 0x1p-53,
                            1.0 + 0x1p-52,
                            0x1p-53,
                            0x1p-52,
                            std::sqrt(2.0),
                            std::sqrt(0.5),
                            std::nextafter(std::sqrt(2.0), 0.0),
                            std::numeric_limits<double>::min(),
                            std::numeric_limits<double>::denorm_min(),
                            std::numeric_limits<double>::max(),
                            3.0 * std::numeric_limits<double>::denorm_min(),
                            0x1.fffffffffffffp-1023};
  std::mt19937_64 rng(7);
  for (int i = 0; i < 400000; ++i) {
    uint64_t b = rng() & 0x7fffffffffffffffull;  // every exponent, subnormals
    if (i % 4 == 0) b &= 0x000fffffffffffffull;  // subnormals
    double x;
    std::memcpy(&x, &b, sizeof x);
    if (x > 0.0 && std::isfinite(x)) xs.push_back(x);
    xs.push_back(0.5 + static_cast<double>(rng() >> 11) * 0x1p-53 * 1.5);
    xs.push_back(sm::UniformFromBits(rng()));  // the sampler's inputs
  }
  double worst = 0.0, at = 0.0;
  for (double x : xs) {
    const double u = Ulps(sm::PortableLog(x), std::log(x));
    if (u > worst) {
      worst = u;
      at = x;
    }
  }
  EXPECT_LE(worst, 2.0) << "at x = " << at;
  EXPECT_EQ(sm::PortableLog(1.0), 0.0);
  EXPECT_EQ(sm::PortableLog(1.0 - 0x1p-53), -0x1p-53);
  EXPECT_EQ(sm::PortableLog(0.0), -INFINITY);
  EXPECT_EQ(sm::PortableLog(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(sm::PortableLog(-1.0)));
  EXPECT_TRUE(std::isnan(sm::PortableLog(NAN)));
}

TEST(PortableMath, ExpNonPositiveWithinTwoUlpsOfLibm) {
  std::vector<double> xs = {
      -0.0,   -1e-300, -0x1p-53, -0.5 * std::log(2.0), -std::log(2.0), -1.0,
      -700.0, -708.0,  -707.9999};
  std::mt19937_64 rng(8);
  for (int i = 0; i < 400000; ++i) {
    const double f = static_cast<double>(rng() >> 11) * 0x1p-53;
    xs.push_back(-f * 708.0);
    xs.push_back(-f * 1e-3);
    xs.push_back(-f * 40.0);
  }
  double worst = 0.0, at = 0.0;
  for (double x : xs) {
    const double u = Ulps(sm::PortableExpNonPositive(x), std::exp(x));
    if (u > worst) {
      worst = u;
      at = x;
    }
  }
  EXPECT_LE(worst, 2.0) << "at x = " << at;
  EXPECT_EQ(sm::PortableExpNonPositive(0.0), 1.0);
  EXPECT_EQ(sm::PortableExpNonPositive(3.0), 1.0) << "x > 0 clamps to 0";
  EXPECT_EQ(sm::PortableExpNonPositive(-708.5), 0.0);
  EXPECT_EQ(sm::PortableExpNonPositive(-INFINITY), 0.0);
  EXPECT_TRUE(std::isnan(sm::PortableExpNonPositive(NAN)));
}

TEST(PortableMath, GumbelAndMassAndKeptLogprob) {
  std::mt19937_64 rng(9);
  for (int i = 0; i < 20000; ++i) {
    const uint64_t key = rng();
    const int64_t pos = static_cast<int64_t>(rng() % 100000);
    const int64_t j = static_cast<int64_t>(rng() % 150000);
    const double u = PhiloxUniform(key, pos, j);
    const double g = sm::Gumbel(key, pos, j);
    ASSERT_NEAR(g, -std::log(-std::log(u)),
                1e-13 * std::max(1.0, std::fabs(g)));
    ASSERT_TRUE(std::isfinite(g));
  }
  EXPECT_EQ(sm::Mass(3.0f, 3.0), uint64_t{1} << 44);
  EXPECT_EQ(sm::Mass(-1e30f, 3.0), 0u);
  EXPECT_EQ(sm::Mass(2.0f, 3.0),
            static_cast<uint64_t>(std::floor(std::exp(-1.0) * 0x1p44)));
  EXPECT_EQ(sm::KeptLogprob(1.0f, 1.0, uint64_t{1} << 44), 0.0f);
  EXPECT_NEAR(sm::KeptLogprob(0.0f, 1.0, uint64_t{3} << 44),
              -1.0 - std::log(3.0), 1e-6);
}

TEST(SampleStreamKey, DistinctForNearbyTriples) {
  std::vector<uint64_t> keys;
  keys.reserve(64 * 64 * 64);
  for (uint64_t s = 0; s < 64; ++s) {
    for (uint64_t i = 0; i < 64; ++i) {
      for (uint64_t j = 0; j < 64; ++j)
        keys.push_back(SampleStreamKey(s, i, j));
    }
  }
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::adjacent_find(keys.begin(), keys.end()), keys.end())
      << "two (seed, prompt, sample) triples of the 64^3 grid share a key";
  for (uint64_t s :
       {uint64_t{0}, uint64_t{1}, uint64_t{12345}, ~uint64_t{0} - 1}) {
    const uint64_t a = SampleStreamKey(s + 1, 0, 0),
                   b = SampleStreamKey(s, 1, 0), c = SampleStreamKey(s, 0, 1),
                   d = SampleStreamKey(s, 0, 0);
    EXPECT_NE(a, b);
    EXPECT_NE(a, c);
    EXPECT_NE(b, c);
    EXPECT_NE(d, a);
    EXPECT_NE(SampleStreamKey(s, 1, 2), SampleStreamKey(s, 2, 1));
    EXPECT_NE(SampleStreamKey(s, 0, 3), SampleStreamKey(s, 1, 0))
        << "s + i * 3 + j";
  }
  EXPECT_NE(SampleStreamKey(0, 0, 0), 0u);
  EXPECT_EQ(SampleStreamKey(5, 6, 7), SampleStreamKey(5, 6, 7));
}

// ---------------------------------------------------------------------------
// The contract against the float64 reference.

// Checks one row's sampling and scoring results against the reference.
void CheckRow(const Row& row, const Out& got, const Reference& ref,
              const std::string& what) {
  if (ref.greedy) {
    EXPECT_EQ(got.token, ref.argmax) << what;
    EXPECT_EQ(got.logprob, 0.0f) << what;
    EXPECT_EQ(got.last, ref.argmax) << what;
    return;
  }
  if (ref.none) {
    EXPECT_EQ(got.token, ref.argmax) << what;
    EXPECT_EQ(got.logprob, -kInf) << what;
    EXPECT_EQ(got.last, got.token) << what;
    return;
  }
  ASSERT_GE(got.token, 0) << what;
  ASSERT_LT(got.token, static_cast<int32_t>(row.x.size())) << what;
  EXPECT_TRUE(ref.in_kept[got.token]) << what << ": token outside the kept set";
  EXPECT_EQ(got.last, ref.kept.back()) << what << ": last kept";
  EXPECT_EQ(MaskFromLast(ref.a, got.last), ref.in_kept)
      << what << ": the mask from last_kept is not the kept set";
  const double want = ref.Logprob(got.token);
  EXPECT_NEAR(got.logprob, want, 1e-6 * std::max(1.0, std::fabs(want))) << what;
  // Step 7: Gumbel-max over the kept set, ties to the lower index.
  int32_t best = -1;
  double best_key = 0.0;
  for (size_t j = 0; j < row.x.size(); ++j) {
    if (!ref.in_kept[j]) continue;
    const double k =
        static_cast<double>(ref.z[j]) +
        sm::Gumbel(row.sp.seed, row.position, static_cast<int64_t>(j));
    if (best < 0 || k > best_key) {
      best = static_cast<int32_t>(j);
      best_key = k;
    }
  }
  EXPECT_EQ(got.token, best) << what << ": not the Gumbel-max token";
}

TEST(Sample, MatchesFloat64ReferenceOnRandomRows) {
  std::mt19937_64 rng(2024);
  const int64_t vocabs[] = {1, 2, 3, 7, 32, 100, 999, 1024, 2500, 5000};
  int checked = 0;
  for (int64_t vocab : vocabs) {
    const int count = vocab >= 2500 ? 40 : 80;
    for (int i = 0; i < count; ++i) {
      Row row = RandomRow(vocab, rng, /*adjust=*/true);
      const Reference ref = MakeReference(row);
      const std::string what = "vocab " + std::to_string(vocab) + " row " +
                               std::to_string(i) + " (T " +
                               std::to_string(row.sp.temperature) + " top_k " +
                               std::to_string(row.sp.top_k) + " top_p " +
                               std::to_string(row.sp.top_p) + " min_p " +
                               std::to_string(row.sp.min_p) + ", " +
                               std::to_string(row.adj.size()) + " adjustments)";
      const Out got = RunOne(row);
      CheckRow(row, got, ref, what);
      // Scoring mode: the sampled token's logprob, bit for bit, and -inf
      // for a token outside the kept set.
      row.target = got.token;
      const Out scored = RunOne(row, /*score=*/true);
      EXPECT_TRUE(SameBits(scored, got))
          << what << ": scoring " << Describe(scored) << " vs sampling "
          << Describe(got);
      for (int32_t t = 0; t < static_cast<int32_t>(vocab); ++t) {
        if (ref.in_kept[t]) continue;
        row.target = t;
        const Out out = RunOne(row, /*score=*/true);
        EXPECT_EQ(out.token, t) << what;
        EXPECT_EQ(out.logprob, -kInf)
            << what << ": target " << t << " outside the kept set";
        EXPECT_EQ(out.last, got.last) << what;
        break;
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 500);
}

TEST(Sample, GreedyBelowMinimumTemperature) {
  std::mt19937_64 rng(5);
  for (float t : {0.0f, 1e-6f, 0.99e-5f}) {
    for (int i = 0; i < 20; ++i) {
      Row row = RandomRow(300, rng, true);
      row.sp.temperature = t;
      const Reference ref = MakeReference(row);
      const Out got = RunOne(row);
      CheckRow(row, got, ref, "T " + std::to_string(t));
      row.target = ref.argmax;
      const Out hit = RunOne(row, true);
      EXPECT_EQ(hit.logprob, 0.0f);
      EXPECT_EQ(hit.last, ref.argmax);
      row.target = (ref.argmax + 1) % 300;
      const Out miss = RunOne(row, true);
      EXPECT_EQ(miss.token, row.target);
      EXPECT_EQ(miss.logprob, -kInf);
      EXPECT_EQ(miss.last, ref.argmax);
    }
  }
  // At the minimum temperature the row samples.
  Row row;
  row.x = {1.0f, 1.0f, 1.0f, 1.0f};
  row.sp.temperature = kMinSamplingTemperature;
  std::set<int32_t> seen;
  for (int64_t p = 0; p < 64; ++p) {
    row.position = p;
    seen.insert(RunOne(row).token);
  }
  EXPECT_EQ(seen.size(), 4u);
}

TEST(Sample, FiltersOnSmallRows) {
  Row row;
  row.x = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  auto last_for = [&](SamplingParams sp) {
    row.sp = sp;
    row.sp.seed = 99;
    return RunOne(row).last;
  };
  SamplingParams p;
  EXPECT_EQ(last_for(p), 2) << "no filter: everything";
  p.top_p = 0.45f;
  EXPECT_EQ(last_for(p), 1);
  p.top_p = 1e-9f;
  EXPECT_EQ(last_for(p), 1) << "never empty";
  p.top_p = 0.75f;
  EXPECT_EQ(last_for(p), 3) << "{1, 3}";
  p.top_p = 0.9f;
  EXPECT_EQ(last_for(p), 0) << "{1, 3, 0}";
  p.top_k = 2;
  EXPECT_EQ(last_for(p), 3) << "top_k and top_p: the shorter prefix";
  p = SamplingParams{};
  p.min_p = 0.2f;  // keeps p >= 0.1: {1, 3, 0}
  EXPECT_EQ(last_for(p), 0);
  p.min_p = 1.0f;
  EXPECT_EQ(last_for(p), 1) << "min_p 1 keeps the maximum";
  p = SamplingParams{};
  p.top_k = 4;
  EXPECT_EQ(last_for(p), 2) << "top_k = vocab: off";
  // Top-p is measured at the sampling temperature: at T = 0.5 token 1 alone
  // has probability 0.25 / 0.365 = 0.685.
  p = SamplingParams{};
  p.top_p = 0.68f;
  EXPECT_EQ(last_for(p), 3);
  p.temperature = 0.5f;
  EXPECT_EQ(last_for(p), 1);
  // Ties: the lower index comes first in O, signed zeros included.
  row.x = {0.0f, -0.0f, 2.0f, -0.0f, 0.0f};
  p = SamplingParams{};
  p.top_k = 2;
  EXPECT_EQ(last_for(p), 0);
  p.top_k = 3;
  EXPECT_EQ(last_for(p), 1) << "-0 at index 1 ties +0 and comes before index 3";
  p.top_k = 4;
  EXPECT_EQ(last_for(p), 3);
  const std::vector<char> mask = MaskFromLast(row.x, 1);
  EXPECT_EQ(mask, (std::vector<char>{1, 1, 1, 0, 0}));
  // A large flat row: top_p = 0.25 keeps the first quarter of the tie order.
  row.x.assign(4000, 1.0f);
  p = SamplingParams{};
  p.top_p = 0.25f;
  EXPECT_EQ(last_for(p), 999);
}

TEST(Sample, NonFiniteLogitsAndBans) {
  Row row;
  row.sp.seed = 3;
  // One finite logit wins whatever the noise; its logprob is 0.
  row.x = {-kInf, -kInf, 0.5f, -kInf};
  for (int64_t p = 0; p < 50; ++p) {
    row.position = p;
    const Out o = RunOne(row);
    EXPECT_EQ(o.token, 2);
    EXPECT_EQ(o.logprob, 0.0f);
    EXPECT_EQ(o.last, 2);
  }
  // NaN never wins, never is kept.
  row.x = {kNaN, 0.0f, kNaN, 0.0f};
  for (int64_t p = 0; p < 50; ++p) {
    row.position = p;
    const Out o = RunOne(row);
    EXPECT_TRUE(o.token == 1 || o.token == 3);
    EXPECT_NEAR(o.logprob, std::log(0.5), 1e-7);
    EXPECT_EQ(o.last, 3);
  }
  // +inf logits are candidates (z clamps to FLT_MAX) and share the mass.
  row.x = {1.0f, kInf, 2.0f, kInf};
  const Out inf = RunOne(row);
  EXPECT_TRUE(inf.token == 1 || inf.token == 3);
  EXPECT_NEAR(inf.logprob, std::log(0.5), 1e-7);
  EXPECT_EQ(inf.last, 0) << "finite entries are kept with zero mass";
  // No candidate: the greedy token, logprob -inf.
  for (const auto& [x, token] :
       std::vector<std::pair<std::vector<float>, int32_t>>{
           {{kNaN, kNaN, kNaN}, 0},
           {{-kInf, -kInf, -kInf}, 0},
           {{kNaN, -kInf, kNaN}, 1}}) {
    row.x = x;
    const Out o = RunOne(row);
    EXPECT_EQ(o.token, token);
    EXPECT_EQ(o.logprob, -kInf);
    EXPECT_EQ(o.last, token);
    row.target = 2;
    const Out scored = RunOne(row, true);
    EXPECT_EQ(scored.token, 2);
    EXPECT_EQ(scored.logprob, -kInf);
    row.target = -1;
  }
  // Bans make entries non-candidates; banning everything leaves none.
  row.x = {3.0f, 2.0f, 1.0f};
  row.adj = {{0, 0.0f, 1.0f, 0.0f, 1}, {2, 0.0f, 1.0f, 0.0f, 1}};
  for (int64_t p = 0; p < 20; ++p) {
    row.position = p;
    const Out o = RunOne(row);
    EXPECT_EQ(o.token, 1);
    EXPECT_EQ(o.logprob, 0.0f);
    EXPECT_EQ(o.last, 1);
  }
  row.adj = {{0, 0.0f, 1.0f, 0.0f, 1}, {1, 0.0f, 1.0f, 0.0f, 1}, {2, 0.0f, 1.0f, 0.0f, 1}};
  const Out none = RunOne(row);
  EXPECT_EQ(none.token, 0);
  EXPECT_EQ(none.logprob, -kInf);
  // Adjustment arithmetic: bias, then repetition by sign, then subtract.
  row.x = {1.0f, -1.0f, 0.0f};
  row.adj = {{0, 1.0f, 2.0f, 0.5f, 0},
             {1, 0.0f, 2.0f, 0.0f, 0},
             {2, 0.0f, 1.0f, -3.0f, 0}};
  row.sp.temperature = 0.0f;
  EXPECT_EQ(RunOne(row).token, 2) << "a = {0.5, -2, 3}";
  row.adj[2].subtract = 0.0f;
  EXPECT_EQ(RunOne(row).token, 0) << "a = {0.5, -2, 0}";
}

TEST(Sample, GreedyAndArgmaxTiesAndNaN) {
  const std::vector<std::pair<std::vector<float>, int32_t>> cases = {
      {{1.0f, 5.0f, -2.0f, 5.0f, 4.0f}, 1},
      {{kNaN, 1.0f, 3.0f, kNaN, 3.0f}, 2},
      {{kNaN, kNaN, kNaN}, 0},
      {{-kInf, -kInf, -kInf}, 0},
      {{-kInf, kNaN, -5.0f}, 2},
      {{kInf, 1.0f, kInf}, 0},
      {{-0.0f, 0.0f}, 0},
      {{7.0f}, 0}};
  for (const auto& [x, expect] : cases) {
    const int64_t v = static_cast<int64_t>(x.size());
    int32_t token = -1;
    ASSERT_TRUE(Argmax(x.data(), v, 1, v, &token).ok());
    EXPECT_EQ(token, expect);
    Row row;
    row.x = x;
    row.sp.temperature = 0.0f;
    const Out o = RunOne(row);
    EXPECT_EQ(o.token, expect);
    EXPECT_EQ(o.last, expect);
    EXPECT_EQ(o.logprob, 0.0f);
  }
  const auto logits = RandomFloats(9 * 70, 5);
  std::vector<int32_t> tokens(9);
  ASSERT_TRUE(Argmax(logits.data(), 70, 9, 64, tokens.data()).ok());
  for (int r = 0; r < 9; ++r) {
    const auto begin = logits.begin() + r * 70;
    EXPECT_EQ(tokens[r], std::max_element(begin, begin + 64) - begin);
  }
}

// ---------------------------------------------------------------------------
// Invariance.

TEST(Sample, SameBitsAloneAndInAnyBatch) {
  const int64_t vocab = 777;
  std::mt19937_64 rng(17);
  std::vector<Row> pool;
  for (int i = 0; i < 48; ++i) pool.push_back(RandomRow(vocab, rng, true));
  pool[0].sp.temperature = 0.0f;  // greedy among them
  pool[1].x.assign(vocab, kNaN);  // no candidate
  for (bool score : {false, true}) {
    std::vector<Out> alone(pool.size());
    for (size_t i = 0; i < pool.size(); ++i) {
      Row r = pool[i];
      if (score) r.target = static_cast<int32_t>((i * 37) % vocab);
      alone[i] = RunOne(r, score);
    }
    const int saved = NumThreads();
    for (int64_t batch = 1; batch <= 64; ++batch) {
      SetNumThreads(1 + static_cast<int>(batch % 3));
      std::vector<Row> rows;
      std::vector<size_t> which;
      for (int64_t b = 0; b < batch; ++b) {
        const size_t i = rng() % pool.size();
        which.push_back(i);
        rows.push_back(pool[i]);
        if (score) rows.back().target = static_cast<int32_t>((i * 37) % vocab);
      }
      std::vector<Out> out;
      ASSERT_TRUE(RunRows(rows, vocab, batch % 5, score, &out).ok());
      for (int64_t b = 0; b < batch; ++b) {
        EXPECT_TRUE(SameBits(out[b], alone[which[b]]))
            << (score ? "scoring" : "sampling") << " batch " << batch
            << " entry " << b << " (pool row " << which[b]
            << "): " << Describe(out[b]) << " vs alone "
            << Describe(alone[which[b]]);
      }
    }
    SetNumThreads(saved);
  }
}

TEST(Sample, SeedsAndPositionsReproduceAndDiffer) {
  Row row;
  row.x.assign(1000, 0.0f);
  std::set<int32_t> by_seed, by_position;
  for (uint64_t s = 0; s < 200; ++s) {
    row.sp.seed = SampleStreamKey(1, 0, s);
    const Out a = RunOne(row), b = RunOne(row);
    EXPECT_TRUE(SameBits(a, b));
    by_seed.insert(a.token);
  }
  row.sp.seed = 0;
  for (int64_t p = 0; p < 200; ++p) {
    row.position = p;
    by_position.insert(RunOne(row).token);
  }
  EXPECT_GT(by_seed.size(), 150u);
  EXPECT_GT(by_position.size(), 150u);
}

// ---------------------------------------------------------------------------
// Goodness of fit.

// Q(a, x), the regularised upper incomplete gamma function (Numerical
// Recipes' gammq: series below a + 1, continued fraction above).
double GammaQ(double a, double x) {
  if (x <= 0.0) return 1.0;
  const double lead = std::exp(-x + a * std::log(x) - std::lgamma(a));
  if (x < a + 1.0) {
    double term = 1.0 / a, sum = term;
    for (int n = 1; n < 10000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::fabs(term) < std::fabs(sum) * 1e-16) break;
    }
    return 1.0 - sum * lead;
  }
  constexpr double kTiny = 1e-300;
  double b = x + 1.0 - a, c = 1.0 / kTiny, d = 1.0 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < 1e-16) break;
  }
  return lead * h;
}

// p-value of Pearson's chi-square of `counts` against probabilities `p`;
// cells expecting fewer than 5 draws are pooled. A draw in a cell of
// probability 0 gives 0.
double ChiSquarePValue(const std::vector<int64_t>& counts,
                       const std::vector<double>& p) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double chi = 0.0, pooled_e = 0.0;
  int64_t pooled_c = 0;
  int cells = 0;
  for (size_t j = 0; j < counts.size(); ++j) {
    const double e = static_cast<double>(n) * p[j];
    if (e == 0.0) {
      if (counts[j] > 0) return 0.0;
      continue;
    }
    if (e < 5.0) {
      pooled_e += e;
      pooled_c += counts[j];
      continue;
    }
    chi += (counts[j] - e) * (counts[j] - e) / e;
    ++cells;
  }
  if (pooled_e > 0.0) {
    chi += (pooled_c - pooled_e) * (pooled_c - pooled_e) / pooled_e;
    ++cells;
  }
  if (cells < 2) return 1.0;
  return GammaQ(0.5 * (cells - 1), 0.5 * chi);
}

TEST(ChiSquare, PValueFunction) {
  // Known quantiles: chi2(1) at 3.841 -> 0.05; chi2(10) at 23.209 -> 0.01.
  EXPECT_NEAR(GammaQ(0.5, 3.841459 / 2), 0.05, 1e-6);
  EXPECT_NEAR(GammaQ(5.0, 23.209251 / 2), 0.01, 1e-6);
  // chi2(2): Q = e^(-x/2) exactly.
  EXPECT_NEAR(GammaQ(1.0, 0.5 * 2.0 * std::log(1e4)), 1e-4, 1e-12);
  EXPECT_NEAR(GammaQ(1.0, 0.5 * 0.3), std::exp(-0.15), 1e-12);
}

// 10^5 draws: 100 stream keys x 1000 positions of one row of logits.
std::vector<int64_t> Draw(const Row& base, int64_t vocab) {
  std::vector<Row> rows;
  for (int64_t i = 0; i < 100000; ++i) {
    Row r = base;
    r.sp.seed = SampleStreamKey(4321, i % 100, 0);
    r.position = i / 100;
    rows.push_back(std::move(r));
  }
  std::vector<Out> out;
  EXPECT_TRUE(RunRows(rows, vocab, 0, false, &out).ok());
  std::vector<int64_t> counts(vocab, 0);
  for (const Out& o : out) ++counts.at(o.token);
  return counts;
}

TEST(Sample, FrequenciesFitTheSampledDistribution) {
  const int64_t vocab = 32;
  const std::vector<float> x = RandomFloats(vocab, 77, -3.0f, 3.0f);
  struct Setting {
    float t;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  for (const Setting& s : std::vector<Setting>{{1.0f, 0, 1.0f, 0.0f},
                                               {0.6f, 8, 1.0f, 0.0f},
                                               {1.3f, 0, 0.7f, 0.0f},
                                               {1.0f, 0, 1.0f, 0.1f},
                                               {0.8f, 20, 0.9f, 0.02f}}) {
    Row row;
    row.x = x;
    row.sp.temperature = s.t;
    row.sp.top_k = s.top_k;
    row.sp.top_p = s.top_p;
    row.sp.min_p = s.min_p;
    row.adj = {{3, 1.5f, 1.0f, 0.0f, 0}, {5, 0.0f, 1.0f, 0.0f, 1}};
    const std::vector<int64_t> counts = Draw(row, vocab);
    const std::string what = "T " + std::to_string(s.t) + " top_k " +
                             std::to_string(s.top_k) + " top_p " +
                             std::to_string(s.top_p) + " min_p " +
                             std::to_string(s.min_p);
    // Deterministic draws (fixed keys and positions): never flaky.
    const double p =
        ChiSquarePValue(counts, MakeReference(row).Probabilities());
    EXPECT_GT(p, 1e-4) << what;
    // The twin: the same draws against the distribution at another
    // temperature must fail, or the test could not fail at all.
    Row other = row;
    other.sp.temperature = s.t * 1.25f;
    const double q =
        ChiSquarePValue(counts, MakeReference(other).Probabilities());
    EXPECT_LT(q, 1e-4) << what << ": the wrong distribution fits";
  }
}

// ---------------------------------------------------------------------------
// Validation.

TEST(Sample, BadValuesAreInvalidArgumentAndWriteNothing) {
  const int64_t vocab = 4;
  const std::vector<float> logits(2 * vocab, 0.0f);
  std::vector<int64_t> positions = {0, 1};
  std::vector<int64_t> offsets = {0, 1, 2};
  auto run = [&](std::vector<SamplingParams> params,
                 std::vector<LogitAdjustment> adjustments,
                 std::vector<int64_t> offs, const int32_t* targets,
                 const char* what) {
    std::vector<int32_t> tokens(2, -7), last(2, -7);
    std::vector<float> logprobs(2, -7.0f);
    SampleArgs a;
    a.logits = logits.data();
    a.ld = vocab;
    a.rows = 2;
    a.vocab = vocab;
    a.params = params.data();
    a.positions = positions.data();
    if (!adjustments.empty()) {
      a.adjust_offsets = offs.data();
      a.adjustments = adjustments.data();
    }
    a.targets = targets;
    a.tokens_out = tokens.data();
    a.logprobs_out = logprobs.data();
    a.last_kept_out = last.data();
    const absl::Status s = Sample(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << s;
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(tokens[r], -7) << what << ": written on error";
      EXPECT_EQ(logprobs[r], -7.0f) << what << ": written on error";
      EXPECT_EQ(last[r], -7) << what << ": written on error";
    }
  };
  const SamplingParams ok;
  const std::vector<std::pair<SamplingParams, const char*>> bad = {
      {{-1.0f, 0, 1.0f, 0.0f, 0}, "negative temperature"},
      {{-0.0f - 1e-30f, 0, 1.0f, 0.0f, 0}, "tiny negative temperature"},
      {{kNaN, 0, 1.0f, 0.0f, 0}, "NaN temperature"},
      {{kInf, 0, 1.0f, 0.0f, 0}, "infinite temperature"},
      {{1.0f, -1, 1.0f, 0.0f, 0}, "negative top_k"},
      {{1.0f, 0, 0.0f, 0.0f, 0}, "top_p 0"},
      {{1.0f, 0, -0.5f, 0.0f, 0}, "negative top_p"},
      {{1.0f, 0, 1.5f, 0.0f, 0}, "top_p > 1"},
      {{1.0f, 0, kNaN, 0.0f, 0}, "NaN top_p"},
      {{1.0f, 0, 1.0f, -0.1f, 0}, "negative min_p"},
      {{1.0f, 0, 1.0f, 1.01f, 0}, "min_p > 1"},
      {{1.0f, 0, 1.0f, kNaN, 0}, "NaN min_p"},
  };
  for (const auto& [sp, what] : bad) run({ok, sp}, {}, {}, nullptr, what);
  const LogitAdjustment fine{1, 0.5f, 1.2f, 0.1f, 0};
  const std::vector<std::pair<LogitAdjustment, const char*>> bad_adj = {
      {{-1, 0.0f, 1.0f, 0.0f, 0}, "adjusted token -1"},
      {{4, 0.0f, 1.0f, 0.0f, 0}, "adjusted token = vocab"},
      {{2, kNaN, 1.0f, 0.0f, 0}, "NaN bias"},
      {{2, kInf, 1.0f, 0.0f, 0}, "infinite bias"},
      {{2, 0.0f, 0.0f, 0.0f, 0}, "repetition 0"},
      {{2, 0.0f, -1.0f, 0.0f, 0}, "negative repetition"},
      {{2, 0.0f, kNaN, 0.0f, 0}, "NaN repetition"},
      {{2, 0.0f, kInf, 0.0f, 0}, "infinite repetition"},
      {{2, 0.0f, 1.0f, kNaN, 0}, "NaN subtract"},
      {{2, 0.0f, 1.0f, -kInf, 0}, "infinite subtract"},
  };
  for (const auto& [e, what] : bad_adj)
    run({ok, ok}, {fine, e}, offsets, nullptr, what);
  run({ok, ok}, {fine, fine}, {0, 2, 1}, nullptr, "decreasing offsets");
  run({ok, ok}, {fine, fine}, {-1, 0, 1}, nullptr, "negative offset");
  for (int32_t t : {-1, 4}) {
    const std::vector<int32_t> targets = {0, t};
    run({ok, ok}, {}, {}, targets.data(), "target out of range");
  }
  // Shapes and pointers (the dispatcher).
  std::vector<SamplingParams> params(2);
  std::vector<int32_t> tokens(2, -7);
  SampleArgs good;
  good.logits = logits.data();
  good.ld = vocab;
  good.rows = 2;
  good.vocab = vocab;
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
  invalid(Sample(a), "null positions when sampling");
  a = good;
  a.tokens_out = nullptr;
  invalid(Sample(a), "null tokens_out when sampling");
  a = good;
  a.ld = 3;
  invalid(Sample(a), "ld < vocab");
  a = good;
  a.vocab = 0;
  invalid(Sample(a), "vocab 0");
  a = good;
  a.rows = -1;
  invalid(Sample(a), "rows < 0");
  {
    // Offsets of zero entries need no adjustments array; adjustments need
    // offsets.
    const std::vector<int64_t> zeros = {0, 0, 0};
    std::vector<int32_t> with(2, -7), without(2, -7);
    a = good;
    a.adjust_offsets = zeros.data();
    a.tokens_out = with.data();
    EXPECT_TRUE(Sample(a).ok());
    a.adjust_offsets = nullptr;
    a.tokens_out = without.data();
    EXPECT_TRUE(Sample(a).ok());
    EXPECT_EQ(with, without);
    const LogitAdjustment one{1, 0.0f, 1.0f, 0.0f, 0};
    a = good;
    a.adjustments = &one;
    invalid(Sample(a), "adjustments without offsets");
  }
  {
    // vocab > 2^19 (the integer masses' bound): rejected before reading.
    const int64_t big = sm::kMaxSampleVocab + 1;
    std::vector<float> wide(big, 0.0f);
    std::vector<int32_t> one(1, -7);
    a = good;
    a.logits = wide.data();
    a.ld = big;
    a.vocab = big;
    a.rows = 1;
    a.tokens_out = one.data();
    invalid(Sample(a), "vocab 2^19 + 1");
    EXPECT_EQ(one[0], -7);
    a.vocab = a.ld = sm::kMaxSampleVocab;
    EXPECT_TRUE(Sample(a).ok()) << "vocab 2^19";
    EXPECT_GE(one[0], 0);
    EXPECT_LT(one[0], sm::kMaxSampleVocab);
  }
  // Scoring needs neither positions nor tokens_out.
  {
    const std::vector<int32_t> targets = {1, 2};
    std::vector<float> logprobs(2, 0.0f);
    a = good;
    a.positions = nullptr;
    a.tokens_out = nullptr;
    a.targets = targets.data();
    a.logprobs_out = logprobs.data();
    ASSERT_TRUE(Sample(a).ok());
    EXPECT_NEAR(logprobs[0], -std::log(4.0), 1e-6);
  }
  a = good;
  a.rows = 0;
  a.logits = nullptr;
  a.params = nullptr;
  EXPECT_TRUE(Sample(a).ok()) << "zero rows is a no-op";
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
  } else {
    // Adjustments on CUDA need the workspace (checked before any device
    // access).
    std::vector<LogitAdjustment> adj = {fine, fine};
    a = good;
    a.adjust_offsets = offsets.data();
    a.adjustments = adj.data();
    invalid(Sample(a, ExecContext{Device::kCuda, nullptr}),
            "CUDA without workspace");
  }
}

}  // namespace
}  // namespace lockstep::kernels
