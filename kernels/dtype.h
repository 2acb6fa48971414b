// Element types the invariant kernels read and write, and exact conversions
// between them.
#ifndef LOCKSTEP_KERNELS_DTYPE_H_
#define LOCKSTEP_KERNELS_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string_view>

namespace lockstep::kernels {

// Storage type of a tensor. Arithmetic is always fp32.
enum class DType : int { kF32 = 0, kBF16 = 1 };

// Bytes per element of `dtype`.
inline constexpr int64_t DTypeSize(DType dtype) {
  return dtype == DType::kF32 ? 4 : 2;
}

// "f32" / "bf16".
inline constexpr std::string_view DTypeName(DType dtype) {
  return dtype == DType::kF32 ? "f32" : "bf16";
}

// bf16 bits -> fp32 (exact).
inline float BF16ToF32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// fp32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t F32ToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// fp32 value rounded to the nearest bf16 value, kept in fp32.
inline float RoundToBF16(float f) { return BF16ToF32(F32ToBF16(f)); }

// Reads element `i` of a buffer of `dtype` as fp32.
inline float LoadAsF32(const void* p, DType dtype, int64_t i) {
  if (dtype == DType::kF32) return static_cast<const float*>(p)[i];
  return BF16ToF32(static_cast<const uint16_t*>(p)[i]);
}

// Writes fp32 `v` to element `i` of a buffer of `dtype` (rounding for bf16).
inline void StoreFromF32(void* p, DType dtype, int64_t i, float v) {
  if (dtype == DType::kF32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = F32ToBF16(v);
  }
}

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_DTYPE_H_
