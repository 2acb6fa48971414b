#include "kernels/activation.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/activation.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/activation.h"
#endif

namespace lockstep::kernels {
namespace {

absl::Status CheckShape(const char* op, int64_t rows, int64_t n) {
  if (rows < 0 || n < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": need rows >= 0 and n >= 0, got rows=", rows, " n=", n));
  }
  return absl::OkStatus();
}

absl::Status CheckStride(const char* op, const char* name, int64_t ld,
                         int64_t n) {
  if (ld < n) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, "=", ld, " < n=", n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SiluMul(const SiluMulArgs& args, const ExecContext& ctx) {
  absl::Status s = CheckShape("SiluMul", args.rows, args.n);
  if (!s.ok()) return s;
  if (args.rows == 0 || args.n == 0) return absl::OkStatus();
  if (args.gate == nullptr || args.up == nullptr || args.out == nullptr) {
    return absl::InvalidArgumentError(
        "SiluMul: gate, up and out must be non-null");
  }
  if (s = CheckStride("SiluMul", "ld_in", args.ld_in, args.n); !s.ok()) {
    return s;
  }
  if (s = CheckStride("SiluMul", "ld_out", args.ld_out, args.n); !s.ok()) {
    return s;
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::SiluMul(args),
                           cuda::SiluMul(args, ctx.cuda_stream));
}

absl::Status RoundRowsToBF16(float* x, int64_t ld, int64_t rows, int64_t n,
                             const ExecContext& ctx) {
  absl::Status s = CheckShape("RoundRowsToBF16", rows, n);
  if (!s.ok()) return s;
  if (rows == 0 || n == 0) return absl::OkStatus();
  if (x == nullptr) {
    return absl::InvalidArgumentError("RoundRowsToBF16: x must be non-null");
  }
  if (s = CheckStride("RoundRowsToBF16", "ld", ld, n); !s.ok()) return s;
  return LOCKSTEP_DISPATCH(
      ctx, cpu::RoundRowsToBF16(x, ld, rows, n),
      cuda::RoundRowsToBF16(x, ld, rows, n, ctx.cuda_stream));
}

absl::Status AddInPlace(float* y, int64_t ldy, const float* x, int64_t ldx,
                        int64_t rows, int64_t n, const ExecContext& ctx) {
  absl::Status s = CheckShape("AddInPlace", rows, n);
  if (!s.ok()) return s;
  if (rows == 0 || n == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("AddInPlace: x and y must be non-null");
  }
  if (s = CheckStride("AddInPlace", "ldy", ldy, n); !s.ok()) return s;
  if (s = CheckStride("AddInPlace", "ldx", ldx, n); !s.ok()) return s;
  return LOCKSTEP_DISPATCH(
      ctx, cpu::AddInPlace(y, ldy, x, ldx, rows, n),
      cuda::AddInPlace(y, ldy, x, ldx, rows, n, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
