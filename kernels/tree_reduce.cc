#include "kernels/tree_reduce.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/tree_reduce.h"
#include "kernels/cuda/tree_reduce.h"
#include "kernels/dispatch.h"

namespace lockstep::kernels {
namespace {

absl::Status CheckTreeArgs(const char* op, const TreeMatmulArgs& args,
                           int64_t n, int64_t k, bool check_w) {
  const MatmulArgs& b = args.base;
  if (b.m < 0 || n < 0 || k < 0 || args.k_total < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": negative size (m=", b.m, ", n=", n, ", k=", k,
                     ", k_total=", args.k_total, ")"));
  }
  if (args.k_total % kTreeLeaves != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": k_total (", args.k_total, ") is not a multiple of ",
        kTreeLeaves));
  }
  if (!IsValidTreeSplit(args.leaf_count)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": leaf_count (", args.leaf_count, ") must be 1, 2, 4 or 8"));
  }
  if (args.leaf_begin < 0 || args.leaf_begin % args.leaf_count != 0 ||
      args.leaf_begin + args.leaf_count > kTreeLeaves) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": leaf_begin (", args.leaf_begin,
        ") must be a multiple of leaf_count (", args.leaf_count,
        ") with leaf_begin + leaf_count <= ", kTreeLeaves));
  }
  if (k != args.leaf_count * (args.k_total / kTreeLeaves)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": k (", k, ") must equal leaf_count * k_total / 8 (",
        args.leaf_count * (args.k_total / kTreeLeaves), ")"));
  }
  if (b.x_dtype != DType::kF32 && b.x_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": x has an unknown dtype"));
  }
  if (b.y_dtype != DType::kF32 && b.y_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": y has an unknown dtype"));
  }
  if (b.ldx < k) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ldx (", b.ldx, ") < k (", k, ")"));
  }
  if (b.ldy < n) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ldy (", b.ldy, ") < n (", n, ")"));
  }
  if (check_w) {
    if (b.w_dtype != DType::kF32 && b.w_dtype != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": w has an unknown dtype"));
    }
    if (b.ldw < k) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ldw (", b.ldw, ") < k (", k, ")"));
    }
  }
  if (b.m > 0 && n > 0) {
    if (b.x == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": x is null"));
    }
    if (b.y == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": y is null"));
    }
    if (check_w && b.w == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": w is null"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TreeMatmulPartial(const TreeMatmulArgs& args,
                               const ExecContext& ctx) {
  if (absl::Status s = CheckTreeArgs("TreeMatmulPartial", args, args.base.n,
                                     args.base.k, /*check_w=*/true);
      !s.ok()) {
    return s;
  }
  if (args.base.m == 0 || args.base.n == 0) return absl::OkStatus();
  return LOCKSTEP_DISPATCH(ctx, cpu::TreeMatmulPartial(args),
                           cuda::TreeMatmulPartial(args, ctx.cuda_stream));
}

absl::Status TreeMatmulPartialPacked(const TreeMatmulArgs& args,
                                     const PackedWeight& w) {
  if (absl::Status s = CheckTreeArgs("TreeMatmulPartialPacked", args, w.n(),
                                     w.k(), /*check_w=*/false);
      !s.ok()) {
    return s;
  }
  if (args.base.m == 0 || w.n() == 0) return absl::OkStatus();
  return cpu::TreeMatmulPartial(args, &w);
}

absl::Status TreeCombine(const TreeCombineArgs& args, const ExecContext& ctx) {
  if (args.m < 0 || args.n < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TreeCombine: negative size (m=", args.m, ", n=", args.n, ")"));
  }
  if (!IsValidTreeSplit(args.t)) {
    return absl::InvalidArgumentError(
        absl::StrCat("TreeCombine: t (", args.t, ") must be 1, 2, 4 or 8"));
  }
  if (args.y_dtype != DType::kF32 && args.y_dtype != DType::kBF16) {
    return absl::InvalidArgumentError("TreeCombine: y has an unknown dtype");
  }
  if (args.ldy < args.n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TreeCombine: ldy (", args.ldy, ") < n (", args.n, ")"));
  }
  if (args.m == 0 || args.n == 0) return absl::OkStatus();
  if (args.partials == nullptr) {
    return absl::InvalidArgumentError("TreeCombine: partials is null");
  }
  if (args.y == nullptr) {
    return absl::InvalidArgumentError("TreeCombine: y is null");
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::TreeCombine(args),
                           cuda::TreeCombine(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
