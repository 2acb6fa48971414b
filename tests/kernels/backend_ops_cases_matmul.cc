// Op cases of the matmul family: Matmul (kernels/matmul.h), the TP-tree
// TreeMatmulPartial + TreeCombine (kernels/tree_reduce.h), and a split-K
// "standard twin" that the batch-invariance check must catch.
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/matmul.h"
#include "kernels/tree_reduce.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;

std::string DName(DType d) { return std::string(DTypeName(d)); }

// x [m, k] · w [n, k]ᵀ in float64.
std::vector<double> RefMatmul(const std::vector<float>& x,
                              const std::vector<float>& w, int64_t m, int64_t n,
                              int64_t k) {
  std::vector<double> y(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t c = 0; c < k; ++c)
        acc += double{x[i * k + c]} * w[j * k + c];
      y[i * n + j] = acc;
    }
  }
  return y;
}

// Values of `count` floats from `seed`, bf16-exact when `dtype` is bf16.
std::vector<float> Values(int64_t count, uint64_t seed, DType dtype) {
  std::vector<float> v = RandomFloats(count, seed);
  return dtype == DType::kBF16 ? RoundedBf16(v) : v;
}

absl::StatusOr<Output> DownloadY(Backend& b, const Buffer& y, DType dtype,
                                 int64_t m, int64_t n) {
  if (dtype == DType::kF32)
    return DownloadOutput(b, y.as<float>(), OutType::kF32, m, n);
  return DownloadOutput(b, y.as<uint16_t>(), OutType::kBF16, m, n);
}

struct MatmulSpec {
  int64_t m = 0, n = 0, k = 0;
  DType x = DType::kBF16, w = DType::kBF16, y = DType::kF32;
  uint64_t x_seed = 0, w_seed = 0;
  bool reference = true;         // (a) against float64
  bool fma_chain = false;        // the contract's fma chain gives the bits
  std::vector<int64_t> alone;    // rows run alone (views), besides defaults
  bool every_row_alone = false;  // every row alone (views)
  std::vector<int64_t> random_batches;  // sizes of batches of random rows
  uint64_t batch_seed = 0;              // ... drawn with mt19937_64(batch_seed)
  bool gemm_configs = false;            // every GEMM configuration: same bits
};

// y [m, n] = x [m, k] · w [n, k]ᵀ.
class MatmulCase : public OpCase {
 public:
  explicit MatmulCase(const MatmulSpec& s)
      : s_(s),
        xv_(Values(s.m * s.k, s.x_seed, s.x)),
        wv_(Values(s.n * s.k, s.w_seed, s.w)),
        x_(StoreAs(xv_, s.x), s.k * DTypeSize(s.x)) {}

  int64_t rows() const override { return s_.m; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(w_, b.Upload(StoreAs(wv_, s_.w)));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const uint8_t* x, x_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(m * s_.n * DTypeSize(s_.y)));
    LOCKSTEP_RETURN_IF_ERROR(Matmul(Args(x, m, y.data()), b.context()));
    return DownloadY(b, y, s_.y, m, s_.n);
  }
  std::vector<double> Reference() const override {
    if (!s_.reference) return {};
    return RefMatmul(xv_, wv_, s_.m, s_.n, s_.k);
  }
  // bf16 inputs run on tensor cores off the CPU (their k16 sums are not a
  // chain of fmas); a bf16 output is rounded.
  double Tolerance(const Backend& b) const override {
    if (s_.y == DType::kBF16) return 1e-2;
    if (s_.x == DType::kBF16 && s_.w == DType::kBF16 && b.name() != "cpu")
      return 1e-2;
    return 1e-5;
  }
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    if (!s_.fma_chain) return std::nullopt;
    std::vector<float> y(s_.m * s_.n);
    for (int64_t i = 0; i < s_.m; ++i) {
      for (int64_t j = 0; j < s_.n; ++j) {
        float acc = 0.0f;
        for (int64_t c = 0; c < s_.k; ++c) {
          acc = std::fma(xv_[i * s_.k + c], wv_[j * s_.k + c], acc);
        }
        y[i * s_.n + j] = acc;
      }
    }
    return StoreAs(y, s_.y);
  }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(s_.m);
    std::vector<int64_t> alone = s_.alone;
    if (s_.every_row_alone) {
      alone.clear();
      for (int64_t r = 0; r < s_.m; ++r) alone.push_back(r);
    }
    for (Batch& a : Alone(alone, /*view=*/true)) b.push_back(std::move(a));
    // Random rows of the pool, repeats allowed, at random positions.
    std::mt19937_64 rng(s_.batch_seed);
    for (int64_t size : s_.random_batches) {
      Batch r{absl::StrCat("M=", size, " random rows"),
              std::vector<int64_t>(size), false};
      for (int64_t& row : r.rows) row = static_cast<int64_t>(rng() % s_.m);
      b.push_back(std::move(r));
    }
    return b;
  }
  int GemmLeaves() const override { return s_.gemm_configs ? 1 : 0; }
  absl::StatusOr<Output> RunGemmConfig(Backend& b, int config) override {
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(s_.m * s_.n * DTypeSize(s_.y)));
    LOCKSTEP_RETURN_IF_ERROR(b.LeafMatmulWithConfig(
        Args(x_.full(), s_.m, y.data()), 1, s_.k, config));
    return DownloadY(b, y, s_.y, s_.m, s_.n);
  }
  CpuContract cpu_contract() const override {
    // Any dtype mix but bf16 x bf16 runs the CPU's fma chain everywhere.
    return s_.x == DType::kBF16 && s_.w == DType::kBF16
               ? CpuContract::kWithinTolerance
               : CpuContract::kBitwise;
  }

 private:
  MatmulArgs Args(const void* x, int64_t m, void* y) const {
    MatmulArgs a;
    a.x = x;
    a.x_dtype = s_.x;
    a.ldx = s_.k;
    a.w = w_.data();
    a.w_dtype = s_.w;
    a.ldw = s_.k;
    a.y = y;
    a.y_dtype = s_.y;
    a.ldy = s_.n;
    a.m = m;
    a.n = s_.n;
    a.k = s_.k;
    return a;
  }

  MatmulSpec s_;
  std::vector<float> xv_, wv_;  // the stored values
  RowInput<uint8_t> x_;         // rows of x in its dtype
  Buffer w_;
};

// The "standard" GEMM of a library that, like cuBLAS, switches to split-K
// for small M (here: two K halves, summed in fp32) for bf16 x [256, 2048],
// w [512, 2048]: NOT batch invariant, and the harness must see it.
class SplitKTwinCase : public OpCase {
 public:
  SplitKTwinCase()
      : x_(StoreAs(Values(kM * kK, 41, DType::kBF16), DType::kBF16), kK * 2),
        wv_(Values(kN * kK, 42, DType::kBF16)) {}

  int64_t rows() const override { return kM; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(w_, b.Upload(StoreAs(wv_, DType::kBF16)));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const uint8_t* x, x_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y0, b.Alloc(m * kN * 4));
    if (m > 64) {
      LOCKSTEP_RETURN_IF_ERROR(
          Matmul(Args(x, w_.data(), kK, m, y0.data()), b.context()));
      return DownloadOutput(b, y0.as<float>(), OutType::kF32, m, kN);
    }
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y1, b.Alloc(m * kN * 4));
    for (int half = 0; half < 2; ++half) {
      const int64_t off = half * (kK / 2) * 2;  // bytes
      LOCKSTEP_RETURN_IF_ERROR(
          Matmul(Args(x + off, w_.as<uint8_t>() + off, kK / 2, m,
                      (half == 0 ? y0 : y1).data()),
                 b.context()));
    }
    LOCKSTEP_RETURN_IF_ERROR(
        AddInPlace(y0.as<float>(), kN, y1.as<float>(), kN, m, kN, b.context()));
    return DownloadOutput(b, y0.as<float>(), OutType::kF32, m, kN);
  }
  std::vector<Batch> Batchings() const override {
    std::vector<int64_t> all;
    for (int64_t r = 0; r < kM; ++r) all.push_back(r);
    return Alone(all, /*view=*/true);
  }
  bool BatchVariant() const override { return true; }

 private:
  static MatmulArgs Args(const void* x, const void* w, int64_t k, int64_t m,
                         void* y) {
    MatmulArgs a;
    a.x = x;
    a.x_dtype = DType::kBF16;
    a.ldx = kK;
    a.w = w;
    a.w_dtype = DType::kBF16;
    a.ldw = kK;
    a.y = y;
    a.ldy = kN;
    a.m = m;
    a.n = kN;
    a.k = k;
    return a;
  }

  static constexpr int64_t kM = 256, kN = 512, kK = 2048;
  RowInput<uint8_t> x_;
  std::vector<float> wv_;
  Buffer w_;
};

struct TreeSpec {
  int64_t m = 0, n = 0, leaf = 0;  // k_total = 8 * leaf
  DType dtype = DType::kBF16;      // of x and w
  uint64_t x_seed = 0, w_seed = 0;
  bool reference = true;
  std::vector<int64_t> alone;     // rows run alone (views), besides defaults
  std::vector<int64_t> prefixes;  // slices [0, p) (views)
  bool gemm_configs = false;      // every 8-leaf GEMM configuration
};

// The TP-tree matmul y [m, n] = x [m, 8 * leaf] · wᵀ: TreeMatmulPartial of
// each rank's column slice, then TreeCombine (simulating TP = t on one
// device); the full problem and every batch are TP = 1.
class TreeMatmulCase : public OpCase {
 public:
  explicit TreeMatmulCase(const TreeSpec& s)
      : s_(s),
        k_(8 * s.leaf),
        xv_(RoundedBf16(RandomFloats(s.m * k_, s.x_seed))),
        wv_(RoundedBf16(RandomFloats(s.n * k_, s.w_seed))),
        x_(StoreAs(xv_, s.dtype), k_ * DTypeSize(s.dtype)) {}

  int64_t rows() const override { return s_.m; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(w_, b.Upload(StoreAs(wv_, s_.dtype)));
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const uint8_t* x, x_.Rows(b, batch, &s));
    return RunTp(b, x, static_cast<int64_t>(batch.rows.size()), 1);
  }
  std::vector<double> Reference() const override {
    if (!s_.reference) return {};
    return RefMatmul(xv_, wv_, s_.m, s_.n, k_);
  }
  double Tolerance(const Backend& b) const override {
    return s_.dtype == DType::kF32 || b.name() == "cpu" ? 1e-5 : 1e-2;
  }
  std::vector<Batch> Batchings() const override {
    std::vector<Batch> b = DefaultBatchings(s_.m);
    for (Batch& a : Alone(s_.alone, /*view=*/true)) b.push_back(std::move(a));
    for (int64_t p : s_.prefixes) b.push_back(Slice(0, p));
    return b;
  }
  int GemmLeaves() const override { return s_.gemm_configs ? kTreeLeaves : 0; }
  absl::StatusOr<Output> RunGemmConfig(Backend& b, int config) override {
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(s_.m * s_.n * 4));
    MatmulArgs a = Base(x_.full(), w_.as<uint8_t>(), k_, s_.m, y.data());
    LOCKSTEP_RETURN_IF_ERROR(
        b.LeafMatmulWithConfig(a, kTreeLeaves, s_.leaf, config));
    return DownloadOutput(b, y.as<float>(), OutType::kF32, s_.m, s_.n);
  }
  CpuContract cpu_contract() const override {
    // fp32 leaves are fma chains everywhere; bf16 ones tensor-core sums.
    return s_.dtype == DType::kF32 ? CpuContract::kBitwise
                                   : CpuContract::kWithinTolerance;
  }
  // TP = 2, 4, 8: the TP = 1 bits.
  void CheckProperties(Backend& b, const Output& full) override {
    for (int t : {2, 4, 8}) {
      absl::StatusOr<Output> y = RunTp(b, x_.full(), s_.m, t);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_EQ(y->bytes, full.bytes) << "TP=" << t << " differs from TP=1";
    }
  }

 private:
  MatmulArgs Base(const uint8_t* x, const uint8_t* w, int64_t k, int64_t m,
                  void* y) const {
    MatmulArgs a;
    a.x = x;
    a.x_dtype = s_.dtype;
    a.ldx = k_;
    a.w = w;
    a.w_dtype = s_.dtype;
    a.ldw = k_;
    a.y = y;
    a.y_dtype = DType::kF32;
    a.ldy = s_.n;
    a.m = m;
    a.n = s_.n;
    a.k = k;
    return a;
  }

  // Rank r of t takes its column slice of x [m, k] and w, computes its
  // subtree into partials[r]; TreeCombine applies the top levels in rank
  // order.
  absl::StatusOr<Output> RunTp(Backend& b, const uint8_t* x, int64_t m, int t) {
    const int64_t es = DTypeSize(s_.dtype);
    const int64_t k_local = k_ / t;
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer partials, b.Alloc(t * m * s_.n * 4));
    for (int r = 0; r < t; ++r) {
      TreeMatmulArgs a;
      a.base = Base(x + r * k_local * es, w_.as<uint8_t>() + r * k_local * es,
                    k_local, m, partials.as<float>() + r * m * s_.n);
      a.k_total = k_;
      a.leaf_count = kTreeLeaves / t;
      a.leaf_begin = r * a.leaf_count;
      LOCKSTEP_RETURN_IF_ERROR(TreeMatmulPartial(a, b.context()));
    }
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(m * s_.n * 4));
    TreeCombineArgs c;
    c.partials = partials.as<float>();
    c.t = t;
    c.y = y.data();
    c.y_dtype = DType::kF32;
    c.ldy = s_.n;
    c.m = m;
    c.n = s_.n;
    LOCKSTEP_RETURN_IF_ERROR(TreeCombine(c, b.context()));
    return DownloadOutput(b, y.as<float>(), OutType::kF32, m, s_.n);
  }

  TreeSpec s_;
  int64_t k_;
  std::vector<float> xv_, wv_;
  RowInput<uint8_t> x_;
  Buffer w_;
};

// TreeCombine of t gathered partials [t, m, n] (seed 9) into y of `ydtype`:
// the documented top levels, t = 1 a copy.
class TreeCombineCase : public OpCase {
 public:
  TreeCombineCase(int t, DType ydtype, int64_t m, int64_t n)
      : t_(t), ydtype_(ydtype), m_(m), n_(n), p_(RandomFloats(t * m * n, 9)) {}

  int64_t rows() const override { return m_; }
  absl::Status Prepare(Backend&) override { return absl::OkStatus(); }
  // The [t, m, n] layout has no row stride of its own: every batch, views
  // included, gathers its rows' partials.
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    std::vector<float> p(t_ * m * n_);
    for (int r = 0; r < t_; ++r) {
      for (int64_t i = 0; i < m; ++i) {
        std::memcpy(&p[(r * m + i) * n_], &p_[(r * m_ + batch.rows[i]) * n_],
                    n_ * 4);
      }
    }
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer dp, b.Upload(p));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(m * n_ * DTypeSize(ydtype_)));
    TreeCombineArgs a;
    a.partials = dp.as<float>();
    a.t = t_;
    a.y = y.data();
    a.y_dtype = ydtype_;
    a.ldy = n_;
    a.m = m;
    a.n = n_;
    LOCKSTEP_RETURN_IF_ERROR(TreeCombine(a, b.context()));
    return DownloadY(b, y, ydtype_, m, n_);
  }
  std::vector<double> Reference() const override {
    std::vector<double> ref(m_ * n_, 0.0);
    for (int r = 0; r < t_; ++r) {
      for (int64_t i = 0; i < m_ * n_; ++i) ref[i] += p_[r * m_ * n_ + i];
    }
    return ref;
  }
  double Tolerance(const Backend&) const override {
    return ydtype_ == DType::kBF16 ? std::ldexp(1.0, -8) : 1e-6;
  }
  std::optional<std::vector<uint8_t>> ExpectedBits() const override {
    std::vector<float> y(m_ * n_);
    for (int64_t i = 0; i < m_ * n_; ++i) {
      float p[kTreeLeaves] = {};
      for (int r = 0; r < t_; ++r) p[r] = p_[r * m_ * n_ + i];
      switch (t_) {
        case 1:
          y[i] = p[0];
          break;
        case 2:
          y[i] = p[0] + p[1];
          break;
        case 4:
          y[i] = (p[0] + p[1]) + (p[2] + p[3]);
          break;
        default:
          y[i] = TreeSum8(p);
          break;
      }
    }
    return StoreAs(y, ydtype_);
  }
  CpuContract cpu_contract() const override { return CpuContract::kBitwise; }

 private:
  int t_;
  DType ydtype_;
  int64_t m_, n_;
  std::vector<float> p_;  // [t, m, n]
};

// Stacked projections (q/k/v and gate/up held as one weight: the inference
// model's Ops::StackedLinear). The full problem is ONE Matmul of x [m, k]
// with the stacked weight [n_0 + n_1 + ..., k]; its properties: for every
// prefix batch M of kStackedPrefixes, column block i of the stacked GEMM has
// the bits of the separate Matmul x · w_iᵀ with w_i in a buffer of its own
// (how the unfused forward holds it), under the backend's own tile choice
// (which depends on n, hence differs between the two) and under every GEMM
// configuration of the backend. The stacked GEMM itself also runs every
// configuration and batching (GemmLeaves, DefaultBatchings).
constexpr int64_t kStackedPrefixes[] = {1, 3, 16, 64, 200};

struct StackedSpec {
  int64_t m = 200, k = 0;
  std::vector<int64_t> splits;  // n_i
  DType x = DType::kBF16, w = DType::kBF16;
  uint64_t seed = 0;
};

class StackedMatmulCase : public OpCase {
 public:
  explicit StackedMatmulCase(const StackedSpec& s)
      : s_(s),
        n_(Total(s.splits)),
        xv_(Values(s.m * s.k, s.seed, s.x)),
        wv_(Values(n_ * s.k, s.seed + 1, s.w)),
        x_(StoreAs(xv_, s.x), s.k * DTypeSize(s.x)) {}

  int64_t rows() const override { return s_.m; }
  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(w_, b.Upload(StoreAs(wv_, s_.w)));
    int64_t row = 0;
    for (int64_t nb : s_.splits) {
      const std::vector<float> block(wv_.begin() + row * s_.k,
                                     wv_.begin() + (row + nb) * s_.k);
      LOCKSTEP_ASSIGN_OR_RETURN(Buffer buf, b.Upload(StoreAs(block, s_.w)));
      blocks_.push_back(std::move(buf));
      row += nb;
    }
    return x_.Upload(b);
  }
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    Buffer s;
    LOCKSTEP_ASSIGN_OR_RETURN(const uint8_t* x, x_.Rows(b, batch, &s));
    const int64_t m = static_cast<int64_t>(batch.rows.size());
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(m * n_ * 4));
    LOCKSTEP_RETURN_IF_ERROR(
        Matmul(Args(x, m, w_.data(), n_, y.data()), b.context()));
    return DownloadOutput(b, y.as<float>(), OutType::kF32, m, n_);
  }
  std::vector<double> Reference() const override {
    return RefMatmul(xv_, wv_, s_.m, n_, s_.k);
  }
  double Tolerance(const Backend& b) const override {
    return s_.x == DType::kBF16 && s_.w == DType::kBF16 && b.name() != "cpu"
               ? 1e-2
               : 1e-5;
  }
  int GemmLeaves() const override { return 1; }
  absl::StatusOr<Output> RunGemmConfig(Backend& b, int config) override {
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer y, b.Alloc(s_.m * n_ * 4));
    LOCKSTEP_RETURN_IF_ERROR(b.LeafMatmulWithConfig(
        Args(x_.full(), s_.m, w_.data(), n_, y.data()), 1, s_.k, config));
    return DownloadOutput(b, y.as<float>(), OutType::kF32, s_.m, n_);
  }
  CpuContract cpu_contract() const override {
    return s_.x == DType::kBF16 && s_.w == DType::kBF16
               ? CpuContract::kWithinTolerance
               : CpuContract::kBitwise;
  }
  void CheckProperties(Backend& b, const Output& full) override {
    const int configs = static_cast<int>(b.GemmConfigs(1).size());
    for (int64_t m : kStackedPrefixes) {
      if (m > s_.m) continue;
      SCOPED_TRACE(::testing::Message() << "M=" << m);
      // The stacked GEMM on the first m rows alone (a batch of m).
      absl::StatusOr<Output> stacked = Run(b, Slice(0, m));
      ASSERT_TRUE(stacked.ok()) << stacked.status();
      ASSERT_EQ(0, std::memcmp(stacked->bytes.data(), full.bytes.data(),
                               stacked->bytes.size()))
          << "the stacked GEMM's first rows depend on M";
      int64_t col = 0;
      for (size_t i = 0; i < s_.splits.size(); ++i) {
        const int64_t nb = s_.splits[i];
        // config -1: the backend's own choice for [m, nb].
        for (int config = -1; config < configs; ++config) {
          absl::StatusOr<Buffer> y = b.Alloc(m * nb * 4);
          ASSERT_TRUE(y.ok()) << y.status();
          const MatmulArgs a =
              Args(x_.full(), m, blocks_[i].data(), nb, y->data());
          const absl::Status st =
              config < 0 ? Matmul(a, b.context())
                         : b.LeafMatmulWithConfig(a, 1, s_.k, config);
          ASSERT_TRUE(st.ok()) << st;
          absl::StatusOr<std::vector<float>> sep = b.Download(y->as<float>(), m * nb);
          ASSERT_TRUE(sep.ok()) << sep.status();
          int64_t differing = 0;
          for (int64_t r = 0; r < m; ++r) {
            differing += std::memcmp(stacked->row(r) + col * 4,
                                     sep->data() + r * nb, nb * 4) != 0;
          }
          EXPECT_EQ(differing, 0)
              << "block " << i << " (n=" << nb << ", "
              << (config < 0 ? std::string("own choice")
                             : b.GemmConfigs(1)[config])
              << "): rows differing from the stacked GEMM's columns";
        }
        col += nb;
      }
    }
  }

 private:
  static int64_t Total(const std::vector<int64_t>& v) {
    int64_t t = 0;
    for (int64_t x : v) t += x;
    return t;
  }
  MatmulArgs Args(const void* x, int64_t m, const void* w, int64_t n,
                  void* y) const {
    MatmulArgs a;
    a.x = x;
    a.x_dtype = s_.x;
    a.ldx = s_.k;
    a.w = w;
    a.w_dtype = s_.w;
    a.ldw = s_.k;
    a.y = y;
    a.y_dtype = DType::kF32;
    a.ldy = n;
    a.m = m;
    a.n = n;
    a.k = s_.k;
    return a;
  }

  StackedSpec s_;
  int64_t n_;
  std::vector<float> xv_, wv_;  // stored values; wv_ is the stacked weight
  RowInput<uint8_t> x_;
  Buffer w_;                    // the stacked weight
  std::vector<Buffer> blocks_;  // the separate weights
};

void AddStacked(std::vector<CaseEntry>& cases, const StackedSpec& s,
                bool heavy, absl::string_view note) {
  std::string vars = absl::StrCat("m=", s.m, ",n=", absl::StrJoin(s.splits, "_"),
                                  ",k=", s.k, ",x=", DName(s.x), ",w=", DName(s.w),
                                  ",", note);
  cases.push_back({"stacked_matmul", vars, heavy,
                   [s] { return std::make_unique<StackedMatmulCase>(s); }});
}

void AddMatmul(std::vector<CaseEntry>& cases, const MatmulSpec& s, bool heavy,
               absl::string_view note = "") {
  std::string vars =
      absl::StrCat("m=", s.m, ",n=", s.n, ",k=", s.k, ",x=", DName(s.x),
                   ",w=", DName(s.w), ",y=", DName(s.y));
  if (!note.empty()) absl::StrAppend(&vars, ",", note);
  cases.push_back(
      {"matmul", vars, heavy, [s] { return std::make_unique<MatmulCase>(s); }});
}

void AddTree(std::vector<CaseEntry>& cases, const TreeSpec& s, bool heavy,
             absl::string_view note = "") {
  std::string vars = absl::StrCat("m=", s.m, ",n=", s.n, ",leaf=", s.leaf,
                                  ",dtype=", DName(s.dtype));
  if (!note.empty()) absl::StrAppend(&vars, ",", note);
  cases.push_back({"tree_matmul", vars, heavy,
                   [s] { return std::make_unique<TreeMatmulCase>(s); }});
}

}  // namespace

std::vector<CaseEntry> MatmulCases() {
  std::vector<CaseEntry> cases;
  // Bf16AccuracyAgainstFloat64: seeds 1 + m and 2 + n.
  struct Shape {
    int64_t m, n, k;
    bool heavy;
  };
  for (Shape c : {Shape{1, 256, 512, false}, Shape{37, 1000, 200, false},
                  Shape{300, 512, 1024, false}, Shape{5, 130, 100, false},
                  Shape{129, 4096, 4096, true}}) {
    for (DType yd : {DType::kF32, DType::kBF16}) {
      MatmulSpec s;
      s.m = c.m;
      s.n = c.n;
      s.k = c.k;
      s.y = yd;
      s.x_seed = 1 + c.m;
      s.w_seed = 2 + c.n;
      AddMatmul(cases, s, c.heavy);
    }
  }
  // AllTileConfigsGiveIdenticalBits: m 300, n 520, seeds 11 and 12.
  for (int64_t k : {704, 200, 4096}) {
    MatmulSpec s;
    s.m = 300;
    s.n = 520;
    s.k = k;
    s.x_seed = 11;
    s.w_seed = 12;
    s.gemm_configs = true;
    AddMatmul(cases, s, k == 4096, "configs");
  }
  // Bf16BatchInvariantForEveryMUpTo512: a pool of 512 rows, every pool row
  // alone, then random batches of every size M = 1..512.
  {
    MatmulSpec s;
    s.m = 512;
    s.n = 384;
    s.k = 512;
    s.x_seed = 100;
    s.w_seed = 101;
    s.reference = false;
    s.every_row_alone = true;
    for (int64_t m = 1; m <= 512; ++m) s.random_batches.push_back(m);
    s.batch_seed = 102;
    AddMatmul(cases, s, true, "every_m_to_512");
  }
  // Bf16BatchInvariantAcrossTileConfigs: layer-sized N and K, where the
  // tile configuration changes with M.
  {
    MatmulSpec s;
    s.m = 512;
    s.n = 4096;
    s.k = 4096;
    s.x_seed = 200;
    s.w_seed = 201;
    s.reference = false;
    s.every_row_alone = true;
    s.random_batches = {1, 3, 64, 65, 127, 129, 511, 1000, 2048};
    s.batch_seed = 202;
    AddMatmul(cases, s, true, "m_across_configs");
  }
  // F32PathIsTheFmaChainAndBatchInvariant: x f32, w f32 or bf16.
  for (DType wd : {DType::kF32, DType::kBF16}) {
    MatmulSpec s;
    s.m = 70;
    s.n = 130;
    s.k = 333;
    s.x = DType::kF32;
    s.w = wd;
    s.x_seed = 31;
    s.w_seed = 32;
    s.fma_chain = true;
    s.alone = {0, 5, 69};
    AddMatmul(cases, s, false);
  }
  // ZeroKGivesZeros: k = 0 writes zeros (the fma chain of nothing).
  {
    MatmulSpec s;
    s.m = 3;
    s.n = 5;
    s.k = 0;
    s.fma_chain = true;
    AddMatmul(cases, s, false);
  }
  // StandardTwinSplitKIsDetected: the twin differs for some row alone; the
  // invariant kernel on the same data agrees for every row alone.
  cases.push_back({"matmul_split_k_twin",
                   "m=256,n=512,k=2048,x=bf16,w=bf16,y=f32", false,
                   [] { return std::make_unique<SplitKTwinCase>(); }});
  {
    MatmulSpec s;
    s.m = 256;
    s.n = 512;
    s.k = 2048;
    s.x_seed = 41;
    s.w_seed = 42;
    s.every_row_alone = true;
    AddMatmul(cases, s, false, "twin_data");
  }

  // Stacked projections (Ops::StackedLinear), shapes of the Qwen3 family
  // scaled down and at size: q, k, v (GQA: k and v narrower than q) and
  // gate, up; blocks that are not multiples of any tile width (16..256) or
  // of the CPU's 32-column panel; k not a multiple of the 64-wide k-block,
  // and not of 8 (the CUDA path then repacks the operands); the fp32-model
  // mixes (fma chains everywhere).
  struct Stacked {
    std::vector<int64_t> splits;
    int64_t k;
    DType x, w;
    bool heavy;
    const char* note;
  };
  const DType kB = DType::kBF16, kF = DType::kF32;
  for (const Stacked& c :
       {Stacked{{256, 128, 128}, 256, kB, kB, false, "qkv"},
        Stacked{{512, 512}, 256, kB, kB, false, "gate_up"},
        Stacked{{96, 40, 40}, 200, kB, kB, false, "qkv_ragged"},
        Stacked{{200, 200}, 100, kB, kB, false, "gate_up_k100"},
        Stacked{{64, 32, 32}, 96, kF, kF, false, "qkv_f32"},
        Stacked{{64, 32, 32}, 96, kF, kB, false, "qkv_mixed"},
        Stacked{{2048, 1024, 1024}, 2048, kB, kB, true, "qkv_qwen3_1_7b"},
        Stacked{{6144, 6144}, 2048, kB, kB, true, "gate_up_qwen3_1_7b"},
        Stacked{{512, 256, 256}, 2048, kB, kB, true, "qkv_qwen3_1_7b_tp4"}}) {
    StackedSpec s;
    s.splits = c.splits;
    s.k = c.k;
    s.x = c.x;
    s.w = c.w;
    s.seed = 300 + c.k + c.splits[0];
    AddStacked(cases, s, c.heavy, c.note);
  }

  // tree_reduce_cuda_test IdenticalBitsForTp1248AndAccurate: leaf 64: whole
  // k-blocks; 96: a partial k-block per leaf; 20: not a multiple of 8
  // (repacked) and slices at unaligned addresses. Seeds 5 + m and 6 + n.
  struct Tree {
    int64_t m, n, leaf;
    DType dtype;
    bool heavy;
  };
  for (Tree c : {Tree{77, 264, 64, DType::kBF16, false},
                 Tree{300, 520, 96, DType::kBF16, false},
                 Tree{1, 136, 20, DType::kBF16, false},
                 Tree{513, 1024, 512, DType::kBF16, true},
                 Tree{33, 70, 24, DType::kF32, false}}) {
    TreeSpec s;
    s.m = c.m;
    s.n = c.n;
    s.leaf = c.leaf;
    s.dtype = c.dtype;
    s.x_seed = 5 + c.m;
    s.w_seed = 6 + c.n;
    AddTree(cases, s, c.heavy);
  }
  // TreeConfigsAndBatchInvariance: every 8-leaf configuration; rows 0, 7,
  // 299 alone; prefixes M = 1, 2, 65, 129, 257.
  {
    TreeSpec s;
    s.m = 300;
    s.n = 4096;
    s.leaf = 512;
    s.x_seed = 71;
    s.w_seed = 72;
    s.reference = false;
    s.alone = {0, 7, 299};
    s.prefixes = {1, 2, 65, 129, 257};
    s.gemm_configs = true;
    AddTree(cases, s, true, "configs");
  }
  // CombineT1IsACopyAndBf16OutputRounds (t = 8, bf16) and the other levels.
  for (int t : {1, 2, 4, 8}) {
    for (DType yd : {DType::kF32, DType::kBF16}) {
      cases.push_back(
          {"tree_combine", absl::StrCat("t=", t, ",m=3,n=7,y=", DName(yd)),
           false,
           [t, yd] { return std::make_unique<TreeCombineCase>(t, yd, 3, 7); }});
    }
  }
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
