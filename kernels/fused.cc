#include "kernels/fused.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/fused.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/fused.h"
#endif

namespace lockstep::kernels {
namespace {

bool StorageDType(DType d) { return d == DType::kF32 || d == DType::kBF16; }

absl::Status CheckEps(const char* op, float eps) {
  if (!(eps >= 0.0f) || std::isinf(eps)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": eps must be finite and >= 0, got ", eps));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AddRmsNorm(const AddRmsNormArgs& args, const ExecContext& ctx) {
  if (args.rows < 0 || args.n <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AddRmsNorm: need rows >= 0 and n > 0, got rows=", args.rows, " n=", args.n));
  }
  if (absl::Status s = CheckEps("AddRmsNorm", args.eps); !s.ok()) return s;
  if (!StorageDType(args.weight_dtype) || !StorageDType(args.y_dtype)) {
    return absl::InvalidArgumentError("AddRmsNorm: weight and y must be f32 or bf16");
  }
  if (args.rows == 0) return absl::OkStatus();
  if (args.h == nullptr || args.weight == nullptr || args.y == nullptr) {
    return absl::InvalidArgumentError("AddRmsNorm: h, weight and y must be non-null");
  }
  if (args.ldh < args.n || args.ldy < args.n ||
      (args.delta != nullptr && args.ld_delta < args.n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AddRmsNorm: row strides must be >= n=", args.n, ", got ldh=", args.ldh,
        " ld_delta=", args.ld_delta, " ldy=", args.ldy));
  }
  if (static_cast<const void*>(args.y) == static_cast<const void*>(args.h) ||
      (args.delta != nullptr &&
       static_cast<const void*>(args.y) == static_cast<const void*>(args.delta))) {
    return absl::InvalidArgumentError("AddRmsNorm: y must not alias h or delta");
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::AddRmsNorm(args), cuda::AddRmsNorm(args, ctx.cuda_stream));
}

absl::Status HeadNormRope(const HeadNormRopeArgs& args, const ExecContext& ctx) {
  if (args.tokens < 0 || args.heads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HeadNormRope: need tokens >= 0 and heads >= 0, got tokens=", args.tokens,
        " heads=", args.heads));
  }
  if (args.head_dim <= 0 || args.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HeadNormRope: head_dim must be positive and even, got ", args.head_dim));
  }
  if (!(args.attention_factor > 0.0) || std::isinf(args.attention_factor)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HeadNormRope: attention_factor must be finite and > 0, got ",
        args.attention_factor));
  }
  if (absl::Status s = CheckEps("HeadNormRope", args.eps); !s.ok()) return s;
  if (args.norm_weight != nullptr && !StorageDType(args.norm_dtype)) {
    return absl::InvalidArgumentError("HeadNormRope: norm weight must be f32 or bf16");
  }
  if (args.tokens == 0 || args.heads == 0) return absl::OkStatus();
  if (args.x == nullptr || args.positions == nullptr || args.inv_freq == nullptr) {
    return absl::InvalidArgumentError(
        "HeadNormRope: x, positions and inv_freq must be non-null");
  }
  if (args.ldx < args.heads * args.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HeadNormRope: ldx=", args.ldx, " < heads*head_dim=", args.heads * args.head_dim));
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::HeadNormRope(args),
                           cuda::HeadNormRope(args, ctx.cuda_stream));
}

absl::Status SiluMulRound(const SiluMulRoundArgs& args, const ExecContext& ctx) {
  if (args.rows < 0 || args.n < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SiluMulRound: need rows >= 0 and n >= 0, got rows=", args.rows, " n=", args.n));
  }
  if (!StorageDType(args.out_dtype)) {
    return absl::InvalidArgumentError("SiluMulRound: out must be f32 or bf16");
  }
  if (args.rows == 0 || args.n == 0) return absl::OkStatus();
  if (args.gate == nullptr || args.up == nullptr || args.out == nullptr) {
    return absl::InvalidArgumentError("SiluMulRound: gate, up and out must be non-null");
  }
  if (args.ld_gate < args.n || args.ld_up < args.n || args.ld_out < args.n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SiluMulRound: row strides must be >= n=", args.n, ", got ld_gate=", args.ld_gate,
        " ld_up=", args.ld_up, " ld_out=", args.ld_out));
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::SiluMulRound(args),
                           cuda::SiluMulRound(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
