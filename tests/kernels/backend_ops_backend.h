// The backends of the kernel backend test harness (backend_ops_test.cc, in
// the manner of ggml's test-backend-ops): where a kernel runs, the memory it
// reads and writes, and the few backend-specific promises the op cases check.
// The harness runs every op case of backend_ops_cases.h on each backend that
// this build holds and this machine has: the CPU always, CUDA when built with
// LOCKSTEP_CUDA=ON and a GPU is visible.
//
// Backends are picked at link time, not with #if: backend_ops_cpu.cc always,
// and backend_ops_cuda.cc or backend_ops_cuda_unavailable.cc
// (tests/kernels/CMakeLists.txt).
#ifndef LOCKSTEP_TESTS_KERNELS_BACKEND_OPS_BACKEND_H_
#define LOCKSTEP_TESTS_KERNELS_BACKEND_OPS_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/matmul.h"

namespace lockstep::kernels::backend_ops {

// Memory of one backend: host memory for the CPU, device memory for CUDA.
// Move-only; frees itself.
class Buffer {
 public:
  Buffer() = default;
  // Takes ownership of `data` ([bytes] bytes), released with `release`.
  Buffer(void* data, int64_t bytes, std::function<void(void*)> release)
      : data_(data, std::move(release)), bytes_(bytes) {}

  void* data() const { return data_.get(); }
  int64_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data());
  }

 private:
  std::unique_ptr<void, std::function<void(void*)>> data_{nullptr,
                                                          [](void*) {}};
  int64_t bytes_ = 0;
};

// What PagedAttention does with a block-table entry outside the cache.
enum class BadPageHandling {
  // The call fails with INVALID_ARGUMENT (the CPU checks tables up front).
  kInvalidArgument,
  // The call succeeds; that query's output row is all NaN and every other
  // row is untouched (CUDA reads the tables on the device).
  kNaNRow,
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda": also the prefix of the harness's gtest names.
  virtual std::string name() const = 0;
  // The ExecContext every kernel call on this backend passes.
  virtual ExecContext context() const = 0;

  // `bytes` of backend memory (at least one byte is allocated, so pointers
  // are never null), filled with 0xFF bytes (NaN as floats) so that outputs
  // a kernel forgot to write show up.
  virtual absl::StatusOr<Buffer> Alloc(int64_t bytes) = 0;
  // Copies [bytes] host bytes at `host` to backend memory at `dst`.
  virtual absl::Status CopyToBackend(const void* host, int64_t bytes,
                                     void* dst) = 0;
  // Waits for every queued kernel (reporting asynchronous kernel errors),
  // then copies [bytes] bytes of backend memory at `src` to `host`.
  virtual absl::Status CopyToHost(const void* src, int64_t bytes,
                                  void* host) = 0;
  // Waits for every queued kernel; reports asynchronous kernel errors.
  virtual absl::Status Synchronize() = 0;

  // Execution modes the backend promises give every op the same bits as its
  // default (CPU: each SIMD level on one thread, the detected level on three
  // threads). Empty: none. The harness reruns each case in each.
  virtual std::vector<std::string> Modes() const { return {}; }
  // Runs `fn` with mode `mode` (an index into Modes()) in effect, then
  // restores the default.
  virtual absl::Status RunInMode(int mode,
                                 const std::function<absl::Status()>& fn);

  // Internal tile configurations of the bf16 GEMM for a reduction tree of
  // `leaves` leaves (CUDA: the sm_90a tensor-core configurations of
  // kernels/cuda/matmul.h, none without that path; none on the CPU, whose
  // SIMD levels and thread counts are Modes()). All of them must give the
  // same bits as the backend's own choice.
  virtual std::vector<std::string> GemmConfigs(int leaves) const { return {}; }
  // y = the tree of `leaves` leaves of length `leaf_len` of x · wᵀ
  // (args.k == leaves * leaf_len; leaves == 1 is the plain Matmul) with
  // configuration `config`, an index into GemmConfigs(leaves). Pointers in
  // `args` are this backend's memory.
  virtual absl::Status LeafMatmulWithConfig(const MatmulArgs& args, int leaves,
                                            int64_t leaf_len, int config);

  // out [count] (this backend's memory) = the uniforms of the backend's own
  // Philox for (stream key, position), i.e. PhiloxUniform(key, position, i)
  // as the backend's Sample computes them (52-bit doubles).
  virtual absl::Status PhiloxUniforms(uint64_t key, int64_t position,
                                      int64_t count, double* out) = 0;

  // True when the backend has a tensor-core attention path at all (CUDA).
  virtual bool HasTensorCoreAttention() const { return false; }
  // True when attention with this KV dtype, head_dim and number of query
  // heads per KV head runs under the bf16 tensor-core contract of
  // kernels/cuda/attention_tc.h (bf16 rounding of q and p: a looser bound
  // against float64).
  virtual bool TensorCoreAttention(DType kv_dtype, int64_t head_dim,
                                   int64_t group) const {
    return false;
  }
  virtual BadPageHandling bad_page_handling() const {
    return BadPageHandling::kInvalidArgument;
  }

  // Backend-level promises no op case covers (CUDA: a Hopper GPU gets the
  // tensor-core GEMM). OK, or what is broken.
  virtual absl::Status SelfCheck() const { return absl::OkStatus(); }

  // A buffer holding a copy of `host`.
  template <typename T>
  absl::StatusOr<Buffer> Upload(const std::vector<T>& host) {
    const int64_t bytes = static_cast<int64_t>(host.size() * sizeof(T));
    absl::StatusOr<Buffer> buf = Alloc(bytes);
    if (!buf.ok()) return buf.status();
    absl::Status s = CopyToBackend(host.data(), bytes, buf->data());
    if (!s.ok()) return s;
    return buf;
  }

  // `count` elements of T at `src` (this backend's memory).
  template <typename T>
  absl::StatusOr<std::vector<T>> Download(const T* src, int64_t count) {
    std::vector<T> host(count);
    absl::Status s =
        CopyToHost(src, count * static_cast<int64_t>(sizeof(T)), host.data());
    if (!s.ok()) return s;
    return host;
  }
};

// Every backend the harness knows, built here or not: "cpu", "cuda".
std::vector<std::string> BackendNames();

// The named backend; UNAVAILABLE when this build lacks it or this machine
// has no device for it, NOT_FOUND for an unknown name.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view name);

// Defined in backend_ops_cpu.cc.
std::unique_ptr<Backend> CreateCpuBackend();
// Defined in backend_ops_cuda.cc (CUDA builds) or
// backend_ops_cuda_unavailable.cc (UNAVAILABLE).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend();

}  // namespace lockstep::kernels::backend_ops

#endif  // LOCKSTEP_TESTS_KERNELS_BACKEND_OPS_BACKEND_H_
