// The op cases of the kernel backend test harness (backend_ops_test.cc): a
// table of kernel calls (op, shapes, dtypes, parameters), each of which the
// harness runs on every available backend and checks for
//   (a) accuracy against a float64 reference, and the bits the op's contract
//       fixes where it fixes them (e.g. the fp32 matmul's fma chain);
//   (b) bitwise batch invariance: each batch of Batchings() (a row alone,
//       slices at offsets, rows gathered in another order, among unrelated
//       rows) gives every row the bits it has in the full problem; likewise
//       every execution mode and GEMM configuration of the backend;
//   (c) the CPU backend's contract: bitwise equal to the CPU, or within the
//       two backends' float64 bounds of each other (CpuContract);
// plus the case's own properties (error codes, TP-degree invariance, ...).
//
// The case classes live in backend_ops_cases_<family>.cc, each family
// exporting its table; AllCases() joins them.
#ifndef LOCKSTEP_TESTS_KERNELS_BACKEND_OPS_CASES_H_
#define LOCKSTEP_TESTS_KERNELS_BACKEND_OPS_CASES_H_

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "tests/kernels/backend_ops_backend.h"

namespace lockstep::kernels::backend_ops {

// How the elements of an Output are read.
enum class OutType { kF32, kBF16, kI32 };

// One result of a case, row-major: `rows` rows of `row_elems` elements.
struct Output {
  OutType type = OutType::kF32;
  int64_t rows = 0;
  int64_t row_elems = 0;
  std::vector<uint8_t> bytes;  // [rows * row_bytes()]

  int64_t elem_bytes() const { return type == OutType::kBF16 ? 2 : 4; }
  int64_t row_bytes() const { return row_elems * elem_bytes(); }
  const uint8_t* row(int64_t i) const { return bytes.data() + i * row_bytes(); }
  // Every element widened to double (bf16 exactly).
  std::vector<double> Values() const;
};

// An Output of `rows` rows of `row_elems` elements holding `values`' bytes.
template <typename T>
Output MakeOutput(OutType type, int64_t rows, int64_t row_elems,
                  const std::vector<T>& values) {
  Output out;
  out.type = type;
  out.rows = rows;
  out.row_elems = row_elems;
  out.bytes.resize(values.size() * sizeof(T));
  if (!values.empty())
    std::memcpy(out.bytes.data(), values.data(), out.bytes.size());
  return out;
}

// The problem rows that make up one batch, in launch order. Entries >= 0 are
// rows of the case's full problem; Filler(f) entries are the case's f-th row
// of unrelated data (another sequence's query, ...), run but not checked.
struct Batch {
  std::string name;  // for failure messages
  std::vector<int64_t> rows;
  // true: rows are the contiguous range starting at rows[0], and the case
  // runs on its full input at that row offset, as a caller slicing a larger
  // buffer does; false: the rows are gathered into fresh buffers.
  bool view = false;
};

inline constexpr int64_t Filler(int64_t f) { return -1 - f; }
inline constexpr int64_t FillerIndex(int64_t entry) { return -1 - entry; }

// Batches of single rows `rows` (view or gathered).
std::vector<Batch> Alone(const std::vector<int64_t>& rows, bool view);
// The view of rows [begin, begin + count).
Batch Slice(int64_t begin, int64_t count);
// Batches every case gets unless it overrides Batchings(): first, middle and
// last row alone (view and gathered), slices at both ends, and all rows
// gathered in reverse order with the first row repeated at the end.
std::vector<Batch> DefaultBatchings(int64_t rows);

// What a non-CPU backend's full result must be relative to the CPU's.
enum class CpuContract {
  kNone,             // unrelated (e.g. sampled tokens: exp/log differ)
  kBitwise,          // the same bits
  kWithinTolerance,  // relative error <= Tolerance(this) + Tolerance(cpu),
                     // which (a) on both backends implies
};

class OpCase {
 public:
  virtual ~OpCase() = default;

  // Rows of the full problem: the dimension batches are made of.
  virtual int64_t rows() const = 0;
  // Copies the case's inputs to `backend`; called once, before any run.
  virtual absl::Status Prepare(Backend& backend) = 0;
  // Runs the op for one batch; one output row per batch entry.
  virtual absl::StatusOr<Output> Run(Backend& backend, const Batch& batch) = 0;
  // The full problem (all rows, in order; attention: full-sequence prefill).
  virtual absl::StatusOr<Output> RunFull(Backend& backend);

  // (a) float64 reference of Checked(full); empty: none.
  virtual std::vector<double> Reference() const { return {}; }
  // The values of `full` that Reference() describes (default: all).
  virtual std::vector<double> Checked(const Output& full) const {
    return full.Values();
  }
  // Bound on ||Checked - Reference|| / ||Reference|| on `backend`.
  virtual double Tolerance(const Backend& backend) const { return 0.0; }
  // Bits of the full output that the op's contract fixes on every backend.
  virtual std::optional<std::vector<uint8_t>> ExpectedBits() const {
    return std::nullopt;
  }
  // Unwritten outputs read as NaN (buffers are 0xFF-filled): a NaN fails
  // the case unless the op may produce one.
  virtual bool MayProduceNaN() const { return false; }

  // (b) The batches to compare with the full problem.
  virtual std::vector<Batch> Batchings() const {
    return DefaultBatchings(rows());
  }
  // A negative control (a "standard twin" that is NOT batch invariant): the
  // harness requires (b) to find a differing row, and checks nothing else.
  virtual bool BatchVariant() const { return false; }
  // Leaves of the GEMM whose internal configurations (Backend::GemmConfigs)
  // must all give the full problem's bits; 0: not a GEMM case.
  virtual int GemmLeaves() const { return 0; }
  // The full problem with GEMM configuration `config`.
  virtual absl::StatusOr<Output> RunGemmConfig(Backend& backend, int config);

  // (c)
  virtual CpuContract cpu_contract() const { return CpuContract::kNone; }

  // The case's own properties, as gtest assertions; `full` is RunFull's.
  virtual void CheckProperties(Backend& backend, const Output& full) {}
};

// One entry of the table.
struct CaseEntry {
  std::string op;    // "matmul", "rms_norm", ...
  std::string vars;  // shapes, dtypes, parameters: "m=37,n=1000,k=200,..."
  // Too slow for the CPU backend's run in `make test` (its shapes are
  // covered there by tests/kernels/<op>_test.cc): runs on the other
  // backends only, with the CPU computing their reference side of (c).
  bool heavy = false;
  std::function<std::unique_ptr<OpCase>()> make;

  // op and vars as a gtest name: "matmul_m37_n1000_k200_...".
  std::string Name() const;
};

// The whole table; names are unique.
const std::vector<CaseEntry>& AllCases();

// Families (backend_ops_cases_<family>.cc).
std::vector<CaseEntry>
ElementwiseCases();  // activation, embedding, rms_norm, rope
std::vector<CaseEntry> SoftmaxCases();
std::vector<CaseEntry> SamplingCases();
std::vector<CaseEntry> MatmulCases();  // matmul, tree matmul, tree combine
std::vector<CaseEntry> AttentionCases();
std::vector<CaseEntry> FusedCases();  // add_rms_norm, head_norm_rope, silu_mul_round
std::vector<CaseEntry> RouterCases();  // route_top_k (mixture of experts)

// Helpers shared by the families.

// ||a - ref|| / ||ref|| (||ref|| = 0 counts as 1; NaN if any NaN).
double RelErr(const std::vector<double>& ref, const std::vector<double>& a);
std::vector<float> RoundedBf16(const std::vector<float>& v);
std::vector<uint16_t> ToBf16(const std::vector<float>& v);
// `v` stored as `dtype` (f32 or bf16 bytes).
std::vector<uint8_t> StoreAs(const std::vector<float>& v, DType dtype);
// Rows `rows` (no fillers) of `src` [*, row_len], gathered.
template <typename T>
std::vector<T> GatherRows(const std::vector<T>& src, int64_t row_len,
                          const std::vector<int64_t>& rows) {
  std::vector<T> out(rows.size() * row_len);
  if (row_len == 0) return out;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(&out[i * row_len], &src[rows[i] * row_len],
                row_len * sizeof(T));
  }
  return out;
}
// A per-row input of a case: host rows [rows, row_len] and, after Upload,
// their copy on one backend.
template <typename T>
class RowInput {
 public:
  RowInput() = default;
  RowInput(std::vector<T> host, int64_t row_len)
      : host_(std::move(host)), row_len_(row_len) {}

  const std::vector<T>& host() const { return host_; }
  int64_t row_len() const { return row_len_; }
  const T* host_row(int64_t r) const { return host_.data() + r * row_len_; }
  // The uploaded full input (after Upload).
  T* full() const { return full_.template as<T>(); }

  absl::Status Upload(Backend& backend) {
    absl::StatusOr<Buffer> b = backend.Upload(host_);
    if (!b.ok()) return b.status();
    full_ = std::move(*b);
    return absl::OkStatus();
  }
  // The batch's rows, contiguous with stride row_len: for a view, a pointer
  // into the uploaded full input; else a fresh upload of the gathered rows,
  // owned by `scratch`. Fillers are not rows of this input.
  absl::StatusOr<T*> Rows(Backend& backend, const Batch& batch,
                          Buffer* scratch) const {
    if (absl::Status s = CheckRows(batch); !s.ok()) return s;
    if (batch.view) return full_.as<T>() + batch.rows.front() * row_len_;
    return UploadTo(backend, GatherRows(host_, row_len_, batch.rows), scratch);
  }
  // Like Rows, but always a fresh copy, for ops that write in place: the
  // whole input for a view (the pointer at the view's first row).
  absl::StatusOr<T*> FreshRows(Backend& backend, const Batch& batch,
                               Buffer* scratch) const {
    if (absl::Status s = CheckRows(batch); !s.ok()) return s;
    if (!batch.view) return Rows(backend, batch, scratch);
    absl::StatusOr<T*> p = UploadTo(backend, host_, scratch);
    if (!p.ok()) return p;
    return *p + batch.rows.front() * row_len_;
  }

 private:
  absl::Status CheckRows(const Batch& batch) const {
    // Rows of zero length (a k = 0 matmul's x) have no bound to check.
    const int64_t n = row_len_ > 0
                          ? static_cast<int64_t>(host_.size()) / row_len_
                          : std::numeric_limits<int64_t>::max();
    for (size_t i = 0; i < batch.rows.size(); ++i) {
      const int64_t r = batch.rows[i];
      if (r < 0 || r >= n ||
          (batch.view && r != batch.rows.front() + static_cast<int64_t>(i))) {
        return absl::InvalidArgumentError("batch row outside this input");
      }
    }
    return absl::OkStatus();
  }
  static absl::StatusOr<T*> UploadTo(Backend& backend, const std::vector<T>& v,
                                     Buffer* scratch) {
    absl::StatusOr<Buffer> b = backend.Upload(v);
    if (!b.ok()) return b.status();
    *scratch = std::move(*b);
    return scratch->as<T>();
  }

  std::vector<T> host_;
  int64_t row_len_ = 0;
  Buffer full_;
};

// Downloads [rows, row_elems] elements of T at `p` as an Output.
template <typename T>
absl::StatusOr<Output> DownloadOutput(Backend& backend, const T* p,
                                      OutType type, int64_t rows,
                                      int64_t row_elems) {
  absl::StatusOr<std::vector<T>> host = backend.Download(p, rows * row_elems);
  if (!host.ok()) return host.status();
  return MakeOutput(type, rows, row_elems, *host);
}

template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace lockstep::kernels::backend_ops

#endif  // LOCKSTEP_TESTS_KERNELS_BACKEND_OPS_CASES_H_
