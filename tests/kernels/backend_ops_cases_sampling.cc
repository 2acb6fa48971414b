// Op cases of sampling (kernels/sampling.h): the backend's Philox uniforms,
// Sample over many shapes and parameter mixes (with adjustments, scoring
// mode, greedy and non-finite rows), the sampled frequencies against the
// exact renormalised distribution (chi-square, with a twin that must fail),
// argument validation on the backend, and Argmax's tie and NaN rules.
//
// Every Sample case is CpuContract::kBitwise: the sampler's arithmetic is
// kernels/sampling_math.h on both backends, so a CUDA row must have the CPU's
// token, logprob and last kept index bit for bit. Its output row is
// [token, logprob bits, last_kept] as three int32.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "kernels/sampling_math.h"
#include "tests/kernels/backend_ops_cases.h"

namespace lockstep::kernels::backend_ops {
namespace {

namespace sm = sampling_math;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------
// Philox.

// The backend's Philox uniforms for (key, position) pairs: one row of
// `count` doubles (as 2 count int32) per pair.
class PhiloxCase : public OpCase {
 public:
  explicit PhiloxCase(int64_t count) : count_(count) {
    for (uint64_t key : {0ull, 1ull, 0xdeadbeefcafef00dull}) {
      for (int64_t pos :
           {int64_t{0}, int64_t{1}, int64_t{4097}, (int64_t{1} << 33) + 5}) {
        pairs_.push_back({key, pos});
      }
    }
  }

  int64_t rows() const override { return static_cast<int64_t>(pairs_.size()); }
  absl::Status Prepare(Backend&) override { return absl::OkStatus(); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer u, b.Alloc(m * count_ * 8));
    for (int64_t i = 0; i < m; ++i) {
      const auto& [key, pos] = pairs_.at(batch.rows[i]);
      LOCKSTEP_RETURN_IF_ERROR(
          b.PhiloxUniforms(key, pos, count_, u.as<double>() + i * count_));
    }
    return DownloadOutput(b, u.as<int32_t>(), OutType::kI32, m, 2 * count_);
  }
  // The CPU's PhiloxUniform, bit for bit.
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    std::vector<double> want;
    for (const auto& [key, pos] : pairs_) {
      for (int64_t i = 0; i < count_; ++i)
        want.push_back(PhiloxUniform(key, pos, i));
    }
    return Bytes(want);
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }
  void CheckProperties(Backend&, const Output& full) override {
    // Known answer of Philox4x32-10 (Random123): zero counter and key.
    const std::array<uint32_t, 4> kat = Philox4x32({0, 0, 0, 0}, {0, 0});
    EXPECT_EQ(kat[0], 0x6627e8d5u);
    EXPECT_EQ(kat[1], 0xe169c58du);
    EXPECT_EQ(kat[2], 0xbc57ac4cu);
    EXPECT_EQ(kat[3], 0x9b00dbd8u);
    std::vector<double> u(full.bytes.size() / 8);
    std::memcpy(u.data(), full.bytes.data(), u.size() * 8);
    for (size_t i = 0; i < u.size(); ++i) {
      ASSERT_GE(u[i], 0x1p-53) << i;
      ASSERT_LE(u[i], 1.0 - 0x1p-53) << i;
    }
  }

 private:
  int64_t count_;
  std::vector<std::pair<uint64_t, int64_t>> pairs_;
};

// ---------------------------------------------------------------------------
// Sampling problems.

// A problem on the host: rows of logits with their parameters.
struct Problem {
  int64_t vocab = 0;
  RowInput<float> logits;  // [rows, vocab]
  std::vector<SamplingParams> params;
  std::vector<int64_t> positions;
  bool adjust = false;  // pass adjust_offsets (rows may have no entries)
  std::vector<std::vector<LogitAdjustment>> adj;  // per row
  bool score = false;                             // pass targets
  std::vector<int32_t> targets;

  int64_t rows() const { return static_cast<int64_t>(params.size()); }
};

struct SampleOut {
  int32_t token;
  float logprob;
  int32_t last;
};

SampleOut At(const Output& out, int64_t i) {
  SampleOut o;
  std::memcpy(&o.token, out.row(i), 4);
  std::memcpy(&o.logprob, out.row(i) + 4, 4);
  std::memcpy(&o.last, out.row(i) + 8, 4);
  return o;
}

// Runs the batch's rows of `pr` on `b`: [token, logprob bits, last_kept].
absl::StatusOr<Output> RunProblem(Backend& b, const Problem& pr,
                                  const Batch& batch) {
  const int64_t m = static_cast<int64_t>(batch.rows.size());
  std::vector<SamplingParams> params;
  std::vector<int64_t> positions, offsets = {0};
  std::vector<LogitAdjustment> entries;
  std::vector<int32_t> targets;
  for (int64_t r : batch.rows) {
    params.push_back(pr.params.at(r));
    positions.push_back(pr.positions.at(r));
    if (pr.adjust) {
      entries.insert(entries.end(), pr.adj.at(r).begin(), pr.adj.at(r).end());
      offsets.push_back(static_cast<int64_t>(entries.size()));
    }
    if (pr.score) targets.push_back(pr.targets.at(r));
  }
  Buffer scratch;
  LOCKSTEP_ASSIGN_OR_RETURN(const float* x, pr.logits.Rows(b, batch, &scratch));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer dparams, b.Upload(params));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer dpos, b.Upload(positions));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer doff, b.Upload(offsets));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer dadj, b.Upload(entries));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer dtargets, b.Upload(targets));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer work,
                            b.Alloc(pr.adjust ? m * pr.vocab * 4 : 0));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer tokens, b.Alloc(m * 4));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer logprobs, b.Alloc(m * 4));
  LOCKSTEP_ASSIGN_OR_RETURN(Buffer last, b.Alloc(m * 4));
  SampleArgs a;
  a.logits = x;
  a.ld = pr.vocab;
  a.rows = m;
  a.vocab = pr.vocab;
  a.params = dparams.as<SamplingParams>();
  a.positions = dpos.as<int64_t>();
  if (pr.adjust) {
    a.adjust_offsets = doff.as<int64_t>();
    a.adjustments = dadj.as<LogitAdjustment>();
    a.workspace = work.as<float>();
  }
  if (pr.score) a.targets = dtargets.as<int32_t>();
  a.tokens_out = tokens.as<int32_t>();
  a.logprobs_out = logprobs.as<float>();
  a.last_kept_out = last.as<int32_t>();
  LOCKSTEP_RETURN_IF_ERROR(Sample(a, b.context()));
  LOCKSTEP_ASSIGN_OR_RETURN(std::vector<int32_t> t,
                            b.Download(tokens.as<int32_t>(), m));
  LOCKSTEP_ASSIGN_OR_RETURN(std::vector<int32_t> lp,
                            b.Download(logprobs.as<int32_t>(), m));
  LOCKSTEP_ASSIGN_OR_RETURN(std::vector<int32_t> lk,
                            b.Download(last.as<int32_t>(), m));
  std::vector<int32_t> out;
  for (int64_t i = 0; i < m; ++i) {
    out.push_back(t[i]);
    out.push_back(lp[i]);
    out.push_back(lk[i]);
  }
  return MakeOutput(OutType::kI32, m, 3, out);
}

float Adjusted(float v, const LogitAdjustment& e) {
  if (e.banned) return -kInf;
  v = v + e.bias;
  if (e.repetition != 1.0f) v = v > 0.0f ? v / e.repetition : v * e.repetition;
  return v - e.subtract;
}

// Row r's adjusted logits (step 1, on the host).
std::vector<float> AdjustedRow(const Problem& pr, int64_t r) {
  const float* x = pr.logits.host_row(r);
  std::vector<float> a(x, x + pr.vocab);
  if (pr.adjust) {
    for (const LogitAdjustment& e : pr.adj[r])
      a[e.token] = Adjusted(a[e.token], e);
  }
  return a;
}

bool IsCandidate(float v) { return !std::isnan(v) && v != -kInf; }

// "j at or before last in O" (the learner's mask).
bool InMask(const std::vector<float>& a, int32_t last, int64_t j) {
  return IsCandidate(a[j]) &&
         (a[j] > a[last] || (a[j] == a[last] && j <= last));
}

// Float64 probabilities of the sampling distribution of one row (steps 1-8
// the plain way: sort, cut prefixes; the top_p cut on the contract's integer
// masses so that the set is exactly defined).
std::vector<double> Probabilities(const std::vector<float>& a,
                                  const SamplingParams& sp) {
  const int64_t vocab = static_cast<int64_t>(a.size());
  std::vector<double> p(vocab, 0.0);
  std::vector<int32_t> order;
  std::vector<float> z(vocab, 0.0f);
  for (int64_t j = 0; j < vocab; ++j) {
    if (!IsCandidate(a[j])) continue;
    order.push_back(static_cast<int32_t>(j));
    z[j] = std::clamp(a[j] / sp.temperature, -std::numeric_limits<float>::max(),
                      std::numeric_limits<float>::max());
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t i, int32_t j) { return a[i] > a[j]; });
  const double zmax = z[order[0]];
  if (sp.min_p > 0.0f) {
    size_t n = 0;
    while (n < order.size() && z[order[n]] - zmax >= std::log(double{sp.min_p}))
      ++n;
    order.resize(n);
  }
  if (sp.top_k > 0 && static_cast<size_t>(sp.top_k) < order.size())
    order.resize(sp.top_k);
  if (sp.top_p < 1.0f) {
    uint64_t total = 0, cum = 0;
    for (int32_t j : order) total += sm::Mass(z[j], zmax);
    const double want =
        std::ceil(double{sp.top_p} * static_cast<double>(total));
    const uint64_t target =
        want < 1.0 ? 1 : std::min<uint64_t>(total, static_cast<uint64_t>(want));
    size_t n = 0;
    while (n < order.size() && cum < target)
      cum += sm::Mass(z[order[n++]], zmax);
    order.resize(n);
  }
  double den = 0.0;
  for (int32_t j : order) den += std::exp(z[j] - zmax);
  for (int32_t j : order) p[j] = std::exp(z[j] - zmax) / den;
  return p;
}

enum class Mix { kMix, kPlain, kTopK, kTopP, kMinP, kGreedy, kNonFinite };

const char* MixName(Mix m) {
  switch (m) {
    case Mix::kMix:
      return "mix";
    case Mix::kPlain:
      return "plain";
    case Mix::kTopK:
      return "topk";
    case Mix::kTopP:
      return "topp";
    case Mix::kMinP:
      return "minp";
    case Mix::kGreedy:
      return "greedy";
    case Mix::kNonFinite:
      return "nonfinite";
  }
  return "?";
}

struct Shape {
  int64_t rows;
  int64_t vocab;
  Mix mix;
  bool adjust;
  bool score;
  bool heavy;

  std::string Vars() const {
    return absl::StrCat("rows=", rows, ",vocab=", vocab, ",", MixName(mix),
                        adjust ? ",adjust" : "", score ? ",score" : "");
  }
};

template <typename T, size_t N>
T Pick(const T (&v)[N], std::mt19937_64& rng) {
  return v[rng() % N];
}

// Logits of row `kind`: uniform, wide normal, integer ties, a peak, signed
// zeros among negatives, sprinkled -inf / NaN; and, for the non-finite mix,
// all NaN, all -inf, one finite value, +inf entries, signed zeros only,
// mostly NaN.
void FillRow(float* x, int64_t vocab, int kind, bool nonfinite,
             std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uni(-5.0f, 5.0f);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int64_t j = 0; j < vocab; ++j) {
    float v;
    if (!nonfinite) {
      switch (kind % 6) {
        case 0:
          v = uni(rng);
          break;
        case 1:
          v = normal(rng);
          break;
        case 2:
          v = static_cast<float>(static_cast<int>(rng() % 7) - 3);
          break;
        case 3:
          v = normal(rng) * 0.25f;
          break;
        case 4:
          v = (rng() % 3 == 0) ? ((rng() & 1) ? 0.0f : -0.0f) : uni(rng) - 6.0f;
          break;
        default: {
          const uint64_t c = rng() % 20;
          v = c == 0 ? -kInf : c == 1 ? kNaN : uni(rng);
        }
      }
    } else {
      switch (kind % 7) {
        case 0:
          v = kNaN;
          break;
        case 1:
          v = -kInf;
          break;
        case 2:
          v = -kInf;
          break;
        case 3:
          v = (rng() % 8 == 0) ? kInf : uni(rng);
          break;
        case 4:
          v = (rng() & 1) ? 0.0f : -0.0f;
          break;
        case 5:
          v = (rng() % 10 == 0) ? uni(rng) : kNaN;
          break;
        default:
          v = (rng() % 4 == 0) ? -kInf : static_cast<float>(rng() % 3);
          break;
      }
    }
    x[j] = v;
  }
  if (!nonfinite && kind % 6 == 3) x[rng() % vocab] = 12.0f;
  if (nonfinite && kind % 7 == 2) x[rng() % vocab] = uni(rng);  // one finite
}

SamplingParams MakeParams(Mix mix, int64_t vocab, std::mt19937_64& rng) {
  SamplingParams sp;
  const float temps[] = {0.6f, 1.0f, 1.3f};
  sp.temperature = Pick(temps, rng);
  const int32_t v = static_cast<int32_t>(vocab);
  switch (mix) {
    case Mix::kMix:
    case Mix::kNonFinite: {
      const float all_temps[] = {0.0f, 5e-6f, 0.6f, 1.0f, 1.3f, 2.0f, 1.0f};
      const int32_t ks[] = {0, 0, 0, 1, 5, 50, std::max(1, v - 1), v + 3};
      const float ps[] = {1.0f, 1.0f, 0.9f, 0.5f, 1e-3f, 0.999f};
      const float mps[] = {0.0f, 0.0f, 0.0f, 0.05f, 0.3f, 1.0f};
      sp.temperature = Pick(all_temps, rng);
      sp.top_k = Pick(ks, rng);
      sp.top_p = Pick(ps, rng);
      sp.min_p = Pick(mps, rng);
      break;
    }
    case Mix::kPlain:
      break;
    case Mix::kTopK: {
      const int32_t ks[] = {1, 2, 5, 50, 1000, std::max(1, v / 2)};
      sp.top_k = Pick(ks, rng);
      break;
    }
    case Mix::kTopP: {
      const float ps[] = {0.5f, 0.9f, 0.95f, 0.999f, 0.1f};
      sp.top_p = Pick(ps, rng);
      break;
    }
    case Mix::kMinP: {
      const float mps[] = {0.01f, 0.1f, 0.5f, 1e-4f};
      sp.min_p = Pick(mps, rng);
      break;
    }
    case Mix::kGreedy: {
      const float g[] = {0.0f, 5e-6f};
      sp.temperature = Pick(g, rng);
      break;
    }
  }
  return sp;
}

std::vector<LogitAdjustment> MakeAdjustments(int64_t vocab,
                                             std::mt19937_64& rng) {
  const int64_t count =
      1 + static_cast<int64_t>(rng() % std::min<int64_t>(vocab, 64));
  std::vector<LogitAdjustment> adj;
  std::vector<char> used(vocab, 0);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  while (static_cast<int64_t>(adj.size()) < count) {
    const int32_t t = static_cast<int32_t>(rng() % vocab);
    if (used[t]) continue;
    used[t] = 1;
    LogitAdjustment e;
    e.token = t;
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

Problem MakeProblem(const Shape& s) {
  std::mt19937_64 rng(1000003 * s.rows + 7 * s.vocab +
                      static_cast<int>(s.mix) * 31 + (s.adjust ? 5 : 0) +
                      (s.score ? 11 : 0));
  Problem pr;
  pr.vocab = s.vocab;
  std::vector<float> x(s.rows * s.vocab);
  for (int64_t r = 0; r < s.rows; ++r) {
    FillRow(x.data() + r * s.vocab, s.vocab, static_cast<int>(rng() % 42),
            s.mix == Mix::kNonFinite, rng);
    pr.params.push_back(MakeParams(s.mix, s.vocab, rng));
    pr.params.back().seed = SampleStreamKey(0x5eed, r, rng() % 4);
    pr.positions.push_back(static_cast<int64_t>(rng() % (int64_t{1} << 40)));
    pr.adj.push_back(s.adjust && rng() % 2 ? MakeAdjustments(s.vocab, rng)
                                           : std::vector<LogitAdjustment>{});
    // Targets: random, the row's argmax, or a non-candidate when there is one.
    int32_t t = static_cast<int32_t>(rng() % s.vocab);
    if (rng() % 4 == 0) {
      const float* row = x.data() + r * s.vocab;
      t = static_cast<int32_t>(std::max_element(row, row + s.vocab) - row);
    }
    pr.targets.push_back(t);
  }
  pr.logits = RowInput<float>(std::move(x), s.vocab);
  pr.adjust = s.adjust;
  pr.score = s.score;
  return pr;
}

// Sample on one shape; the CPU's bits on every backend.
class SampleCase : public OpCase {
 public:
  explicit SampleCase(const Shape& s) : shape_(s), pr_(MakeProblem(s)) {}

  int64_t rows() const override { return shape_.rows; }
  absl::Status Prepare(Backend& b) override { return pr_.logits.Upload(b); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    return RunProblem(b, pr_, batch);
  }
  // The default batches, and every row in a shuffled batch with repeats.
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(rows());
    std::vector<int64_t> all(rows());
    std::iota(all.begin(), all.end(), 0);
    std::mt19937_64 rng(3);
    std::shuffle(all.begin(), all.end(), rng);
    all.push_back(all.front());
    all.insert(all.begin(), all.back());
    b.push_back({"every row shuffled, two repeated", all, false});
    return b;
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

  // What the bits must satisfy on any backend: tokens in range, the token
  // (sampling) or a logprob of -inf / not (scoring) consistent with the mask
  // from last_kept, greedy logprobs 0 / -inf, logprobs <= 0.
  void CheckProperties(Backend&, const Output& full) override {
    int64_t bad = 0;
    for (int64_t r = 0; r < rows() && bad < 5; ++r) {
      const SampleOut o = At(full, r);
      const std::vector<float> a = AdjustedRow(pr_, r);
      const SamplingParams& sp = pr_.params[r];
      const std::string what =
          absl::StrCat("row ", r, ": token ", o.token, " logprob ", o.logprob,
                       " last ", o.last);
      const bool in_range = o.token >= 0 && o.token < pr_.vocab &&
                            o.last >= 0 && o.last < pr_.vocab;
      EXPECT_TRUE(in_range) << what;
      if (!in_range) {
        ++bad;
        continue;
      }
      if (pr_.score) {
        EXPECT_EQ(o.token, pr_.targets[r]) << what;
      }
      EXPECT_FALSE(o.logprob > 0.0f) << what;
      if (sp.temperature < kMinSamplingTemperature) {
        EXPECT_EQ(o.logprob, o.token == o.last ? 0.0f : -kInf) << what;
        continue;
      }
      const bool any = std::any_of(a.begin(), a.end(), IsCandidate);
      if (!any) {
        EXPECT_EQ(o.logprob, -kInf) << what;
        EXPECT_EQ(o.last, o.token) << what;
        continue;
      }
      EXPECT_TRUE(IsCandidate(a[o.last])) << what;
      const bool kept = InMask(a, o.last, o.token);
      if (!pr_.score) {
        EXPECT_TRUE(kept) << what << ": sampled outside the kept set";
      }
      EXPECT_EQ(kept, o.logprob != -kInf) << what;
      if (::testing::Test::HasFailure()) ++bad;
    }
  }

 private:
  Shape shape_;
  Problem pr_;
};

// ---------------------------------------------------------------------------
// Goodness of fit.

// Q(a, x), the regularised upper incomplete gamma function.
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

// p-value of Pearson's chi-square; cells expecting < 5 draws are pooled, a
// draw in a cell of probability 0 gives 0.
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
  return cells < 2 ? 1.0 : GammaQ(0.5 * (cells - 1), 0.5 * chi);
}

// 10^5 draws from one row of 32 logits (100 stream keys x 1000 positions):
// the token frequencies fit the exact renormalised distribution
// (p > 1e-4; the draws are fixed, so this never flakes), and do not fit the
// distribution at 1.25 T (the twin: the check can fail).
class ChiSquareCase : public OpCase {
 public:
  ChiSquareCase(float t, int32_t top_k, float top_p, float min_p) {
    constexpr int64_t kVocab = 32, kDraws = 100000;
    pr_.vocab = kVocab;
    std::mt19937_64 rng(77);
    std::uniform_real_distribution<float> u(-3.0f, 3.0f);
    std::vector<float> row(kVocab);
    for (float& v : row) v = u(rng);
    std::vector<float> x;
    for (int64_t i = 0; i < kDraws; ++i)
      x.insert(x.end(), row.begin(), row.end());
    pr_.logits = RowInput<float>(std::move(x), kVocab);
    SamplingParams sp;
    sp.temperature = t;
    sp.top_k = top_k;
    sp.top_p = top_p;
    sp.min_p = min_p;
    pr_.adjust = true;
    for (int64_t i = 0; i < kDraws; ++i) {
      sp.seed = SampleStreamKey(4321, i % 100, 0);
      pr_.params.push_back(sp);
      pr_.positions.push_back(i / 100);
      pr_.adj.push_back({{3, 1.5f, 1.0f, 0.0f, 0}, {5, 0.0f, 1.0f, 0.0f, 1}});
    }
  }

  int64_t rows() const override { return pr_.rows(); }
  absl::Status Prepare(Backend& b) override { return pr_.logits.Upload(b); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    return RunProblem(b, pr_, batch);
  }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = Alone({0, rows() / 2, rows() - 1}, true);
    b.push_back(Slice(1000, 3000));
    std::vector<int64_t> some;
    for (int64_t i = 0; i < rows(); i += 37) some.push_back(rows() - 1 - i);
    b.push_back({"every 37th row, reversed", some, false});
    return b;
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }
  void CheckProperties(Backend&, const Output& full) override {
    std::vector<int64_t> counts(pr_.vocab, 0);
    for (int64_t i = 0; i < full.rows; ++i) {
      const int32_t t = At(full, i).token;
      ASSERT_GE(t, 0);
      ASSERT_LT(t, pr_.vocab);
      ++counts[t];
    }
    const std::vector<float> a = AdjustedRow(pr_, 0);
    const double p = ChiSquarePValue(counts, Probabilities(a, pr_.params[0]));
    EXPECT_GT(p, 1e-4) << "sampled frequencies do not fit the distribution";
    SamplingParams other = pr_.params[0];
    other.temperature *= 1.25f;
    const double q = ChiSquarePValue(counts, Probabilities(a, other));
    EXPECT_LT(q, 1e-4) << "the twin (distribution at 1.25 T) fits too: the "
                          "goodness-of-fit check could not fail";
    std::printf("[ backend_ops ] chi-square p = %.3g, twin p = %.3g\n", p, q);
  }

 private:
  Problem pr_;
};

// ---------------------------------------------------------------------------
// Validation on the backend (CUDA reads device values back to check them).

class ValidationCase : public OpCase {
 public:
  ValidationCase() {
    pr_.vocab = kVocab;
    pr_.logits = RowInput<float>(std::vector<float>(2 * kVocab, 0.5f), kVocab);
    for (int64_t r = 0; r < 2; ++r) {
      SamplingParams sp;
      sp.seed = SampleStreamKey(9, r, 0);
      pr_.params.push_back(sp);
      pr_.positions.push_back(r);
    }
  }

  int64_t rows() const override { return 2; }
  absl::Status Prepare(Backend& b) override { return pr_.logits.Upload(b); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    return RunProblem(b, pr_, batch);
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

  void CheckProperties(Backend& b, const Output&) override {
    const SamplingParams ok;
    const std::vector<std::pair<SamplingParams, const char*>> bad = {
        {{-1.0f, 0, 1.0f, 0.0f, 0}, "negative temperature"},
        {{kNaN, 0, 1.0f, 0.0f, 0}, "NaN temperature"},
        {{kInf, 0, 1.0f, 0.0f, 0}, "infinite temperature"},
        {{1.0f, -1, 1.0f, 0.0f, 0}, "negative top_k"},
        {{1.0f, 0, 0.0f, 0.0f, 0}, "top_p 0"},
        {{1.0f, 0, 1.5f, 0.0f, 0}, "top_p > 1"},
        {{1.0f, 0, kNaN, 0.0f, 0}, "NaN top_p"},
        {{1.0f, 0, 1.0f, -0.1f, 0}, "negative min_p"},
        {{1.0f, 0, 1.0f, 1.5f, 0}, "min_p > 1"},
        {{1.0f, 0, 1.0f, kNaN, 0}, "NaN min_p"},
    };
    for (const auto& [sp, what] : bad) Expect(b, {ok, sp}, {}, {}, {}, what);
    const LogitAdjustment fine{1, 0.5f, 1.2f, 0.1f, 0};
    const std::vector<std::pair<LogitAdjustment, const char*>> bad_adj = {
        {{-1, 0.0f, 1.0f, 0.0f, 0}, "adjusted token -1"},
        {{kVocab, 0.0f, 1.0f, 0.0f, 0}, "adjusted token = vocab"},
        {{2, kNaN, 1.0f, 0.0f, 0}, "NaN bias"},
        {{2, 0.0f, 0.0f, 0.0f, 0}, "repetition 0"},
        {{2, 0.0f, -2.0f, 0.0f, 0}, "negative repetition"},
        {{2, 0.0f, 1.0f, kInf, 0}, "infinite subtract"},
    };
    for (const auto& [e, what] : bad_adj) {
      Expect(b, {ok, ok}, {0, 1, 2}, {fine, e}, {}, what);
    }
    Expect(b, {ok, ok}, {0, 2, 1}, {fine, fine}, {}, "decreasing offsets");
    Expect(b, {ok, ok}, {-1, 0, 1}, {fine, fine}, {}, "negative offset");
    Expect(b, {ok, ok}, {}, {}, {0, -1}, "target -1");
    Expect(b, {ok, ok}, {}, {}, {0, kVocab}, "target = vocab");
  }

 private:
  static constexpr int32_t kVocab = 4;

  // Sample with these values must be INVALID_ARGUMENT and write nothing
  // (the outputs stay 0xFF bytes).
  void Expect(Backend& b, const std::vector<SamplingParams>& params,
              const std::vector<int64_t>& offsets,
              const std::vector<LogitAdjustment>& adjustments,
              const std::vector<int32_t>& targets, const char* what) {
    absl::StatusOr<Buffer> dp = b.Upload(params);
    absl::StatusOr<Buffer> pos = b.Upload(std::vector<int64_t>{0, 1});
    absl::StatusOr<Buffer> off = b.Upload(offsets);
    absl::StatusOr<Buffer> adj = b.Upload(adjustments);
    absl::StatusOr<Buffer> tg = b.Upload(targets);
    absl::StatusOr<Buffer> work = b.Alloc(2 * kVocab * 4);
    absl::StatusOr<Buffer> out = b.Alloc(3 * 2 * 4);
    ASSERT_TRUE(dp.ok() && pos.ok() && off.ok() && adj.ok() && tg.ok() &&
                work.ok() && out.ok());
    SampleArgs a;
    a.logits = pr_.logits.full();
    a.ld = kVocab;
    a.rows = 2;
    a.vocab = kVocab;
    a.params = dp->as<SamplingParams>();
    a.positions = pos->as<int64_t>();
    if (!offsets.empty()) {
      a.adjust_offsets = off->as<int64_t>();
      a.adjustments = adj->as<LogitAdjustment>();
      a.workspace = work->as<float>();
    }
    if (!targets.empty()) a.targets = tg->as<int32_t>();
    a.tokens_out = out->as<int32_t>();
    a.logprobs_out = reinterpret_cast<float*>(out->as<int32_t>() + 2);
    a.last_kept_out = out->as<int32_t>() + 4;
    const absl::Status s = Sample(a, b.context());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << s;
    absl::StatusOr<std::vector<uint32_t>> got =
        b.Download(out->as<uint32_t>(), 6);
    ASSERT_TRUE(got.ok()) << got.status();
    for (uint32_t v : *got)
      EXPECT_EQ(v, 0xFFFFFFFFu) << what << ": written on error";
  }

  Problem pr_;
};

// Argmax of 4 rows of 4: ties go to the lowest index, NaN never wins unless
// all are NaN, -0 ties +0.
class ArgmaxCase : public OpCase {
 public:
  ArgmaxCase()
      : x_({1, 3, 3, 2, kNaN, kNaN, kNaN, kNaN, kNaN, -1, kNaN, -1, -0.0f, 0.0f,
            -5, -5},
           4) {}

  int64_t rows() const override { return 4; }
  absl::Status Prepare(Backend& b) override { return x_.Upload(b); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const float* x, x_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(m * 4));
    LOCKSTEP_RETURN_IF_ERROR(
        Argmax(x, 4, m, 4, out.as<int32_t>(), b.context()));
    return DownloadOutput(b, out.as<int32_t>(), OutType::kI32, m, 1);
  }
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    return Bytes(std::vector<int32_t>{1, 0, 1, 0});
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

 private:
  RowInput<float> x_;
};

}  // namespace

std::vector<CaseEntry> SamplingCases() {
  std::vector<CaseEntry> cases;
  cases.push_back({"philox_uniform", "keys=3,positions=4,count=4099", false,
                   [] { return std::make_unique<PhiloxCase>(4099); }});
  // Shapes: vocab 1..2^19 (151936: Qwen's), rows 1..300. Heavy shapes run on
  // the non-CPU backends only (the CPU computes their side of the bitwise
  // comparison); the light ones keep every feature in `make test`.
  const Shape shapes[] = {
      {1, 1, Mix::kMix, false, false, false},
      {7, 2, Mix::kMix, false, false, false},
      {33, 3, Mix::kMix, true, false, false},
      {64, 31, Mix::kMix, true, true, false},
      {64, 1000, Mix::kMix, true, false, false},
      {40, 4097, Mix::kTopK, false, false, false},
      {40, 4097, Mix::kTopP, true, false, false},
      {40, 4097, Mix::kMinP, false, true, false},
      {24, 4097, Mix::kGreedy, true, false, false},
      {24, 4097, Mix::kGreedy, false, true, false},
      {49, 257, Mix::kNonFinite, true, false, false},
      {49, 257, Mix::kNonFinite, false, true, false},
      {12, 32000, Mix::kMix, true, true, false},
      {300, 151936, Mix::kMix, true, false, true},
      {300, 151936, Mix::kMix, true, true, true},
      {256, 151936, Mix::kPlain, false, false, true},
      {256, 151936, Mix::kTopK, false, false, true},
      {256, 151936, Mix::kTopP, true, false, true},
      {128, 151936, Mix::kMinP, true, true, true},
      {64, 151936, Mix::kGreedy, true, false, true},
      {300, 32000, Mix::kMix, true, false, true},
      {200, 50257, Mix::kNonFinite, true, false, true},
      {130, 262144, Mix::kTopP, false, true, true},
      {40, 524288, Mix::kMix, true, false, true},
  };
  for (const Shape& s : shapes) {
    cases.push_back({"sample", s.Vars(), s.heavy,
                     [s] { return std::make_unique<SampleCase>(s); }});
  }
  struct Fit {
    const char* vars;
    float t;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  for (const Fit& f :
       {Fit{"vocab=32,draws=100000,t=1", 1.0f, 0, 1.0f, 0.0f},
        Fit{"vocab=32,draws=100000,t=0.6,top_k=8", 0.6f, 8, 1.0f, 0.0f},
        Fit{"vocab=32,draws=100000,t=1.3,top_p=0.7,min_p=0.02", 1.3f, 0, 0.7f,
            0.02f}}) {
    cases.push_back({"sample_chi_square", f.vars, false, [f] {
                       return std::make_unique<ChiSquareCase>(f.t, f.top_k,
                                                              f.top_p, f.min_p);
                     }});
  }
  cases.push_back({"sample_validation", "rows=2,vocab=4", false,
                   [] { return std::make_unique<ValidationCase>(); }});
  cases.push_back({"argmax", "rows=4,vocab=4,ties_nan", false,
                   [] { return std::make_unique<ArgmaxCase>(); }});
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
