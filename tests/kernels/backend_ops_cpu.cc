// The CPU backend of the harness: host memory, the CPU kernels, and their
// SIMD levels and thread counts as execution modes.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/sampling.h"
#include "tests/kernels/backend_ops_backend.h"

namespace lockstep::kernels::backend_ops {
namespace {

// An odd thread count, so that chunk boundaries move compared with the
// default (the hardware thread count).
constexpr int kOddThreads = 3;

struct Mode {
  SimdLevel level;
  int threads;
};

class CpuBackend : public Backend {
 public:
  CpuBackend() {
    for (SimdLevel level :
         {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
      if (static_cast<int>(level) <= static_cast<int>(DetectSimdLevel())) {
        modes_.push_back({level, 1});
      }
    }
    modes_.push_back({DetectSimdLevel(), kOddThreads});
  }

  std::string name() const override { return "cpu"; }
  ExecContext context() const override { return ExecContext{Device::kCpu}; }

  absl::StatusOr<Buffer> Alloc(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError("negative size");
    const size_t n = bytes > 0 ? static_cast<size_t>(bytes) : 1;
    // 64-byte alignment, as a caller's large allocation would have.
    void* p = ::operator new (n, std::align_val_t{64});
    std::memset(p, 0xFF, n);
    return Buffer(p, bytes,
                  [](void* q) { ::operator delete (q, std::align_val_t{64}); });
  }

  absl::Status CopyToBackend(const void* host, int64_t bytes,
                             void* dst) override {
    if (bytes > 0) std::memcpy(dst, host, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }

  absl::Status CopyToHost(const void* src, int64_t bytes, void* host) override {
    if (bytes > 0) std::memcpy(host, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  std::vector<std::string> Modes() const override {
    std::vector<std::string> names;
    for (const Mode& m : modes_) {
      names.push_back(absl::StrCat(std::string(SimdLevelName(m.level)), ", ",
                                   m.threads,
                                   m.threads == 1 ? " thread" : " threads"));
    }
    return names;
  }

  absl::Status RunInMode(int mode,
                         const std::function<absl::Status()>& fn) override {
    if (mode < 0 || mode >= static_cast<int>(modes_.size())) {
      return Backend::RunInMode(mode, fn);
    }
    const SimdLevel saved_level = ActiveSimdLevel();
    const int saved_threads = NumThreads();
    absl::Status s = SetSimdLevel(modes_[mode].level);
    if (s.ok()) {
      SetNumThreads(modes_[mode].threads);
      s = fn();
    }
    SetNumThreads(saved_threads);
    absl::Status restored = SetSimdLevel(saved_level);
    return s.ok() ? restored : s;
  }

  absl::Status PhiloxUniforms(uint64_t key, int64_t position, int64_t count,
                              double* out) override {
    for (int64_t i = 0; i < count; ++i) {
      out[i] = PhiloxUniform(key, position, i);
    }
    return absl::OkStatus();
  }

 private:
  std::vector<Mode> modes_;
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace lockstep::kernels::backend_ops
