// Tests of the exact element conversions in kernels/dtype.h, fp16 in
// particular (fp16 checkpoints are widened to fp32 with F16ToF32).

#include "kernels/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "gtest/gtest.h"
#include "kernels/matmul.h"

namespace lockstep::kernels {
namespace {

// IEEE binary16 decoded with ldexp: an independent reference.
double DecodeF16(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? std::nan("") : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(DTypeTest, F16ToF32IsExactForEveryBitPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const double want = DecodeF16(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << h;
      continue;
    }
    EXPECT_EQ(static_cast<double>(f), want) << h;
    EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    // And back: every fp16 value survives the round trip bit for bit.
    EXPECT_EQ(F32ToF16(f), h) << h;
  }
}

TEST(DTypeTest, F32ToF16RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1).
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3*2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9: up.
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);   // largest finite
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);   // still rounds down
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);   // rounds to infinity
  EXPECT_EQ(F32ToF16(-1e9f), 0xfc00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);       // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);       // tie to even: 0
  EXPECT_EQ(F32ToF16(std::ldexp(1.5f, -25)), 0x0001);       // above the tie
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);       // 1.5 ulp: tie to even 2
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400);       // smallest normal
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::nanf("")) & 0x7e00, 0x7e00);
  float v = 0.1f;
  uint16_t h = F32ToF16(v);
  // The nearest fp16 of 0.1: no other fp16 is closer.
  const double err = std::fabs(DecodeF16(h) - v);
  EXPECT_LE(err, std::fabs(DecodeF16(h + 1) - v));
  EXPECT_LE(err, std::fabs(DecodeF16(h - 1) - v));
  EXPECT_EQ(LoadAsF32(&h, DType::kF16, 0), F16ToF32(h));
  uint16_t out = 0;
  StoreFromF32(&out, DType::kF16, 0, v);
  EXPECT_EQ(out, h);
  EXPECT_EQ(DTypeSize(DType::kF16), 2);
  EXPECT_EQ(DTypeName(DType::kF16), "f16");
}

// The kernels compute on fp32/bf16 only: an fp16 operand is refused, not
// misread as bf16.
TEST(DTypeTest, KernelsRefuseF16) {
  uint16_t x[4] = {0, 0, 0, 0};
  float y[4];
  MatmulArgs a;
  a.x = x;
  a.x_dtype = DType::kF16;
  a.ldx = 2;
  a.w = x;
  a.w_dtype = DType::kBF16;
  a.ldw = 2;
  a.y = y;
  a.y_dtype = DType::kF32;
  a.ldy = 2;
  a.m = 2;
  a.n = 2;
  a.k = 2;
  EXPECT_EQ(Matmul(a).code(), absl::StatusCode::kInvalidArgument);
  a.x_dtype = DType::kBF16;
  a.w_dtype = DType::kF16;
  EXPECT_EQ(Matmul(a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lockstep::kernels
