// Row-wise RMSNorm: y = x / sqrt(mean(x²) + eps) * weight.
//
// Contract: per row, ss = 0; for j in 0..n-1: ss = fma(x[j], x[j], ss)
// (index order, fp32); inv = 1 / sqrtf(ss / n + eps); y[j] = (x[j] * inv) *
// weight[j]. Rows are independent, so batching never changes a row's bits.
#ifndef LOCKSTEP_KERNELS_RMS_NORM_H_
#define LOCKSTEP_KERNELS_RMS_NORM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace lockstep::kernels {

struct RmsNormArgs {
  const float* x = nullptr;       // [rows, n], row stride ldx
  int64_t ldx = 0;
  const void* weight = nullptr;   // [n]
  DType weight_dtype = DType::kF32;
  float* y = nullptr;             // [rows, n], row stride ldy; may equal x
  int64_t ldy = 0;
  int64_t rows = 0;
  int64_t n = 0;
  float eps = 1e-6f;
};

absl::Status RmsNorm(const RmsNormArgs& args, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_RMS_NORM_H_
