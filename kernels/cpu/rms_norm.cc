#include "kernels/cpu/rms_norm.h"

#include <cmath>
#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/threading.h"

namespace lockstep::kernels::cpu {
namespace {

void NormRow(const float* x, const void* weight, DType weight_dtype,
             float* y, int64_t n, float eps) {
  float ss = 0.0f;
  for (int64_t j = 0; j < n; ++j) ss = std::fmaf(x[j], x[j], ss);
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  // y may alias x: every x[j] is read before y[j] is written, and the sum of
  // squares is complete before the first write.
  if (weight_dtype == DType::kF32) {
    const float* w = static_cast<const float*>(weight);
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] * inv) * w[j];
  } else {
    const uint16_t* w = static_cast<const uint16_t*>(weight);
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] * inv) * BF16ToF32(w[j]);
  }
}

}  // namespace

absl::Status RmsNorm(const RmsNormArgs& args) {
  if (args.rows == 0) return absl::OkStatus();
  // Enough rows per task to amortise the pool hand-off on narrow rows.
  const int64_t grain = args.n >= 4096 ? 1 : 4096 / args.n;
  ParallelFor(args.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      NormRow(args.x + r * args.ldx, args.weight, args.weight_dtype,
              args.y + r * args.ldy, args.n, args.eps);
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
