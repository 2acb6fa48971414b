#include "kernels/router.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/router.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/router.h"
#endif

namespace lockstep::kernels {

absl::Status RouteTopK(const RouteTopKArgs& args, const ExecContext& ctx) {
  if (args.rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("RouteTopK: rows ", args.rows, " < 0"));
  }
  if (args.experts < 1 || args.experts > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("RouteTopK: experts must be in [1, 4096], got ", args.experts));
  }
  if (args.k < 1 || args.k > args.experts) {
    return absl::InvalidArgumentError(absl::StrCat("RouteTopK: k must be in [1, experts ",
                                                   args.experts, "], got ", args.k));
  }
  if (args.ld < args.experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("RouteTopK: ld ", args.ld, " < experts ", args.experts));
  }
  if (args.rows == 0) return absl::OkStatus();
  if (args.logits == nullptr || args.weights == nullptr || args.ids == nullptr) {
    return absl::InvalidArgumentError("RouteTopK: logits, weights and ids must be non-null");
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::RouteTopK(args), cuda::RouteTopK(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
