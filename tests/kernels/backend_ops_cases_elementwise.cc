// Op cases of the row-wise kernels: SiluMul, RoundRowsToBF16, AddInPlace
// (kernels/activation.h), Embedding, RmsNorm and ApplyRope.
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;
using ::lockstep::testing::RandomInts;

// SiluMul over gate/up [rows, n]: out = silu(gate) * up.
class SiluMulCase : public OpCase {
 public:
  SiluMulCase(int64_t rows, int64_t n)
      : rows_(rows),
        n_(n),
        gate_(RandomFloats(rows * n, 1, -6.0f, 6.0f), n),
        up_(RandomFloats(rows * n, 2), n) {}

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_RETURN_IF_ERROR(gate_.Upload(b));
    return up_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sg, su;
    LOCKSTEP_ASSIGN_OR_RETURN(const float* g, gate_.Rows(b, batch, &sg));
    LOCKSTEP_ASSIGN_OR_RETURN(const float* u, up_.Rows(b, batch, &su));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(m * n_ * 4));
    LOCKSTEP_RETURN_IF_ERROR(
        SiluMul(Args(g, u, out.as<float>(), m), b.context()));
    return DownloadOutput(b, out.as<float>(), OutType::kF32, m, n_);
  }
  std::vector<double> Reference() const override {
    std::vector<double> ref(rows_ * n_);
    for (int64_t i = 0; i < rows_ * n_; ++i) {
      const double g = gate_.host()[i];
      ref[i] = g / (1.0 + std::exp(-g)) * up_.host()[i];
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return 1e-5; }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(rows_);
    for (Batch& a : Alone({5}, /*view=*/true)) b.push_back(std::move(a));
    return b;
  }
  CpuContract cpu_contract() const override {
    return CpuContract::kWithinTolerance;  // expf differs
  }
  void CheckProperties(Backend& b, const Output& full) override {
    // out may alias gate: same bits.
    Batch all{"in place", {}, false};
    for (int64_t r = 0; r < rows_; ++r) all.rows.push_back(r);
    Buffer sg;
    absl::StatusOr<float*> g = gate_.FreshRows(b, all, &sg);
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_TRUE(SiluMul(Args(*g, up_.full(), *g, rows_), b.context()).ok());
    absl::StatusOr<std::vector<float>> got = b.Download(*g, rows_ * n_);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Bytes(*got), full.bytes) << "out aliasing gate changed the bits";
  }

 private:
  SiluMulArgs Args(const float* g, const float* u, float* out,
                   int64_t m) const {
    SiluMulArgs a;
    a.gate = g;
    a.up = u;
    a.ld_in = n_;
    a.out = out;
    a.ld_out = n_;
    a.rows = m;
    a.n = n_;
    return a;
  }

  int64_t rows_, n_;
  RowInput<float> gate_, up_;
};

// RoundRowsToBF16 of x [rows, n], in place.
class RoundBf16Case : public OpCase {
 public:
  RoundBf16Case(int64_t rows, int64_t n)
      : rows_(rows), n_(n), x_(RandomFloats(rows * n, 1, -6.0f, 6.0f), n) {}

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override { return x_.Upload(b); }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(float* x, x_.FreshRows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_RETURN_IF_ERROR(RoundRowsToBF16(x, n_, m, n_, b.context()));
    return DownloadOutput(b, x, OutType::kF32, m, n_);
  }
  std::vector<double> Reference() const override {
    return std::vector<double>(x_.host().begin(), x_.host().end());
  }
  // Round to nearest bf16 (8 significant bits): relative error <= 2^-8.
  double Tolerance(const Backend&) const override {
    return std::ldexp(1.0, -8);
  }
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    return Bytes(RoundedBf16(x_.host()));
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

 private:
  int64_t rows_, n_;
  RowInput<float> x_;
};

// AddInPlace: y [rows, n] += x [rows, n].
class AddInPlaceCase : public OpCase {
 public:
  AddInPlaceCase(int64_t rows, int64_t n)
      : rows_(rows),
        n_(n),
        y_(RandomFloats(rows * n, 1, -6.0f, 6.0f), n),
        x_(RandomFloats(rows * n, 2), n) {}

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_RETURN_IF_ERROR(y_.Upload(b));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sy, sx;
    LOCKSTEP_ASSIGN_OR_RETURN(float* y, y_.FreshRows(b, batch, &sy));
    LOCKSTEP_ASSIGN_OR_RETURN(const float* x, x_.Rows(b, batch, &sx));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_RETURN_IF_ERROR(AddInPlace(y, n_, x, n_, m, n_, b.context()));
    return DownloadOutput(b, y, OutType::kF32, m, n_);
  }
  std::vector<double> Reference() const override {
    std::vector<double> ref(rows_ * n_);
    for (int64_t i = 0; i < rows_ * n_; ++i) {
      ref[i] = double{y_.host()[i]} + x_.host()[i];
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return 1e-7; }
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    std::vector<float> want(rows_ * n_);
    for (int64_t i = 0; i < rows_ * n_; ++i)
      want[i] = y_.host()[i] + x_.host()[i];
    return Bytes(want);
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

 private:
  int64_t rows_, n_;
  RowInput<float> y_, x_;
};

// Embedding gather of `tokens` ids from a [vocab, dim] table of `dtype`.
class EmbeddingCase : public OpCase {
 public:
  EmbeddingCase(int64_t vocab, int64_t dim, int64_t tokens, DType dtype)
      : vocab_(vocab),
        dim_(dim),
        tokens_(tokens),
        dtype_(dtype),
        table_(RoundedBf16(RandomFloats(vocab * dim, 1))),
        ids_(RandomInts(tokens, 2, 0, static_cast<int32_t>(vocab - 1)), 1) {}

  int64_t rows() const override { return tokens_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(table_dev_, b.Upload(StoreAs(table_, dtype_)));
    return ids_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const int32_t* ids, ids_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(m * dim_ * 4));
    LOCKSTEP_RETURN_IF_ERROR(
        Embedding(Args(ids, m, out.as<float>()), b.context()));
    return DownloadOutput(b, out.as<float>(), OutType::kF32, m, dim_);
  }
  std::vector<double> Reference() const override {
    std::vector<double> ref(tokens_ * dim_);
    for (int64_t t = 0; t < tokens_; ++t) {
      for (int64_t j = 0; j < dim_; ++j) {
        ref[t * dim_ + j] = table_[ids_.host()[t] * dim_ + j];
      }
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return 0.0; }
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    return Bytes(GatherRows(
        table_, dim_,
        std::vector<int64_t>(ids_.host().begin(), ids_.host().end())));
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }
  void CheckProperties(Backend& b, const Output&) override {
    absl::StatusOr<Buffer> bad =
        b.Upload(std::vector<int32_t>{1, static_cast<int32_t>(vocab_)});
    ASSERT_TRUE(bad.ok()) << bad.status();
    absl::StatusOr<Buffer> out = b.Alloc(2 * dim_ * 4);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(
        Embedding(Args(bad->as<int32_t>(), 2, out->as<float>()), b.context())
            .code(),
        absl::StatusCode::kInvalidArgument)
        << "id == vocab accepted";
  }

 private:
  EmbeddingArgs Args(const int32_t* ids, int64_t m, float* out) const {
    EmbeddingArgs a;
    a.table = table_dev_.data();
    a.table_dtype = dtype_;
    a.ld_table = dim_;
    a.vocab = vocab_;
    a.ids = ids;
    a.out = out;
    a.ld_out = dim_;
    a.tokens = m;
    a.dim = dim_;
    return a;
  }

  int64_t vocab_, dim_, tokens_;
  DType dtype_;
  std::vector<float> table_;  // bf16-exact values
  Buffer table_dev_;
  RowInput<int32_t> ids_;
};

// RmsNorm of x [rows, n] with weight [n] of `wdtype`, eps 1e-6.
class RmsNormCase : public OpCase {
 public:
  RmsNormCase(int64_t rows, int64_t n, DType wdtype)
      : rows_(rows),
        n_(n),
        wdtype_(wdtype),
        x_(RandomFloats(rows * n, n, -3.0f, 3.0f), n),
        w_(RandomFloats(n, n + 1, 0.5f, 1.5f)) {
    if (wdtype == DType::kBF16) w_ = RoundedBf16(w_);
  }

  int64_t rows() const override { return rows_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(w_dev_, b.Upload(StoreAs(w_, wdtype_)));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const float* x, x_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(m * n_ * 4));
    LOCKSTEP_RETURN_IF_ERROR(RmsNorm(Args(x, y.as<float>(), m), b.context()));
    return DownloadOutput(b, y.as<float>(), OutType::kF32, m, n_);
  }
  std::vector<double> Reference() const override {
    const std::vector<float>& x = x_.host();
    std::vector<double> ref(rows_ * n_);
    for (int64_t r = 0; r < rows_; ++r) {
      double ss = 0;
      for (int64_t j = 0; j < n_; ++j)
        ss += double{x[r * n_ + j]} * x[r * n_ + j];
      const double inv = 1.0 / std::sqrt(ss / n_ + 1e-6);
      for (int64_t j = 0; j < n_; ++j)
        ref[r * n_ + j] = x[r * n_ + j] * inv * w_[j];
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return 1e-5; }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(rows_);
    for (int64_t m : {1, 2, 3, 100}) {
      for (int64_t r0 : {int64_t{0}, rows_ - m}) b.push_back(Slice(r0, m));
    }
    return b;
  }
  CpuContract cpu_contract() const override {
    return CpuContract::kWithinTolerance;  // the CUDA row sum is a tree
  }
  void CheckProperties(Backend& b, const Output& full) override {
    // In place (y == x) gives the same bits.
    Batch all{"in place", {}, false};
    for (int64_t r = 0; r < rows_; ++r) all.rows.push_back(r);
    Buffer s;
    absl::StatusOr<float*> x = x_.FreshRows(b, all, &s);
    ASSERT_TRUE(x.ok()) << x.status();
    ASSERT_TRUE(RmsNorm(Args(*x, *x, rows_), b.context()).ok());
    absl::StatusOr<std::vector<float>> got = b.Download(*x, rows_ * n_);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Bytes(*got), full.bytes) << "in place (y == x) changed the bits";
  }

 private:
  RmsNormArgs Args(const float* x, float* y, int64_t m) const {
    RmsNormArgs a;
    a.x = x;
    a.ldx = n_;
    a.weight = w_dev_.data();
    a.weight_dtype = wdtype_;
    a.y = y;
    a.ldy = n_;
    a.rows = m;
    a.n = n_;
    a.eps = 1e-6f;
    return a;
  }

  int64_t rows_, n_;
  DType wdtype_;
  RowInput<float> x_;
  std::vector<float> w_;
  Buffer w_dev_;
};

// ApplyRope in place on x [tokens, heads, head_dim], positions
// (t * 37) % 5000, inverse frequencies 1e6^(-2i/rot).
class RopeCase : public OpCase {
 public:
  RopeCase(int64_t tokens, int64_t heads, int64_t head_dim, int64_t rotary_dim)
      : tokens_(tokens),
        heads_(heads),
        hd_(head_dim),
        rot_(rotary_dim),
        x_(RandomFloats(tokens * heads * head_dim, 4), heads * head_dim) {
    std::vector<int32_t> pos(tokens);
    for (int64_t t = 0; t < tokens; ++t)
      pos[t] = static_cast<int32_t>((t * 37) % 5000);
    pos_ = RowInput<int32_t>(pos, 1);
    const int64_t r = RotDim();
    freq_.resize(r / 2);
    for (int64_t i = 0; i < r / 2; ++i)
      freq_[i] = std::pow(1000000.0, -2.0 * i / r);
  }

  int64_t rows() const override { return tokens_; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(freq_dev_, b.Upload(freq_));
    LOCKSTEP_RETURN_IF_ERROR(pos_.Upload(b));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer sx, sp;
    LOCKSTEP_ASSIGN_OR_RETURN(float* x, x_.FreshRows(b, batch, &sx));
    LOCKSTEP_ASSIGN_OR_RETURN(const int32_t* pos, pos_.Rows(b, batch, &sp));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    RopeArgs a;
    a.x = x;
    a.ldx = heads_ * hd_;
    a.positions = pos;
    a.tokens = m;
    a.heads = heads_;
    a.head_dim = hd_;
    a.rotary_dim = rot_;
    a.inv_freq = freq_dev_.as<double>();
    LOCKSTEP_RETURN_IF_ERROR(ApplyRope(a, b.context()));
    return DownloadOutput(b, x, OutType::kF32, m, heads_ * hd_);
  }
  std::vector<double> Reference() const override {
    const std::vector<float>& x = x_.host();
    const int64_t r = RotDim(), half = r / 2;
    std::vector<double> ref(x.begin(), x.end());
    for (int64_t t = 0; t < tokens_; ++t) {
      for (int64_t h = 0; h < heads_; ++h) {
        for (int64_t i = 0; i < half; ++i) {
          const double ang = pos_.host()[t] * std::pow(1000000.0, -2.0 * i / r);
          const int64_t o = (t * heads_ + h) * hd_;
          const double a = x[o + i], bb = x[o + i + half];
          ref[o + i] = a * std::cos(ang) - bb * std::sin(ang);
          ref[o + i + half] = bb * std::cos(ang) + a * std::sin(ang);
        }
      }
    }
    return ref;
  }
  double Tolerance(const Backend&) const override { return 1e-5; }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(tokens_);
    for (Batch& a : Alone({0, 17, 299}, /*view=*/false))
      b.push_back(std::move(a));
    return b;
  }
  CpuContract cpu_contract() const override {
    return CpuContract::kWithinTolerance;  // double sin/cos of two libms
  }

 private:
  int64_t RotDim() const { return rot_ == 0 ? hd_ : rot_; }

  int64_t tokens_, heads_, hd_, rot_;
  RowInput<float> x_;
  RowInput<int32_t> pos_;
  std::vector<double> freq_;
  Buffer freq_dev_;
};

std::string DName(DType d) { return std::string(DTypeName(d)); }

}  // namespace

std::vector<CaseEntry> ElementwiseCases() {
  std::vector<CaseEntry> cases;
  // activation_cuda_test: rows 37, n 1000.
  cases.push_back({"silu_mul", "rows=37,n=1000", false,
                   [] { return std::make_unique<SiluMulCase>(37, 1000); }});
  cases.push_back({"round_rows_to_bf16", "rows=37,n=1000", false,
                   [] { return std::make_unique<RoundBf16Case>(37, 1000); }});
  cases.push_back({"add_in_place", "rows=37,n=1000", false,
                   [] { return std::make_unique<AddInPlaceCase>(37, 1000); }});
  // embedding_cuda_test.
  for (DType dt : {DType::kF32, DType::kBF16}) {
    cases.push_back(
        {"embedding",
         absl::StrCat("vocab=500,dim=96,tokens=33,table=", DName(dt)), false,
         [dt] { return std::make_unique<EmbeddingCase>(500, 96, 33, dt); }});
  }
  // rms_norm_cuda_test: rows 257.
  for (int64_t n : {4096, 2048, 1000, 13}) {
    for (DType wd : {DType::kF32, DType::kBF16}) {
      cases.push_back(
          {"rms_norm", absl::StrCat("rows=257,n=", n, ",w=", DName(wd)), false,
           [n, wd] { return std::make_unique<RmsNormCase>(257, n, wd); }});
    }
  }
  // rope_cuda_test: 300 tokens, 4 heads of 128, full and partial rotation.
  for (int64_t rot : {0, 64}) {
    cases.push_back(
        {"rope", absl::StrCat("tokens=300,heads=4,head_dim=128,rot=", rot),
         false,
         [rot] { return std::make_unique<RopeCase>(300, 4, 128, rot); }});
  }
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
