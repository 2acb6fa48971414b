// Op cases of the fused kernels (kernels/fused.h): AddRmsNorm, HeadNormRope,
// SiluMulRound. Besides accuracy and batch invariance, each case proves in
// CheckProperties that the fused kernel's bits are those of the chain of
// single kernels it replaces (AddInPlace, RoundRowsToBF16, RmsNorm,
// ApplyRope, SiluMul) on the same backend.
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/fused.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;

// float64 bf16 rounding (bf16 values are exact in float and double).
double Rd(double v, bool round) { return round ? RoundToBF16(static_cast<float>(v)) : v; }

// Relative bound of the float64 comparison: the chain rounds to bf16 about
// four times per element when `round` (each <= 2^-9 relative), fp32 else.
double FusedTolerance(bool round) { return round ? 1.5e-2 : 2e-5; }

std::vector<float> ToF32(const Output& o) {
  std::vector<double> v = o.Values();
  return std::vector<float>(v.begin(), v.end());
}

// AddRmsNorm over h, delta [rows, n]: outputs [rows, 2n]: h' then y (y as
// f32 values; y_dtype bf16 is read back and widened).
class AddRmsNormCase : public OpCase {
 public:
  AddRmsNormCase(int64_t rows, int64_t n, DType wdtype, DType ydtype, bool round, bool delta)
      : rows_(rows), n_(n), wdtype_(wdtype), ydtype_(ydtype), round_(round), has_delta_(delta),
        h_(RoundedBf16(RandomFloats(rows * n, 31, -3.0f, 3.0f)), n),
        d_(RandomFloats(rows * n, 32, -2.0f, 2.0f), n),
        w_(RandomFloats(n, 33, 0.5f, 1.5f)) {
    if (wdtype == DType::kBF16) w_ = RoundedBf16(w_);
  }

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(w_dev_, b.Upload(StoreAs(w_, wdtype_)));
    LOCKSTEP_RETURN_IF_ERROR(h_.Upload(b));
    return d_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sh, sd;
    LOCKSTEP_ASSIGN_OR_RETURN(float* h, h_.FreshRows(b, batch, &sh));
    LOCKSTEP_ASSIGN_OR_RETURN(const float* d, d_.Rows(b, batch, &sd));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(m * n_ * DTypeSize(ydtype_)));
    LOCKSTEP_RETURN_IF_ERROR(
        AddRmsNorm(Args(h, has_delta_ ? d : nullptr, y.data(), m), b.context()));
    return Pack(b, h, y.data(), m);
  }
  std::vector<double> Reference() const override {
    std::vector<double> ref(rows_ * 2 * n_);
    for (int64_t r = 0; r < rows_; ++r) {
      std::vector<double> s(n_);
      double ss = 0;
      for (int64_t j = 0; j < n_; ++j) {
        const int64_t i = r * n_ + j;
        s[j] = has_delta_ ? Rd(double{h_.host()[i]} + Rd(d_.host()[i], round_), round_)
                          : double{h_.host()[i]};
        ss += s[j] * s[j];
      }
      const double inv = 1.0 / std::sqrt(ss / n_ + 1e-6);
      for (int64_t j = 0; j < n_; ++j) {
        ref[r * 2 * n_ + j] = s[j];
        ref[r * 2 * n_ + n_ + j] = s[j] * inv * w_[j];
      }
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return FusedTolerance(round_); }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(rows_);
    for (int64_t m : {1, 2, 3, 64}) {
      for (int64_t r0 : {int64_t{0}, rows_ - m}) b.push_back(Slice(r0, m));
    }
    return b;
  }
  CpuContract cpu_contract() const override { return CpuContract::kWithinTolerance; }
  void CheckProperties(Backend& b, const Output& full) override {
    // The chain: h += R(delta) (AddInPlace after rounding a copy of delta),
    // R(h), RmsNorm, R(y): the same bits.
    Batch all{"chain", {}, false};
    for (int64_t r = 0; r < rows_; ++r) all.rows.push_back(r);
    Buffer sh, sd, sy;
    absl::StatusOr<float*> h = h_.FreshRows(b, all, &sh);
    ASSERT_TRUE(h.ok()) << h.status();
    const ExecContext ctx = b.context();
    if (has_delta_) {
      absl::StatusOr<float*> d = d_.FreshRows(b, all, &sd);
      ASSERT_TRUE(d.ok()) << d.status();
      if (round_) ASSERT_TRUE(RoundRowsToBF16(*d, n_, rows_, n_, ctx).ok());
      ASSERT_TRUE(AddInPlace(*h, n_, *d, n_, rows_, n_, ctx).ok());
      if (round_) ASSERT_TRUE(RoundRowsToBF16(*h, n_, rows_, n_, ctx).ok());
    }
    absl::StatusOr<Buffer> y = b.Alloc(rows_ * n_ * 4);
    ASSERT_TRUE(y.ok()) << y.status();
    RmsNormArgs a;
    a.x = *h;
    a.ldx = n_;
    a.weight = w_dev_.data();
    a.weight_dtype = wdtype_;
    a.y = y->as<float>();
    a.ldy = n_;
    a.rows = rows_;
    a.n = n_;
    a.eps = 1e-6f;
    ASSERT_TRUE(RmsNorm(a, ctx).ok());
    if (round_) ASSERT_TRUE(RoundRowsToBF16(y->as<float>(), n_, rows_, n_, ctx).ok());
    absl::StatusOr<std::vector<float>> hh = b.Download(*h, rows_ * n_);
    absl::StatusOr<std::vector<float>> yy = b.Download(y->as<float>(), rows_ * n_);
    ASSERT_TRUE(hh.ok() && yy.ok());
    const std::vector<float> got = ToF32(full);
    for (int64_t r = 0; r < rows_; ++r) {
      ASSERT_EQ(0, std::memcmp(&got[r * 2 * n_], &(*hh)[r * n_], n_ * 4)) << "h, row " << r;
      ASSERT_EQ(0, std::memcmp(&got[r * 2 * n_ + n_], &(*yy)[r * n_], n_ * 4)) << "y, row " << r;
    }
    // Bad arguments.
    EXPECT_EQ(AddRmsNorm(Args(*h, nullptr, *h, rows_), ctx).code(),
              absl::StatusCode::kInvalidArgument)
        << "y aliasing h accepted";
  }

 private:
  AddRmsNormArgs Args(float* h, const float* d, void* y, int64_t m) const {
    AddRmsNormArgs a;
    a.h = h;
    a.ldh = n_;
    a.delta = d;
    a.ld_delta = n_;
    a.weight = w_dev_.data();
    a.weight_dtype = wdtype_;
    a.y = y;
    a.y_dtype = ydtype_;
    a.ldy = n_;
    a.rows = m;
    a.n = n_;
    a.eps = 1e-6f;
    a.round_bf16 = round_;
    return a;
  }
  absl::StatusOr<Output> Pack(Backend& b, const float* h, const void* y, int64_t m) {
    LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> hh, b.Download(h, m * n_));
    std::vector<float> yy(m * n_);
    if (ydtype_ == DType::kBF16) {
      LOCKSTEP_ASSIGN_OR_RETURN(std::vector<uint16_t> yb,
                                b.Download(static_cast<const uint16_t*>(y), m * n_));
      for (int64_t i = 0; i < m * n_; ++i) yy[i] = BF16ToF32(yb[i]);
    } else {
      LOCKSTEP_ASSIGN_OR_RETURN(yy, b.Download(static_cast<const float*>(y), m * n_));
    }
    std::vector<float> out(m * 2 * n_);
    for (int64_t r = 0; r < m; ++r) {
      std::memcpy(&out[r * 2 * n_], &hh[r * n_], n_ * 4);
      std::memcpy(&out[r * 2 * n_ + n_], &yy[r * n_], n_ * 4);
    }
    return MakeOutput(OutType::kF32, m, 2 * n_, out);
  }

  int64_t rows_, n_;
  DType wdtype_, ydtype_;
  bool round_, has_delta_;
  RowInput<float> h_, d_;
  std::vector<float> w_;
  Buffer w_dev_;
};

// HeadNormRope in place on x [tokens, heads, head_dim], positions
// (t * 37) % 5000, inverse frequencies 1e6^(-2i/d).
class HeadNormRopeCase : public OpCase {
 public:
  HeadNormRopeCase(int64_t tokens, int64_t heads, int64_t head_dim, bool norm, DType wdtype,
                   bool round)
      : tokens_(tokens), heads_(heads), hd_(head_dim), norm_(norm), wdtype_(wdtype),
        round_(round), x_(RandomFloats(tokens * heads * head_dim, 41, -4.0f, 4.0f),
                          heads * head_dim),
        w_(RandomFloats(head_dim, 42, 0.5f, 1.5f)) {
    if (wdtype == DType::kBF16) w_ = RoundedBf16(w_);
    std::vector<int32_t> pos(tokens);
    for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>((t * 37) % 5000);
    pos_ = RowInput<int32_t>(pos, 1);
    freq_.resize(hd_ / 2);
    for (int64_t i = 0; i < hd_ / 2; ++i) freq_[i] = std::pow(1000000.0, -2.0 * i / hd_);
  }

  int64_t rows() const override { return tokens_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(freq_dev_, b.Upload(freq_));
    LOCKSTEP_ASSIGN_OR_RETURN(w_dev_, b.Upload(StoreAs(w_, wdtype_)));
    LOCKSTEP_RETURN_IF_ERROR(pos_.Upload(b));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sx, sp;
    LOCKSTEP_ASSIGN_OR_RETURN(float* x, x_.FreshRows(b, batch, &sx));
    LOCKSTEP_ASSIGN_OR_RETURN(const int32_t* pos, pos_.Rows(b, batch, &sp));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_RETURN_IF_ERROR(HeadNormRope(Args(x, pos, m), b.context()));
    return DownloadOutput(b, x, OutType::kF32, m, heads_ * hd_);
  }
  std::vector<double> Reference() const override {
    const int64_t half = hd_ / 2;
    std::vector<double> ref(tokens_ * heads_ * hd_);
    for (int64_t t = 0; t < tokens_; ++t) {
      for (int64_t h = 0; h < heads_; ++h) {
        const int64_t o = (t * heads_ + h) * hd_;
        std::vector<double> v(hd_);
        double ss = 0;
        for (int64_t j = 0; j < hd_; ++j) {
          v[j] = Rd(x_.host()[o + j], round_);
          ss += v[j] * v[j];
        }
        if (norm_) {
          const double inv = 1.0 / std::sqrt(ss / hd_ + 1e-6);
          for (int64_t j = 0; j < hd_; ++j) v[j] = v[j] * inv * w_[j];
        }
        for (int64_t i = 0; i < half; ++i) {
          const double ang = pos_.host()[t] * freq_[i];
          ref[o + i] = v[i] * std::cos(ang) - v[i + half] * std::sin(ang);
          ref[o + i + half] = v[i + half] * std::cos(ang) + v[i] * std::sin(ang);
        }
      }
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return FusedTolerance(round_); }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(tokens_);
    for (Batch& a : Alone({0, 17, tokens_ - 1}, /*view=*/false)) b.push_back(std::move(a));
    b.push_back(Slice(0, 64 < tokens_ ? 64 : tokens_));
    return b;
  }
  CpuContract cpu_contract() const override { return CpuContract::kWithinTolerance; }
  void CheckProperties(Backend& b, const Output& full) override {
    // The chain: R(x), RmsNorm over rows of head_dim, R, ApplyRope, R.
    Batch all{"chain", {}, false};
    for (int64_t r = 0; r < tokens_; ++r) all.rows.push_back(r);
    Buffer sx;
    absl::StatusOr<float*> x = x_.FreshRows(b, all, &sx);
    ASSERT_TRUE(x.ok()) << x.status();
    const ExecContext ctx = b.context();
    const int64_t width = heads_ * hd_;
    if (round_) ASSERT_TRUE(RoundRowsToBF16(*x, width, tokens_, width, ctx).ok());
    if (norm_) {
      RmsNormArgs a;
      a.x = *x;
      a.ldx = hd_;
      a.weight = w_dev_.data();
      a.weight_dtype = wdtype_;
      a.y = *x;
      a.ldy = hd_;
      a.rows = tokens_ * heads_;
      a.n = hd_;
      a.eps = 1e-6f;
      ASSERT_TRUE(RmsNorm(a, ctx).ok());
      if (round_) ASSERT_TRUE(RoundRowsToBF16(*x, width, tokens_, width, ctx).ok());
    }
    RopeArgs r;
    r.x = *x;
    r.ldx = width;
    r.positions = pos_.full();
    r.tokens = tokens_;
    r.heads = heads_;
    r.head_dim = hd_;
    r.rotary_dim = hd_;
    r.inv_freq = freq_dev_.as<double>();
    ASSERT_TRUE(ApplyRope(r, ctx).ok());
    if (round_) ASSERT_TRUE(RoundRowsToBF16(*x, width, tokens_, width, ctx).ok());
    absl::StatusOr<std::vector<float>> got = b.Download(*x, tokens_ * width);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Bytes(*got), full.bytes) << "fused != chain of single kernels";
  }

 private:
  HeadNormRopeArgs Args(float* x, const int32_t* pos, int64_t m) const {
    HeadNormRopeArgs a;
    a.x = x;
    a.ldx = heads_ * hd_;
    a.positions = pos;
    a.tokens = m;
    a.heads = heads_;
    a.head_dim = hd_;
    a.norm_weight = norm_ ? w_dev_.data() : nullptr;
    a.norm_dtype = wdtype_;
    a.eps = 1e-6f;
    a.inv_freq = freq_dev_.as<double>();
    a.round_bf16 = round_;
    return a;
  }

  int64_t tokens_, heads_, hd_;
  bool norm_;
  DType wdtype_;
  bool round_;
  RowInput<float> x_;
  std::vector<float> w_;
  RowInput<int32_t> pos_;
  std::vector<double> freq_;
  Buffer freq_dev_, w_dev_;
};

// SiluMulRound over gate/up [rows, n] (the two halves of one [rows, 2n]
// buffer, as a fused gate/up GEMM would leave them).
class SiluMulRoundCase : public OpCase {
 public:
  SiluMulRoundCase(int64_t rows, int64_t n, DType odtype, bool round)
      : rows_(rows), n_(n), odtype_(odtype), round_(round),
        gu_(RandomFloats(rows * 2 * n, 51, -6.0f, 6.0f), 2 * n) {}

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override { return gu_.Upload(b); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const float* gu, gu_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(m * n_ * DTypeSize(odtype_)));
    LOCKSTEP_RETURN_IF_ERROR(SiluMulRound(Args(gu, out.data(), m), b.context()));
    if (odtype_ == DType::kBF16) {
      LOCKSTEP_ASSIGN_OR_RETURN(std::vector<uint16_t> o,
                                b.Download(out.as<uint16_t>(), m * n_));
      std::vector<float> f(m * n_);
      for (int64_t i = 0; i < m * n_; ++i) f[i] = BF16ToF32(o[i]);
      return MakeOutput(OutType::kF32, m, n_, f);
    }
    return DownloadOutput(b, out.as<float>(), OutType::kF32, m, n_);
  }
  std::vector<double> Reference() const override {
    std::vector<double> ref(rows_ * n_);
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t j = 0; j < n_; ++j) {
        const double g = Rd(gu_.host()[r * 2 * n_ + j], round_);
        const double u = Rd(gu_.host()[r * 2 * n_ + n_ + j], round_);
        ref[r * n_ + j] = g / (1.0 + std::exp(-g)) * u;
      }
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return FusedTolerance(round_); }
  CpuContract cpu_contract() const override { return CpuContract::kWithinTolerance; }
  void CheckProperties(Backend& b, const Output& full) override {
    // The chain: R(gate), R(up), SiluMul, R.
    Batch all{"chain", {}, false};
    for (int64_t r = 0; r < rows_; ++r) all.rows.push_back(r);
    Buffer s;
    absl::StatusOr<float*> gu = gu_.FreshRows(b, all, &s);
    ASSERT_TRUE(gu.ok()) << gu.status();
    const ExecContext ctx = b.context();
    if (round_) ASSERT_TRUE(RoundRowsToBF16(*gu, 2 * n_, rows_, 2 * n_, ctx).ok());
    absl::StatusOr<Buffer> out = b.Alloc(rows_ * n_ * 4);
    ASSERT_TRUE(out.ok());
    SiluMulArgs a;
    a.gate = *gu;
    a.up = *gu + n_;
    a.ld_in = 2 * n_;
    a.out = out->as<float>();
    a.ld_out = n_;
    a.rows = rows_;
    a.n = n_;
    ASSERT_TRUE(SiluMul(a, ctx).ok());
    if (round_) ASSERT_TRUE(RoundRowsToBF16(out->as<float>(), n_, rows_, n_, ctx).ok());
    absl::StatusOr<std::vector<float>> got = b.Download(out->as<float>(), rows_ * n_);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Bytes(*got), full.bytes) << "fused != chain of single kernels";
  }

 private:
  SiluMulRoundArgs Args(const float* gu, void* out, int64_t m) const {
    SiluMulRoundArgs a;
    a.gate = gu;
    a.ld_gate = 2 * n_;
    a.up = gu + n_;
    a.ld_up = 2 * n_;
    a.out = out;
    a.out_dtype = odtype_;
    a.ld_out = n_;
    a.rows = m;
    a.n = n_;
    a.round_bf16 = round_;
    return a;
  }

  int64_t rows_, n_;
  DType odtype_;
  bool round_;
  RowInput<float> gu_;
};

std::string DName(DType d) { return std::string(DTypeName(d)); }

}  // namespace

std::vector<CaseEntry> FusedCases() {
  std::vector<CaseEntry> cases;
  for (int64_t n : {2048, 1000, 13}) {
    for (DType wd : {DType::kF32, DType::kBF16}) {
      for (bool round : {true, false}) {
        for (bool delta : {true, false}) {
          const DType yd = round && wd == DType::kBF16 ? DType::kBF16 : DType::kF32;
          cases.push_back(
              {"add_rms_norm",
               absl::StrCat("rows=130,n=", n, ",w=", DName(wd), ",y=", DName(yd),
                            ",round=", round, ",delta=", delta),
               false, [n, wd, yd, round, delta] {
                 return std::make_unique<AddRmsNormCase>(130, n, wd, yd, round, delta);
               }});
        }
      }
    }
  }
  for (int64_t hd : {128, 64}) {
    for (bool norm : {true, false}) {
      for (bool round : {true, false}) {
        const DType wd = round ? DType::kBF16 : DType::kF32;
        cases.push_back(
            {"head_norm_rope",
             absl::StrCat("tokens=100,heads=3,head_dim=", hd, ",norm=", norm, ",w=", DName(wd),
                          ",round=", round),
             false, [hd, norm, wd, round] {
               return std::make_unique<HeadNormRopeCase>(100, 3, hd, norm, wd, round);
             }});
      }
    }
  }
  for (DType od : {DType::kF32, DType::kBF16}) {
    for (bool round : {true, false}) {
      if (od == DType::kBF16 && !round) continue;
      cases.push_back({"silu_mul_round",
                       absl::StrCat("rows=37,n=1000,out=", DName(od), ",round=", round), false,
                       [od, round] {
                         return std::make_unique<SiluMulRoundCase>(37, 1000, od, round);
                       }});
    }
  }
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
