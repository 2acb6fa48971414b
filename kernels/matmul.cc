#include "kernels/matmul.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/matmul.h"
#include "kernels/dispatch.h"

namespace lockstep::kernels {
namespace {

absl::Status CheckSizes(const char* op, int64_t m, int64_t n, int64_t k) {
  if (m < 0 || n < 0 || k < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": negative size (m=", m, ", n=", n, ", k=", k, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckStride(const char* op, const char* name, int64_t ld,
                         int64_t row_len, const char* row_name) {
  if (ld < row_len) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", name, " (", ld,
                                                   ") < ", row_name, " (",
                                                   row_len, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckDType(const char* op, const char* name, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has an unknown dtype"));
  }
  return absl::OkStatus();
}

// Checks that apply to both Matmul and MatmulPacked: x and y.
absl::Status CheckXY(const char* op, const MatmulArgs& a, int64_t n,
                     int64_t k) {
  if (absl::Status s = CheckDType(op, "x", a.x_dtype); !s.ok()) return s;
  if (absl::Status s = CheckDType(op, "y", a.y_dtype); !s.ok()) return s;
  if (absl::Status s = CheckStride(op, "ldx", a.ldx, k, "k"); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckStride(op, "ldy", a.ldy, n, "n"); !s.ok()) {
    return s;
  }
  if (a.m > 0 && n > 0) {
    if (a.x == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": x is null"));
    }
    if (a.y == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": y is null"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Matmul(const MatmulArgs& args, const ExecContext& ctx) {
  if (absl::Status s = CheckSizes("Matmul", args.m, args.n, args.k); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckXY("Matmul", args, args.n, args.k); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckDType("Matmul", "w", args.w_dtype); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckStride("Matmul", "ldw", args.ldw, args.k, "k");
      !s.ok()) {
    return s;
  }
  if (args.m > 0 && args.n > 0 && args.w == nullptr) {
    return absl::InvalidArgumentError("Matmul: w is null");
  }
  if (args.m == 0 || args.n == 0) return absl::OkStatus();
  return LOCKSTEP_DISPATCH(ctx, cpu::Matmul(args),
                           cuda::Matmul(args, ctx.cuda_stream));
}

absl::StatusOr<std::shared_ptr<const PackedWeight>> PackedWeight::Pack(
    const void* w, DType w_dtype, int64_t ldw, int64_t n, int64_t k) {
  if (absl::Status s = CheckSizes("PackedWeight::Pack", 0, n, k); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckDType("PackedWeight::Pack", "w", w_dtype);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckStride("PackedWeight::Pack", "ldw", ldw, k, "k");
      !s.ok()) {
    return s;
  }
  if (w == nullptr && n > 0 && k > 0) {
    return absl::InvalidArgumentError("PackedWeight::Pack: w is null");
  }
  return cpu::PackWeight(w, w_dtype, ldw, n, k);
}

absl::Status MatmulPacked(const MatmulArgs& args, const PackedWeight& w) {
  if (absl::Status s = CheckSizes("MatmulPacked", args.m, w.n(), w.k());
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckXY("MatmulPacked", args, w.n(), w.k()); !s.ok()) {
    return s;
  }
  if (args.m == 0 || w.n() == 0) return absl::OkStatus();
  return cpu::MatmulPacked(args, w);
}

}  // namespace lockstep::kernels
