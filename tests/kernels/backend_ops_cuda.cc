// The CUDA backend of the harness (built with LOCKSTEP_CUDA=ON only): device
// memory, the CUDA kernels on the legacy default stream, and the CUDA
// internals the cases check (GEMM tile configurations, the device Philox,
// which attention path a shape takes).
#include <cuda_runtime.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/sampling.h"
#include "tests/kernels/backend_ops_backend.h"
#include "tests/testing/cuda_test_util.h"

namespace lockstep::kernels::backend_ops {
namespace {

absl::Status CudaError(const char* what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " ",
                                          cudaGetErrorString(e)));
}

class CudaBackend : public Backend {
 public:
  std::string name() const override { return "cuda"; }
  ExecContext context() const override {
    return ExecContext{Device::kCuda, nullptr};
  }

  absl::StatusOr<Buffer> Alloc(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError("negative size");
    const size_t n = bytes > 0 ? static_cast<size_t>(bytes) : 1;
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, n); e != cudaSuccess) {
      return CudaError("cudaMalloc", e);
    }
    if (cudaError_t e = cudaMemset(p, 0xFF, n); e != cudaSuccess) {
      cudaFree(p);
      return CudaError("cudaMemset", e);
    }
    return Buffer(p, bytes, [](void* q) { cudaFree(q); });
  }

  absl::Status CopyToBackend(const void* host, int64_t bytes,
                             void* dst) override {
    if (bytes == 0) return absl::OkStatus();
    cudaError_t e = cudaMemcpy(dst, host, static_cast<size_t>(bytes),
                               cudaMemcpyHostToDevice);
    return e == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpy H2D", e);
  }

  absl::Status Synchronize() override {
    if (cudaError_t e = cudaDeviceSynchronize(); e != cudaSuccess) {
      return CudaError("kernel (cudaDeviceSynchronize)", e);
    }
    return absl::OkStatus();
  }

  absl::Status CopyToHost(const void* src, int64_t bytes, void* host) override {
    if (absl::Status s = Synchronize(); !s.ok()) return s;
    if (bytes == 0) return absl::OkStatus();
    cudaError_t e = cudaMemcpy(host, src, static_cast<size_t>(bytes),
                               cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpy D2H", e);
  }

  std::vector<std::string> GemmConfigs(int leaves) const override {
    std::vector<std::string> names;
    if (!cuda::Bf16TensorCorePathAvailable()) return names;
    for (const cuda::GemmTileConfig& c : cuda::Bf16GemmConfigs(leaves)) {
      names.push_back(c.ToString());
    }
    return names;
  }

  absl::Status LeafMatmulWithConfig(const MatmulArgs& args, int leaves,
                                    int64_t leaf_len, int config) override {
    if (!cuda::Bf16TensorCorePathAvailable()) {
      return Backend::LeafMatmulWithConfig(args, leaves, leaf_len, config);
    }
    const std::vector<cuda::GemmTileConfig> configs =
        cuda::Bf16GemmConfigs(leaves);
    if (config < 0 || config >= static_cast<int>(configs.size())) {
      return Backend::LeafMatmulWithConfig(args, leaves, leaf_len, config);
    }
    return cuda::LeafMatmul(args, leaves, leaf_len, &configs[config], nullptr);
  }

  absl::Status PhiloxUniforms(uint64_t key, int64_t position, int64_t count,
                              double* out) override {
    return cuda::PhiloxUniformDevice(key, position, count, out, nullptr);
  }

  bool HasTensorCoreAttention() const override { return true; }
  bool TensorCoreAttention(DType kv_dtype, int64_t head_dim,
                           int64_t group) const override {
    return cuda::TcAttentionApplies(kv_dtype, head_dim, group);
  }
  BadPageHandling bad_page_handling() const override {
    return BadPageHandling::kNaNRow;
  }

  absl::Status SelfCheck() const override {
    cudaDeviceProp prop{};
    if (cudaError_t e = cudaGetDeviceProperties(&prop, 0); e != cudaSuccess) {
      return CudaError("cudaGetDeviceProperties", e);
    }
    // A Hopper GPU must get the tensor-core GEMM (the binary holds sm_90a
    // code); elsewhere bf16 falls back to the SIMT path by design.
    if (prop.major == 9 && !cuda::Bf16TensorCorePathAvailable()) {
      return absl::FailedPreconditionError(absl::StrCat(
          prop.name, " is a Hopper GPU (sm_", prop.major, prop.minor,
          ") but the bf16 tensor-core GEMM path is not available"));
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend() {
  if (!HasCudaDevice()) return absl::UnavailableError("no CUDA device");
  return std::make_unique<CudaBackend>();
}

}  // namespace lockstep::kernels::backend_ops
