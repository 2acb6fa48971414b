// Op cases of the mixture-of-experts router (kernels/router.h): RouteTopK
// with and without renormalisation, on random logits and on rows built to
// tie exactly at the top-k boundary.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/router.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;

// RouteTopK of logits [rows, experts] uniform in [-4, 4) from `seed`, except:
// row 1 all equal (every expert ties: ids must be 0..k-1), row 2 with the
// k-th and (k+1)-th largest logits equal (the lower id must win the last
// place), row 4 bf16-rounded (router logits of a bf16 model, where ties are
// common). Each output row is [w (k), ids as floats (k), p (experts)].
class RouteTopKCase : public OpCase {
 public:
  RouteTopKCase(int64_t rows, int64_t experts, int64_t k, bool normalize, uint64_t seed)
      : rows_(rows), experts_(experts), k_(k), normalize_(normalize) {
    std::vector<float> x = RandomFloats(rows * experts, seed, -4.0f, 4.0f);
    float* r1 = &x[1 * experts];
    std::fill(r1, r1 + experts, 0.5f);
    if (rows > 2 && k < experts) {
      float* r2 = &x[2 * experts];
      // Experts 0..k-2 on top, then two equal logits at ids e_hi > e_lo.
      for (int64_t j = 0; j < experts; ++j) r2[j] = -1.0f - 0.001f * j;
      for (int64_t j = 0; j + 1 < k; ++j) r2[j] = 3.0f - 0.01f * j;
      tie_lo_ = k;
      tie_hi_ = experts - 1;
      r2[tie_hi_] = 1.0f;
      r2[tie_lo_] = 1.0f;
    }
    if (rows > 4) {
      float* r4 = &x[4 * experts];
      const std::vector<float> b = RoundedBf16(std::vector<float>(r4, r4 + experts));
      std::copy(b.begin(), b.end(), r4);
    }
    x_ = RowInput<float>(std::move(x), experts);
  }

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override { return x_.Upload(b); }

  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sx;
    LOCKSTEP_ASSIGN_OR_RETURN(const float* x, x_.Rows(b, batch, &sx));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer w, b.Alloc(m * k_ * 4));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer ids, b.Alloc(m * k_ * 4));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer p, b.Alloc(m * experts_ * 4));
    RouteTopKArgs a;
    a.logits = x;
    a.ld = experts_;
    a.rows = m;
    a.experts = experts_;
    a.k = k_;
    a.normalize = normalize_;
    a.weights = w.as<float>();
    a.ids = ids.as<int32_t>();
    a.probs = p.as<float>();
    LOCKSTEP_RETURN_IF_ERROR(RouteTopK(a, b.context()));
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> hw, b.Download(w.as<float>(), m * k_));
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<int32_t> hi, b.Download(ids.as<int32_t>(), m * k_));
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> hp, b.Download(p.as<float>(), m * experts_));
    const int64_t width = 2 * k_ + experts_;
    std::vector<float> rows(m * width);
    for (int64_t r = 0; r < m; ++r) {
      float* o = &rows[r * width];
      for (int64_t j = 0; j < k_; ++j) {
        o[j] = hw[r * k_ + j];
        o[k_ + j] = static_cast<float>(hi[r * k_ + j]);
      }
      std::memcpy(o + 2 * k_, &hp[r * experts_], experts_ * 4);
    }
    return MakeOutput(OutType::kF32, m, width, rows);
  }

  // (a) on the probabilities and the weights, from float64 softmax of the
  // same logits at the kernel's ids.
  std::vector<double> Reference() const override {
    std::vector<double> ref;
    for (int64_t r = 0; r < rows_; ++r) {
      const std::vector<double> p = Probs(r);
      ref.insert(ref.end(), p.begin(), p.end());
    }
    return ref;
  }
  std::vector<double> Checked(const Output& full) const override {
    std::vector<double> v;
    for (int64_t r = 0; r < rows_; ++r) {
      const float* o = reinterpret_cast<const float*>(full.row(r));
      for (int64_t j = 0; j < experts_; ++j) v.push_back(o[2 * k_ + j]);
    }
    return v;
  }
  double Tolerance(const Backend&) const override { return 1e-6; }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

  void CheckProperties(Backend& b, const Output& full) override {
    for (int64_t r = 0; r < rows_; ++r) {
      const float* o = reinterpret_cast<const float*>(full.row(r));
      const float* p = o + 2 * k_;
      std::vector<int64_t> ids(k_);
      for (int64_t j = 0; j < k_; ++j) ids[j] = static_cast<int64_t>(o[k_ + j]);
      // The kernel's own probabilities, ranked (p descending, lower id
      // first), give exactly its ids.
      std::vector<int64_t> order(experts_);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t c) { return p[a] > p[c]; });
      for (int64_t j = 0; j < k_; ++j) {
        EXPECT_EQ(ids[j], order[j]) << "row " << r << " rank " << j;
      }
      // The weights: the chosen probabilities, renormalised in rank order.
      float s = p[ids[0]];
      for (int64_t j = 1; j < k_; ++j) s = s + p[ids[j]];
      for (int64_t j = 0; j < k_; ++j) {
        const float want = normalize_ ? p[ids[j]] / s : p[ids[j]];
        EXPECT_EQ(o[j], want) << "row " << r << " weight " << j;
      }
      // The float64 ranking agrees except within rounding of a tie.
      const std::vector<double> exact = Probs(r);
      for (int64_t j = 0; j < k_; ++j) {
        for (int64_t e = 0; e < experts_; ++e) {
          if (std::find(ids.begin(), ids.end(), e) != ids.end()) continue;
          EXPECT_GE(exact[ids[j]], exact[e] * (1 - 1e-6))
              << "row " << r << ": unchosen expert " << e << " beats chosen " << ids[j];
        }
      }
    }
    if (rows_ > 1) {  // every expert ties: the lowest ids, in order
      const float* o = reinterpret_cast<const float*>(full.row(1));
      for (int64_t j = 0; j < k_; ++j) EXPECT_EQ(o[k_ + j], static_cast<float>(j));
    }
    if (tie_lo_ >= 0) {  // the boundary tie goes to the lower id
      const float* o = reinterpret_cast<const float*>(full.row(2));
      EXPECT_EQ(o[2 * k_ - 1], static_cast<float>(tie_lo_)) << "boundary tie";
    }
    // Bad arguments: INVALID_ARGUMENT, nothing launched.
    RouteTopKArgs a;
    a.logits = x_.full();
    a.ld = experts_;
    a.rows = 1;
    a.experts = experts_;
    a.k = experts_ + 1;
    absl::StatusOr<Buffer> w = b.Alloc(4 * (experts_ + 1));
    absl::StatusOr<Buffer> ids = b.Alloc(4 * (experts_ + 1));
    ASSERT_TRUE(w.ok() && ids.ok());
    a.weights = w->as<float>();
    a.ids = ids->as<int32_t>();
    EXPECT_EQ(RouteTopK(a, b.context()).code(), absl::StatusCode::kInvalidArgument);
    a.k = 0;
    EXPECT_EQ(RouteTopK(a, b.context()).code(), absl::StatusCode::kInvalidArgument);
    a.k = 1;
    a.ld = experts_ - 1;
    EXPECT_EQ(RouteTopK(a, b.context()).code(), absl::StatusCode::kInvalidArgument);
  }

 private:
  std::vector<double> Probs(int64_t r) const {
    const float* x = x_.host_row(r);
    double m = -1e300, z = 0;
    for (int64_t j = 0; j < experts_; ++j) m = std::max(m, double{x[j]});
    std::vector<double> p(experts_);
    for (int64_t j = 0; j < experts_; ++j) z += std::exp(double{x[j]} - m);
    for (int64_t j = 0; j < experts_; ++j) p[j] = std::exp(double{x[j]} - m) / z;
    return p;
  }

  int64_t rows_, experts_, k_;
  bool normalize_;
  int64_t tie_lo_ = -1, tie_hi_ = -1;
  RowInput<float> x_;
};

}  // namespace

std::vector<CaseEntry> RouterCases() {
  std::vector<CaseEntry> cases;
  // Qwen3-30B-A3B (128 experts, top 8, renormalised), a tiny model's shape,
  // top-1 and no renormalisation (Qwen3-MoE's default).
  struct Shape {
    int64_t rows, experts, k;
    bool normalize;
  };
  for (const Shape s : {Shape{37, 128, 8, true}, Shape{20, 8, 2, true}, Shape{9, 64, 1, false},
                        Shape{16, 128, 8, false}}) {
    cases.push_back({"route_top_k",
                     absl::StrCat("rows=", s.rows, ",experts=", s.experts, ",k=", s.k,
                                  ",normalize=", s.normalize ? 1 : 0),
                     false, [s] {
                       return std::make_unique<RouteTopKCase>(s.rows, s.experts, s.k,
                                                              s.normalize, 1000 + s.experts);
                     }});
  }
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
