#include "kernels/rms_norm.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/rms_norm.h"
#endif

namespace lockstep::kernels {

absl::Status RmsNorm(const RmsNormArgs& args, const ExecContext& ctx) {
  if (args.rows < 0 || args.n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: need rows >= 0 and n > 0, got rows=", args.rows,
                     " n=", args.n));
  }
  if (!(args.eps >= 0.0f) || std::isinf(args.eps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: eps must be finite and >= 0, got ", args.eps));
  }
  if (args.rows == 0) return absl::OkStatus();
  if (args.x == nullptr || args.weight == nullptr || args.y == nullptr) {
    return absl::InvalidArgumentError(
        "RmsNorm: x, weight and y must be non-null");
  }
  if (args.ldx < args.n || args.ldy < args.n) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: row strides must be >= n=", args.n,
                     ", got ldx=", args.ldx, " ldy=", args.ldy));
  }
  if (args.weight_dtype != DType::kF32 && args.weight_dtype != DType::kBF16) {
    return absl::InvalidArgumentError("RmsNorm: unknown weight dtype");
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::RmsNorm(args),
                           cuda::RmsNorm(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
