// Embedding gather (exact widening of bf16 rows).
//
// Token ids live in device memory. Outside stream capture they are copied
// back and checked before the launch (one small read-back per forward step),
// so a bad id returns INVALID_ARGUMENT and writes nothing, like the CPU path.
// Under capture no read-back is possible: the kernel itself never reads out
// of the table and fills the row of a bad id with NaN.
#include "kernels/cuda/embedding.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 256;

struct EmbeddingParams {
  const void* table;
  int64_t ld_table;
  int64_t vocab;
  const int32_t* ids;
  float* out;
  int64_t ld_out;
  int64_t tokens;
  int64_t dim;
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    EmbeddingKernel(const EmbeddingParams p) {
  const T* table = static_cast<const T*>(p.table);
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    const int32_t id = p.ids[t];
    const bool ok = id >= 0 && id < p.vocab;
    const T* src = table + (ok ? id : 0) * p.ld_table;
    float* dst = p.out + t * p.ld_out;
    for (int64_t d = threadIdx.x; d < p.dim; d += blockDim.x) {
      dst[d] = ok ? LoadF32<T>(src, d) : __int_as_float(0x7fc00000);
    }
  }
}

}  // namespace

absl::Status Embedding(const EmbeddingArgs& args, void* stream) {
  if (args.tokens <= 0 || args.dim <= 0) return absl::OkStatus();
  cudaStream_t s = AsStream(stream);
  if (!StreamIsCapturing(s)) {
    std::vector<int32_t> ids(args.tokens);
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        ids.data(), args.ids, args.tokens * sizeof(int32_t),
        cudaMemcpyDeviceToHost, s));
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    for (int64_t t = 0; t < args.tokens; ++t) {
      if (ids[t] < 0 || ids[t] >= args.vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("Embedding: ids[", t, "] = ", ids[t],
                         " is outside [0, vocab=", args.vocab, ")"));
      }
    }
  }
  const EmbeddingParams p{args.table, args.ld_table, args.vocab, args.ids,
                          args.out,   args.ld_out,   args.tokens, args.dim};
  const int grid = static_cast<int>(
      args.tokens < SmCount() * 16LL ? args.tokens : SmCount() * 16LL);
  if (args.table_dtype == DType::kBF16) {
    EmbeddingKernel<uint16_t><<<grid, kThreads, 0, s>>>(p);
  } else {
    EmbeddingKernel<float><<<grid, kThreads, 0, s>>>(p);
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("EmbeddingKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
