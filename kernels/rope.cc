#include "kernels/rope.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/rope.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/rope.h"
#endif

namespace lockstep::kernels {

absl::Status ApplyRope(const RopeArgs& args, const ExecContext& ctx) {
  if (args.tokens < 0 || args.heads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ApplyRope: need tokens >= 0 and heads >= 0, got tokens=", args.tokens,
        " heads=", args.heads));
  }
  if (args.head_dim <= 0 || args.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ApplyRope: head_dim must be positive and even, got ", args.head_dim));
  }
  if (args.rotary_dim < 0 || args.rotary_dim % 2 != 0 ||
      args.rotary_dim > args.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("ApplyRope: rotary_dim must be even and in [0, head_dim=",
                     args.head_dim, "], got ", args.rotary_dim));
  }
  if (!(args.attention_factor > 0.0) || std::isinf(args.attention_factor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ApplyRope: attention_factor must be finite and > 0, got ",
                     args.attention_factor));
  }
  if (args.tokens == 0) return absl::OkStatus();
  if (args.x == nullptr || args.positions == nullptr ||
      args.inv_freq == nullptr) {
    return absl::InvalidArgumentError(
        "ApplyRope: x, positions and inv_freq must be non-null");
  }
  if (args.ldx < args.heads * args.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("ApplyRope: ldx=", args.ldx,
                     " < heads*head_dim=", args.heads * args.head_dim));
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::ApplyRope(args),
                           cuda::ApplyRope(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
