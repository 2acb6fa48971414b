// Op cases of sampling (kernels/sampling.h): the backend's Philox, seeded
// Gumbel-max Sample with top-k / top-p, and Argmax's tie and NaN rules.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;

// The backend's Philox uniforms for (seed, position) pairs: one row of
// `count` uniforms per pair.
class PhiloxCase : public OpCase {
 public:
  explicit PhiloxCase(int64_t count) : count_(count) {
    for (uint64_t seed : {0ull, 1ull, 0xdeadbeefcafef00dull}) {
      for (int64_t pos :
           {int64_t{0}, int64_t{1}, int64_t{4097}, (int64_t{1} << 33) + 5}) {
        pairs_.push_back({seed, pos});
      }
    }
  }

  int64_t rows() const override { return static_cast<int64_t>(pairs_.size()); }
  absl::Status Prepare(Backend&) override { return absl::OkStatus(); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer u, b.Alloc(m * count_ * 4));
    for (int64_t i = 0; i < m; ++i) {
      const auto& [seed, pos] = pairs_.at(batch.rows[i]);
      LOCKSTEP_RETURN_IF_ERROR(
          b.PhiloxUniforms(seed, pos, count_, u.as<float>() + i * count_));
    }
    return DownloadOutput(b, u.as<float>(), OutType::kF32, m, count_);
  }
  // The CPU's PhiloxUniform, bit for bit.
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    std::vector<float> want;
    for (const auto& [seed, pos] : pairs_) {
      for (int64_t i = 0; i < count_; ++i)
        want.push_back(PhiloxUniform(seed, pos, i));
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
    const std::vector<double> u = full.Values();
    for (size_t i = 0; i < u.size(); ++i) {
      ASSERT_GT(u[i], 0.0) << i;
      ASSERT_LT(u[i], 1.0) << i;
    }
  }

 private:
  int64_t count_;
  std::vector<std::pair<uint64_t, int64_t>> pairs_;
};

// Seeded sampling: problem row i = r * 6 + k samples logits row r of a pool
// of 16 (vocab 32000, uniform in [-5, 5)) with parameter kind k at position
// 100 + r.
class SampleCase : public OpCase {
 public:
  SampleCase() : logits_(RandomFloats(kPool * kVocab, 8, -5.0f, 5.0f), kVocab) {
    kinds_[0] = {1.0f, 0, 1.0f, 7};
    kinds_[1] = {0.7f, 50, 1.0f, 8};
    kinds_[2] = {1.3f, 0, 0.9f, 9};
    kinds_[3] = {1.0f, 20, 0.5f, 10};
    kinds_[4] = {0.0f, 0, 1.0f, 11};
    kinds_[5] = {2.0f, 1, 1.0f, 12};
  }

  int64_t rows() const override { return kPool * kKinds; }
  absl::Status Prepare(Backend&) override { return absl::OkStatus(); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    std::vector<int64_t> logit_rows, positions;
    std::vector<SamplingParams> params;
    for (int64_t i : batch.rows) {
      logit_rows.push_back(i / kKinds);
      params.push_back(kinds_[i % kKinds]);
      positions.push_back(100 + i / kKinds);
    }
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(
        const float* x, logits_.Rows(b, Batch{"", logit_rows, false}, &s));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer dp, b.Upload(params));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer dpos, b.Upload(positions));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(m * 4));
    SampleArgs a;
    a.logits = x;
    a.ld = kVocab;
    a.rows = m;
    a.vocab = kVocab;
    a.params = dp.as<SamplingParams>();
    a.positions = dpos.as<int64_t>();
    a.tokens_out = out.as<int32_t>();
    LOCKSTEP_RETURN_IF_ERROR(Sample(a, b.context()));
    return DownloadOutput(b, out.as<int32_t>(), OutType::kI32, m, 1);
  }
  // Each (row, kind) alone, and all of them in one mixed batch, shuffled.
  std::vector<Batch> Batchings() const override {
    std::vector<int64_t> all(rows());
    std::iota(all.begin(), all.end(), 0);
    std::vector<Batch> b = Alone(all, /*view=*/false);
    std::mt19937_64 rng(3);
    std::shuffle(all.begin(), all.end(), rng);
    b.push_back({"every (row, kind) in one batch, shuffled", all, false});
    return b;
  }

  // The token is inside the kept set of each filter.
  void CheckProperties(Backend&, const Output& full) override {
    const std::vector<double> tok = full.Values();
    auto token = [&](int64_t r, int k) {
      return static_cast<int32_t>(tok[r * kKinds + k]);
    };
    for (int64_t r = 0; r < kPool; ++r) {
      const float* x = logits_.host_row(r);
      std::vector<int32_t> order(kVocab);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return x[a] > x[b]; });
      auto rank_of = [&](int32_t t) {
        return std::find(order.begin(), order.end(), t) - order.begin();
      };
      EXPECT_LT(rank_of(token(r, 1)), 50) << "top_k 50, row " << r;
      EXPECT_LT(rank_of(token(r, 3)), 20) << "top_k 20, row " << r;
      EXPECT_EQ(token(r, 4), order[0]) << "T = 0: argmax, row " << r;
      EXPECT_EQ(token(r, 5), order[0]) << "top_k = 1, row " << r;
      // top_p = 0.9 at T = 1.3: the prefix whose mass reaches 0.9.
      const double zmax = x[order[0]] / 1.3;
      double den = 0;
      for (int64_t j = 0; j < kVocab; ++j) den += std::exp(x[j] / 1.3 - zmax);
      double cum = 0;
      int64_t n = 0;
      while (cum < 0.9 * den) cum += std::exp(x[order[n++]] / 1.3 - zmax);
      EXPECT_LE(rank_of(token(r, 2)), n) << "top_p 0.9, row " << r;
    }
  }

 private:
  static constexpr int64_t kVocab = 32000;
  static constexpr int64_t kPool = 16;
  static constexpr int kKinds = 6;

  RowInput<float> logits_;
  SamplingParams kinds_[kKinds];
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
  // A negative temperature: INVALID_ARGUMENT (on CUDA the parameters live
  // in device memory and are read back to be checked).
  void CheckProperties(Backend& b, const Output&) override {
    absl::StatusOr<Buffer> dp =
        b.Upload(std::vector<SamplingParams>{{-1.0f, 0, 1.0f, 0}});
    ASSERT_TRUE(dp.ok()) << dp.status();
    absl::StatusOr<Buffer> pos = b.Upload(std::vector<int64_t>{0});
    ASSERT_TRUE(pos.ok()) << pos.status();
    absl::StatusOr<Buffer> out = b.Alloc(4);
    ASSERT_TRUE(out.ok()) << out.status();
    SampleArgs a;
    a.logits = x_.full();
    a.ld = 4;
    a.rows = 1;
    a.vocab = 4;
    a.params = dp->as<SamplingParams>();
    a.positions = pos->as<int64_t>();
    a.tokens_out = out->as<int32_t>();
    EXPECT_EQ(Sample(a, b.context()).code(), absl::StatusCode::kInvalidArgument)
        << "temperature -1 accepted";
  }

 private:
  static constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  RowInput<float> x_;
};

}  // namespace

std::vector<CaseEntry> SamplingCases() {
  std::vector<CaseEntry> cases;
  // sampling_cuda_test: 3 seeds x 4 positions of 4099 uniforms.
  cases.push_back({"philox_uniform", "seeds=3,positions=4,count=4099", false,
                   [] { return std::make_unique<PhiloxCase>(4099); }});
  cases.push_back({"sample", "pool=16,vocab=32000,kinds=6", false,
                   [] { return std::make_unique<SampleCase>(); }});
  cases.push_back({"argmax", "rows=4,vocab=4,ties_nan", false,
                   [] { return std::make_unique<ArgmaxCase>(); }});
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
