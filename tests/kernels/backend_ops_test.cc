// The kernel backend test harness, in the manner of ggml's test-backend-ops:
// every op case of the table (backend_ops_cases.h) runs on every backend
// (backend_ops_backend.h) and is checked for
//   (a) accuracy against float64 within the case's tolerance, the bits the
//       op's contract fixes, and no NaN from unwritten outputs;
//   (b) bitwise batch invariance: every batch of the case's Batchings(), every
//       execution mode of the backend (CPU: SIMD levels, thread counts) and
//       every internal GEMM configuration (CUDA) gives each row the full
//       problem's bits; a negative control must FAIL this check;
//   (c) the CPU backend's contract (bitwise, or within both tolerances);
// and then the case's own properties.
//
// gtest names: Cpu/BackendOpsTest.Case/<case>, Cuda/BackendOpsTest.Case/<case>
// and <Backend>/BackendSelfTest.KeepsItsPromises/<backend>. CTest runs the
// binary twice (tests/kernels/CMakeLists.txt): kernels_backend_ops_test with
// --gtest_filter=Cpu/* and, in CUDA builds, kernels_backend_ops_cuda_test
// (label cuda) with --gtest_filter=Cuda/*, whose tests skip without a GPU.
// Heavy cases (CaseEntry::heavy) are not registered for the CPU.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/kernels/backend_ops_backend.h"
#include "tests/kernels/backend_ops_cases.h"

namespace lockstep::kernels::backend_ops {
namespace {

// How many differing rows one comparison reports before it only counts.
constexpr int kMaxReports = 5;

struct Param {
  std::string backend;
  const CaseEntry* entry;
};

void PrintTo(const Param& p, std::ostream* os) {
  *os << p.backend << "/" << p.entry->Name();
}

std::vector<Param> ParamsFor(const std::string& backend) {
  std::vector<Param> params;
  for (const CaseEntry& e : AllCases()) {
    if (backend == "cpu" && e.heavy) continue;
    params.push_back({backend, &e});
  }
  return params;
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return info.param.entry->Name();
}

// Element `j` of row `i` of `out` as text.
std::string Element(const Output& out, const uint8_t* row, int64_t j) {
  if (out.type == OutType::kBF16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * j, 2);
    return absl::StrCat(BF16ToF32(h), " (bf16 0x", absl::Hex(h), ")");
  }
  uint32_t u;
  std::memcpy(&u, row + 4 * j, 4);
  if (out.type == OutType::kI32) return absl::StrCat(static_cast<int32_t>(u));
  float f;
  std::memcpy(&f, &u, 4);
  return absl::StrCat(f, " (0x", absl::Hex(u), ")");
}

// Where row `a` of `x` and row `b` of `y` first differ, or "" if equal.
std::string RowDiff(const Output& x, const uint8_t* a, const Output& y,
                    const uint8_t* b) {
  if (std::memcmp(a, b, x.row_bytes()) == 0) return "";
  const int64_t es = x.elem_bytes();
  for (int64_t j = 0; j < x.row_elems; ++j) {
    if (std::memcmp(a + j * es, b + j * es, es) != 0) {
      return absl::StrCat("element ", j, ": ", Element(x, a, j), " vs ",
                          Element(y, b, j));
    }
  }
  return "?";
}

// Every row of `got` has the bits of the same row of `want`.
void ExpectSameBits(const Output& want, const Output& got,
                    const std::string& what) {
  ASSERT_EQ(got.rows, want.rows) << what;
  ASSERT_EQ(got.row_bytes(), want.row_bytes()) << what;
  int64_t differing = 0;
  for (int64_t r = 0; r < want.rows; ++r) {
    const std::string diff = RowDiff(want, want.row(r), got, got.row(r));
    if (diff.empty()) continue;
    if (++differing <= kMaxReports) {
      ADD_FAILURE() << what << ": row " << r << " differs, " << diff;
    }
  }
  EXPECT_EQ(differing, 0) << what << ": " << differing << " of " << want.rows
                          << " rows differ";
}

class BackendOpsTest : public ::testing::TestWithParam<Param> {};

TEST_P(BackendOpsTest, Case) {
  const Param& p = GetParam();
  absl::StatusOr<std::unique_ptr<Backend>> created = CreateBackend(p.backend);
  if (!created.ok()) GTEST_SKIP() << p.backend << ": " << created.status();
  Backend& backend = **created;
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<OpCase> c = p.entry->make();
  ASSERT_TRUE(c->Prepare(backend).ok());
  absl::StatusOr<Output> full = c->RunFull(backend);
  ASSERT_TRUE(full.ok()) << "full problem: " << full.status();
  ASSERT_EQ(full->rows, c->rows());
  ASSERT_EQ(static_cast<int64_t>(full->bytes.size()),
            full->rows * full->row_bytes());
  std::vector<std::string> summary;

  if (c->BatchVariant()) {
    // Negative control: the twin must differ for some row of some batch.
    int64_t differing = 0, checked = 0;
    for (const Batch& b : c->Batchings()) {
      absl::StatusOr<Output> out = c->Run(backend, b);
      ASSERT_TRUE(out.ok()) << b.name << ": " << out.status();
      for (size_t i = 0; i < b.rows.size(); ++i) {
        if (b.rows[i] < 0) continue;
        ++checked;
        if (std::memcmp(out->row(i), full->row(b.rows[i]), full->row_bytes()) !=
            0) {
          ++differing;
        }
      }
    }
    EXPECT_GT(checked, 0);
    EXPECT_GT(differing, 0)
        << "the batch-variant twin looks invariant: the batch-invariance check "
           "could not fail";
    std::printf(
        "[ backend_ops ] %s %s: negative control, %ld of %ld rows differ\n",
        p.backend.c_str(), p.entry->Name().c_str(), long(differing),
        long(checked));
    return;
  }

  // (a) Unwritten outputs, float64 reference, the contract's bits.
  if (!c->MayProduceNaN() && full->type != OutType::kI32) {
    const std::vector<double> v = full->Values();
    int64_t nans = 0, first = -1;
    for (size_t i = 0; i < v.size(); ++i) {
      if (std::isnan(v[i]) && nans++ == 0) first = static_cast<int64_t>(i);
    }
    EXPECT_EQ(nans, 0) << "NaN (unwritten output?) first at element " << first;
  }
  const std::vector<double> ref = c->Reference();
  if (!ref.empty()) {
    const double err = RelErr(ref, c->Checked(*full));
    const double tol = c->Tolerance(backend);
    EXPECT_LE(err, tol) << "relative error against float64";
    summary.push_back(absl::StrFormat("rel err %.3g (<= %.3g)", err, tol));
  }
  if (std::optional<std::vector<uint8_t>> bits = c->ExpectedBits()) {
    Output want = *full;
    ASSERT_EQ(bits->size(), want.bytes.size()) << "expected bits";
    want.bytes = std::move(*bits);
    ExpectSameBits(want, *full, "the contract's bits");
    summary.push_back("contract bits");
  }

  // (b) Batches: every row equals its row of the full problem.
  int64_t checked = 0, batches = 0, broken_batches = 0;
  for (const Batch& b : c->Batchings()) {
    absl::StatusOr<Output> out = c->Run(backend, b);
    ASSERT_TRUE(out.ok()) << b.name << ": " << out.status();
    ASSERT_EQ(out->rows, static_cast<int64_t>(b.rows.size())) << b.name;
    ++batches;
    int64_t differing = 0;
    for (size_t i = 0; i < b.rows.size(); ++i) {
      const int64_t r = b.rows[i];
      if (r < 0) continue;
      ++checked;
      const std::string diff = RowDiff(*full, full->row(r), *out, out->row(i));
      if (diff.empty()) continue;
      if (++differing <= kMaxReports && broken_batches < kMaxReports) {
        ADD_FAILURE() << "batch \"" << b.name << "\" (" << b.rows.size()
                      << " rows): entry " << i << " (row " << r
                      << ") differs from the full problem, " << diff;
      }
    }
    if (differing > 0 && ++broken_batches <= kMaxReports) {
      ADD_FAILURE() << "batch \"" << b.name << "\": " << differing
                    << " rows differ from the full problem";
    }
  }
  EXPECT_EQ(broken_batches, 0) << broken_batches << " batches are not bitwise "
                               << "equal to the full problem";
  EXPECT_GT(checked, 0) << "no batch row was compared";
  summary.push_back(absl::StrCat(batches, " batches / ", checked, " rows"));

  // (b) Execution modes and GEMM configurations.
  const std::vector<std::string> modes = backend.Modes();
  for (int i = 0; i < static_cast<int>(modes.size()); ++i) {
    absl::StatusOr<Output> out;
    absl::Status s = backend.RunInMode(i, [&] {
      out = c->RunFull(backend);
      return out.status();
    });
    ASSERT_TRUE(s.ok()) << "mode " << modes[i] << ": " << s;
    ExpectSameBits(*full, *out, absl::StrCat("mode ", modes[i]));
  }
  if (!modes.empty()) summary.push_back(absl::StrCat(modes.size(), " modes"));
  if (c->GemmLeaves() > 0) {
    const std::vector<std::string> configs =
        backend.GemmConfigs(c->GemmLeaves());
    for (int i = 0; i < static_cast<int>(configs.size()); ++i) {
      absl::StatusOr<Output> out = c->RunGemmConfig(backend, i);
      ASSERT_TRUE(out.ok())
          << "GEMM config " << configs[i] << ": " << out.status();
      ExpectSameBits(*full, *out, absl::StrCat("GEMM config ", configs[i]));
    }
    summary.push_back(absl::StrCat(configs.size(), " GEMM configs"));
  }

  // (c) The CPU backend's contract.
  if (backend.name() != "cpu" && c->cpu_contract() != CpuContract::kNone) {
    std::unique_ptr<Backend> cpu = CreateCpuBackend();
    std::unique_ptr<OpCase> on_cpu = p.entry->make();
    ASSERT_TRUE(on_cpu->Prepare(*cpu).ok());
    absl::StatusOr<Output> cpu_full = on_cpu->RunFull(*cpu);
    ASSERT_TRUE(cpu_full.ok()) << "CPU: " << cpu_full.status();
    if (c->cpu_contract() == CpuContract::kBitwise) {
      ExpectSameBits(*cpu_full, *full, "the CPU backend's bits");
      summary.push_back("= cpu bitwise");
    } else {
      const double err = RelErr(on_cpu->Checked(*cpu_full), c->Checked(*full));
      const double bound = c->Tolerance(backend) + on_cpu->Tolerance(*cpu);
      EXPECT_LE(err, bound) << "relative difference from the CPU backend";
      summary.push_back(absl::StrFormat("vs cpu %.3g (<= %.3g)", err, bound));
    }
  }

  // The case's own properties.
  c->CheckProperties(backend, *full);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::printf("[ backend_ops ] %s %s: %s (%.2f s)\n", p.backend.c_str(),
              p.entry->Name().c_str(), absl::StrJoin(summary, ", ").c_str(),
              seconds);
}

INSTANTIATE_TEST_SUITE_P(Cpu, BackendOpsTest,
                         ::testing::ValuesIn(ParamsFor("cpu")), ParamName);
INSTANTIATE_TEST_SUITE_P(Cuda, BackendOpsTest,
                         ::testing::ValuesIn(ParamsFor("cuda")), ParamName);

// Promises of a backend that no op case covers.
class BackendSelfTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BackendSelfTest, KeepsItsPromises) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(GetParam());
  if (!backend.ok()) GTEST_SKIP() << GetParam() << ": " << backend.status();
  EXPECT_EQ((*backend)->name(), GetParam());
  absl::Status s = (*backend)->SelfCheck();
  EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(Cpu, BackendSelfTest, ::testing::Values("cpu"),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Cuda, BackendSelfTest, ::testing::Values("cuda"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace lockstep::kernels::backend_ops
