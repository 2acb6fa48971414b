#include "kernels/embedding.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/embedding.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/embedding.h"
#endif

namespace lockstep::kernels {

absl::Status Embedding(const EmbeddingArgs& args, const ExecContext& ctx) {
  if (args.tokens < 0 || args.dim < 0 || args.vocab <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Embedding: need tokens >= 0, dim >= 0 and vocab > 0, got tokens=",
        args.tokens, " dim=", args.dim, " vocab=", args.vocab));
  }
  if (args.table_dtype != DType::kF32 && args.table_dtype != DType::kBF16) {
    return absl::InvalidArgumentError("Embedding: unknown table dtype");
  }
  if (args.tokens == 0) return absl::OkStatus();
  if (args.table == nullptr || args.ids == nullptr || args.out == nullptr) {
    return absl::InvalidArgumentError(
        "Embedding: table, ids and out must be non-null");
  }
  if (args.ld_table < args.dim || args.ld_out < args.dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Embedding: row strides must be >= dim=", args.dim,
        ", got ld_table=", args.ld_table, " ld_out=", args.ld_out));
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::Embedding(args),
                           cuda::Embedding(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
