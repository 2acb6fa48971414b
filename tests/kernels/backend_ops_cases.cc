#include "tests/kernels/backend_ops_cases.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"

namespace lockstep::kernels::backend_ops {

std::vector<double> Output::Values() const {
  const int64_t n = rows * row_elems;
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) {
    if (type == OutType::kF32) {
      float f;
      std::memcpy(&f, bytes.data() + 4 * i, 4);
      v[i] = f;
    } else if (type == OutType::kBF16) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      v[i] = BF16ToF32(h);
    } else {
      int32_t k;
      std::memcpy(&k, bytes.data() + 4 * i, 4);
      v[i] = k;
    }
  }
  return v;
}

std::vector<Batch> Alone(const std::vector<int64_t>& rows, bool view) {
  std::vector<Batch> out;
  for (int64_t r : rows) {
    out.push_back({absl::StrCat("row ", r, view ? " alone (view)" : " alone"),
                   {r},
                   view});
  }
  return out;
}

Batch Slice(int64_t begin, int64_t count) {
  Batch b{
      absl::StrCat("rows [", begin, ", ", begin + count, ") (view)"), {}, true};
  for (int64_t i = 0; i < count; ++i) b.rows.push_back(begin + i);
  return b;
}

std::vector<Batch> DefaultBatchings(int64_t rows) {
  std::vector<Batch> out;
  if (rows <= 0) return out;
  const std::set<int64_t> picks = {0, rows / 2, rows - 1};
  const std::vector<int64_t> alone(picks.begin(), picks.end());
  for (bool view : {true, false}) {
    for (Batch& b : Alone(alone, view)) out.push_back(std::move(b));
  }
  out.push_back(Slice(0, std::min<int64_t>(3, rows)));
  out.push_back(
      Slice(rows - std::min<int64_t>(2, rows), std::min<int64_t>(2, rows)));
  if (rows > 1) {
    Batch rev{"all rows reversed, row 0 repeated", {}, false};
    for (int64_t r = rows - 1; r >= 0; --r) rev.rows.push_back(r);
    rev.rows.push_back(0);
    out.push_back(std::move(rev));
  }
  return out;
}

absl::StatusOr<Output> OpCase::RunFull(Backend& backend) {
  Batch all{"full problem", {}, true};
  for (int64_t r = 0; r < rows(); ++r) all.rows.push_back(r);
  return Run(backend, all);
}

absl::StatusOr<Output> OpCase::RunGemmConfig(Backend& backend, int config) {
  return absl::UnimplementedError("not a GEMM case");
}

std::string CaseEntry::Name() const {
  std::string name = op;
  std::string v = vars;
  if (!v.empty()) name += "_";
  for (char c : v) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      name += c;
    } else if (c == ',' || c == '_') {
      name += '_';
    }
    // '=' and other punctuation vanish: "m=37" -> "m37".
  }
  return name;
}

const std::vector<CaseEntry>& AllCases() {
  static const std::vector<CaseEntry>* cases = [] {
    auto* all = new std::vector<CaseEntry>();
    for (auto family : {ElementwiseCases, SoftmaxCases, SamplingCases,
                        MatmulCases, AttentionCases, FusedCases, RouterCases}) {
      for (CaseEntry& e : family()) all->push_back(std::move(e));
    }
    return all;
  }();
  return *cases;
}

double RelErr(const std::vector<double>& ref, const std::vector<double>& a) {
  if (ref.size() != a.size()) return NAN;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}

std::vector<float> RoundedBf16(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = RoundToBF16(v[i]);
  return out;
}

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = F32ToBF16(v[i]);
  return out;
}

std::vector<uint8_t> StoreAs(const std::vector<float>& v, DType dtype) {
  return dtype == DType::kF32 ? Bytes(v) : Bytes(ToBf16(v));
}

}  // namespace lockstep::kernels::backend_ops
