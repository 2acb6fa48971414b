#include "kernels/cpu/rms_norm.h"

#include <cmath>
#include <cstdint>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cpu {
namespace {

// The sum of squares is a sequential fma chain (the contract's order); the
// FMA-target copy only replaces the libm fmaf call by the instruction, which
// rounds identically.
[[gnu::always_inline]] inline float SumSquaresBody(const float* x, int64_t n) {
  float ss = 0.0f;
  for (int64_t j = 0; j < n; ++j) ss = std::fmaf(x[j], x[j], ss);
  return ss;
}

float SumSquaresScalar(const float* x, int64_t n) {
  return SumSquaresBody(x, n);
}

[[gnu::target("avx2,fma")]] float SumSquaresFma(const float* x, int64_t n) {
  return SumSquaresBody(x, n);
}

using SumSquaresFn = float (*)(const float*, int64_t);

void NormRow(SumSquaresFn sum_squares, const float* x, const void* weight,
             DType weight_dtype, float* y, int64_t n, float eps) {
  const float ss = sum_squares(x, n);
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

SumSquaresFn ActiveSumSquares() {
  return ActiveSimdLevel() >= SimdLevel::kAvx2 ? &SumSquaresFma : &SumSquaresScalar;
}

}  // namespace

void RmsNormRow(const float* x, const void* weight, DType weight_dtype, float* y,
                int64_t n, float eps) {
  NormRow(ActiveSumSquares(), x, weight, weight_dtype, y, n, eps);
}

absl::Status RmsNorm(const RmsNormArgs& args) {
  if (args.rows == 0) return absl::OkStatus();
  // Enough rows per task to amortise the pool hand-off on narrow rows.
  const int64_t grain = args.n >= 4096 ? 1 : 4096 / args.n;
  const SumSquaresFn sum_squares = ActiveSumSquares();
  ParallelFor(args.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      NormRow(sum_squares, args.x + r * args.ldx, args.weight,
              args.weight_dtype, args.y + r * args.ldy, args.n, args.eps);
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
