// Op cases of the log-softmax (kernels/softmax.h): LogSoftmax with every
// output, the vocabulary-parallel SegmentStats + CombineSegmentStats split.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/softmax.h"
#include "kernels/tree_reduce.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;
using ::lockstep::testing::RandomInts;

// LogSoftmax of logits [rows, vocab] (uniform in [lo, hi) from `seed`; with
// vocab > 100 row 3's first segment is all -inf) with random targets. Each
// output row is [lse, target logprob, logprobs[vocab]].
class LogSoftmaxCase : public OpCase {
 public:
  LogSoftmaxCase(int64_t rows, int64_t vocab, uint64_t seed, float lo, float hi,
                 bool check_bad_target)
      : rows_(rows), vocab_(vocab), check_bad_target_(check_bad_target) {
    std::vector<float> x = RandomFloats(rows * vocab, seed, lo, hi);
    if (vocab > 100) {
      for (int64_t j = 0; j < vocab / 8; ++j) x[3 * vocab + j] = -INFINITY;
    }
    x_ = RowInput<float>(std::move(x), vocab);
    targets_ = RowInput<int32_t>(
        RandomInts(rows, 3, 0, static_cast<int32_t>(vocab - 1)), 1);
  }

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_RETURN_IF_ERROR(x_.Upload(b));
    return targets_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sx, st;
    LOCKSTEP_ASSIGN_OR_RETURN(const float* x, x_.Rows(b, batch, &sx));
    LOCKSTEP_ASSIGN_OR_RETURN(const int32_t* tg, targets_.Rows(b, batch, &st));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer lse, b.Alloc(m * 4));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer tl, b.Alloc(m * 4));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer lp, b.Alloc(m * vocab_ * 4));
    LogSoftmaxArgs a;
    a.logits = x;
    a.ld = vocab_;
    a.rows = m;
    a.vocab = vocab_;
    a.targets = tg;
    a.target_logprobs = tl.as<float>();
    a.logprobs = lp.as<float>();
    a.ld_out = vocab_;
    a.lse = lse.as<float>();
    LOCKSTEP_RETURN_IF_ERROR(LogSoftmax(a, b.context()));
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> l,
                              b.Download(lse.as<float>(), m));
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> t,
                              b.Download(tl.as<float>(), m));
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> p,
                              b.Download(lp.as<float>(), m * vocab_));
    std::vector<float> rows(m * (vocab_ + 2));
    for (int64_t r = 0; r < m; ++r) {
      float* o = &rows[r * (vocab_ + 2)];
      o[0] = l[r];
      o[1] = t[r];
      std::memcpy(o + 2, &p[r * vocab_], vocab_ * 4);
    }
    return MakeOutput(OutType::kF32, m, vocab_ + 2, rows);
  }

  // (a) is on the log-sum-exp; the log-probabilities follow from it exactly
  // (CheckProperties).
  std::vector<double> Reference() const override {
    std::vector<double> ref(rows_);
    for (int64_t r = 0; r < rows_; ++r) {
      const float* x = x_.host_row(r);
      double m = -1e300, z = 0;
      for (int64_t j = 0; j < vocab_; ++j) m = std::max(m, double{x[j]});
      for (int64_t j = 0; j < vocab_; ++j) z += std::exp(double{x[j]} - m);
      ref[r] = m + std::log(z);
    }
    return ref;
  }
  std::vector<double> Checked(const Output& full) const override {
    std::vector<double> lse(rows_);
    for (int64_t r = 0; r < rows_; ++r) lse[r] = Lse(full, r);
    return lse;
  }
  double Tolerance(const Backend&) const override { return 1e-5; }
  // Besides the defaults: every 7th row alone (view), row 3 (an all -inf
  // segment) alone. -inf logits give -inf log-probabilities, never NaN.
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(rows_);
    std::vector<int64_t> every7;
    for (int64_t r = 0; r < rows_; r += 7) every7.push_back(r);
    for (Batch& a : Alone(every7, /*view=*/true)) b.push_back(std::move(a));
    if (rows_ > 3) {
      for (Batch& a : Alone({3}, /*view=*/false)) b.push_back(std::move(a));
    }
    return b;
  }
  CpuContract cpu_contract() const override {
    return CpuContract::kWithinTolerance;  // expf / logf differ
  }

  void CheckProperties(Backend& b, const Output& full) override {
    // logprob_j = x_j - lse, the target's included, exactly (fp32).
    for (int64_t r = 0; r < rows_; ++r) {
      const float* x = x_.host_row(r);
      const float lse = static_cast<float>(Lse(full, r));
      float tl;
      std::memcpy(&tl, full.row(r) + 4, 4);
      EXPECT_EQ(tl, x[targets_.host()[r]] - lse) << "target logprob, row " << r;
      std::vector<float> want(vocab_);
      for (int64_t j = 0; j < vocab_; ++j) want[j] = x[j] - lse;
      EXPECT_EQ(std::memcmp(want.data(), full.row(r) + 8, vocab_ * 4), 0)
          << "logprobs != logits - lse, row " << r;
    }
    // Vocabulary-parallel: t ranks, each with its whole segments, then the
    // combine: the single call's lse bits.
    std::vector<float> lse(rows_);
    for (int64_t r = 0; r < rows_; ++r)
      lse[r] = static_cast<float>(Lse(full, r));
    for (int t : {1, 2, 4, 8}) {
      absl::StatusOr<Buffer> gathered =
          b.Alloc(t * rows_ * sizeof(SoftmaxStats));
      ASSERT_TRUE(gathered.ok()) << gathered.status();
      for (int rank = 0; rank < t; ++rank) {
        const int seg_count = kTreeLeaves / t;
        const int seg_begin = rank * seg_count;
        SegmentStatsArgs a;
        a.logits = x_.full() + seg_begin * vocab_ / kTreeLeaves;
        a.ld = vocab_;
        a.rows = rows_;
        a.vocab_total = vocab_;
        a.seg_begin = seg_begin;
        a.seg_count = seg_count;
        a.stats_out = gathered->as<SoftmaxStats>() + rank * rows_;
        ASSERT_TRUE(SegmentStats(a, b.context()).ok()) << "t=" << t;
      }
      absl::StatusOr<Buffer> out = b.Alloc(rows_ * 4);
      ASSERT_TRUE(out.ok()) << out.status();
      ASSERT_TRUE(CombineSegmentStats(gathered->as<SoftmaxStats>(), t, rows_,
                                      out->as<float>(), b.context())
                      .ok());
      absl::StatusOr<std::vector<float>> got =
          b.Download(out->as<float>(), rows_);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(std::memcmp(got->data(), lse.data(), rows_ * 4), 0)
          << "vocab-parallel t=" << t;
    }
    if (check_bad_target_) CheckBadTarget(b);
  }

 private:
  static double Lse(const Output& full, int64_t r) {
    float v;
    std::memcpy(&v, full.row(r), 4);
    return v;
  }

  // A target outside [0, vocab): INVALID_ARGUMENT.
  void CheckBadTarget(Backend& b) {
    ASSERT_GE(rows_, 2);
    absl::StatusOr<Buffer> tg =
        b.Upload(std::vector<int32_t>{3, static_cast<int32_t>(vocab_)});
    ASSERT_TRUE(tg.ok()) << tg.status();
    absl::StatusOr<Buffer> tl = b.Alloc(2 * 4);
    ASSERT_TRUE(tl.ok()) << tl.status();
    LogSoftmaxArgs a;
    a.logits = x_.full();
    a.ld = vocab_;
    a.rows = 2;
    a.vocab = vocab_;
    a.targets = tg->as<int32_t>();
    a.target_logprobs = tl->as<float>();
    EXPECT_EQ(LogSoftmax(a, b.context()).code(),
              absl::StatusCode::kInvalidArgument)
        << "target == vocab accepted";
  }

  int64_t rows_, vocab_;
  bool check_bad_target_;
  RowInput<float> x_;
  RowInput<int32_t> targets_;
};

}  // namespace

std::vector<CaseEntry> SoftmaxCases() {
  std::vector<CaseEntry> cases;
  // softmax_cuda_test: 40 rows in [-8, 8), seed = vocab.
  for (int64_t vocab : {151936, 1000, 13}) {
    cases.push_back(
        {"log_softmax", absl::StrCat("rows=40,vocab=", vocab), false, [vocab] {
           return std::make_unique<LogSoftmaxCase>(40, vocab, vocab, -8.0f,
                                                   8.0f, false);
         }});
  }
  // BadTargetIsInvalidArgument: 2 rows of 10 in [-1, 1), seed 1.
  cases.push_back({"log_softmax", "rows=2,vocab=10,bad_target", false, [] {
                     return std::make_unique<LogSoftmaxCase>(2, 10, 1, -1.0f,
                                                             1.0f, true);
                   }});
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
