#include "kernels/softmax.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/softmax.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/softmax.h"
#endif

namespace lockstep::kernels {

absl::Status LogSoftmax(const LogSoftmaxArgs& args, const ExecContext& ctx) {
  if (args.rows < 0 || args.vocab <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LogSoftmax: need rows >= 0 and vocab > 0, got rows=", args.rows,
        " vocab=", args.vocab));
  }
  if (args.rows == 0) return absl::OkStatus();
  if (args.logits == nullptr) {
    return absl::InvalidArgumentError("LogSoftmax: logits must be non-null");
  }
  if (args.ld < args.vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("LogSoftmax: ld=", args.ld, " < vocab=", args.vocab));
  }
  if (args.targets != nullptr && args.target_logprobs == nullptr) {
    return absl::InvalidArgumentError(
        "LogSoftmax: targets given but target_logprobs is null");
  }
  if (args.logprobs != nullptr && args.ld_out < args.vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LogSoftmax: ld_out=", args.ld_out, " < vocab=", args.vocab));
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::LogSoftmax(args),
                           cuda::LogSoftmax(args, ctx.cuda_stream));
}

absl::Status SegmentStats(const SegmentStatsArgs& args,
                          const ExecContext& ctx) {
  if (args.rows < 0 || args.vocab_total <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SegmentStats: need rows >= 0 and vocab_total > 0, got rows=",
        args.rows, " vocab_total=", args.vocab_total));
  }
  if (!IsValidTreeSplit(args.seg_count) || args.seg_begin < 0 ||
      args.seg_begin % args.seg_count != 0 ||
      args.seg_begin + args.seg_count > kTreeLeaves) {
    return absl::InvalidArgumentError(
        absl::StrCat("SegmentStats: segments [", args.seg_begin, ", ",
                     args.seg_begin + args.seg_count,
                     ") are not an aligned subtree of 1, 2, 4 or 8 of the ",
                     kTreeLeaves, " leaves"));
  }
  if (args.rows == 0) return absl::OkStatus();
  const int64_t local =
      (args.seg_begin + args.seg_count) * args.vocab_total / kTreeLeaves -
      args.seg_begin * args.vocab_total / kTreeLeaves;
  if (args.stats_out == nullptr || (local > 0 && args.logits == nullptr)) {
    return absl::InvalidArgumentError(
        "SegmentStats: logits and stats_out must be non-null");
  }
  if (local > 0 && args.ld < local) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SegmentStats: ld=", args.ld, " < local vocabulary width ", local));
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::SegmentStats(args),
                           cuda::SegmentStats(args, ctx.cuda_stream));
}

absl::Status CombineSegmentStats(const SoftmaxStats* gathered, int t,
                                 int64_t rows, float* lse_out,
                                 const ExecContext& ctx) {
  if (!IsValidTreeSplit(t)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CombineSegmentStats: t must be 1, 2, 4 or 8, got ", t));
  }
  if (rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CombineSegmentStats: rows must be >= 0, got ", rows));
  }
  if (rows == 0) return absl::OkStatus();
  if (gathered == nullptr || lse_out == nullptr) {
    return absl::InvalidArgumentError(
        "CombineSegmentStats: gathered and lse_out must be non-null");
  }
  return LOCKSTEP_DISPATCH(
      ctx, cpu::CombineSegmentStats(gathered, t, rows, lse_out),
      cuda::CombineSegmentStats(gathered, t, rows, lse_out, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
