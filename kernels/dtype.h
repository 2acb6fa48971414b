// Element types the invariant kernels read and write, and exact conversions
// between them.
#ifndef LOCKSTEP_KERNELS_DTYPE_H_
#define LOCKSTEP_KERNELS_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string_view>

namespace lockstep::kernels {

// Storage type of a tensor. Arithmetic is always fp32. The kernels read and
// write kF32 and kBF16 only (their entry points refuse kF16); kF16 exists
// for checkpoint files, whose fp16 weights are widened to fp32 at load.
enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Bytes per element of `dtype`.
inline constexpr int64_t DTypeSize(DType dtype) {
  return dtype == DType::kF32 ? 4 : 2;
}

// "f32" / "bf16" / "f16".
inline constexpr std::string_view DTypeName(DType dtype) {
  return dtype == DType::kF32 ? "f32" : dtype == DType::kBF16 ? "bf16" : "f16";
}

// IEEE binary16 bits -> fp32 (exact: every fp16 value, subnormals, infinities
// and NaN included, is an fp32 value).
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);  // 127 - 15 = 112
  } else if (mant == 0) {
    u = sign;  // +-0
  } else {
    // Subnormal: normalise the mantissa.
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    u = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Widens `n` fp16 values at `src` to fp32 at `dst` ([n * 2] and [n * 4]
// bytes, little-endian; either may be unaligned, e.g. inside a mapped
// safetensors file). Exact.
inline void WidenF16ToF32(const uint8_t* src, int64_t n, uint8_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof(h));
    const float f = F16ToF32(h);
    std::memcpy(dst + 4 * i, &f, sizeof(f));
  }
}

// fp32 -> IEEE binary16 bits, round to nearest even; overflow gives inf, NaN
// stays a quiet NaN.
inline uint16_t F32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // fp16 subnormal or zero: the value in units of 2^-24, rounded to even.
    if (abs < 0x33000000u) return sign;  // < 2^-25: rounds to 0
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 2^-24 units: mant >> (shift)
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t r = abs - 0x38000000u;  // rebias 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
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
  if (dtype == DType::kF16) return F16ToF32(static_cast<const uint16_t*>(p)[i]);
  return BF16ToF32(static_cast<const uint16_t*>(p)[i]);
}

// Writes fp32 `v` to element `i` of a buffer of `dtype` (rounding for bf16
// and fp16).
inline void StoreFromF32(void* p, DType dtype, int64_t i, float v) {
  if (dtype == DType::kF32) {
    static_cast<float*>(p)[i] = v;
  } else if (dtype == DType::kF16) {
    static_cast<uint16_t*>(p)[i] = F32ToF16(v);
  } else {
    static_cast<uint16_t*>(p)[i] = F32ToBF16(v);
  }
}

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_DTYPE_H_
