// The arithmetic of sampling, written once for the CPU and the GPU: Philox,
// the uniforms and Gumbel noise, and an exp and a log built from IEEE
// +, -, *, / and floor only. The project compiles host code with
// -ffp-contract=off and device code with -fmad=false, so every function here
// returns the same bits on both: the CPU and CUDA samplers (and the learner
// scoring a sampled token) make the same decisions from the same logits.
// Libm's exp/log (glibc on the host, CUDA's libdevice on the GPU) are not
// used: they round differently in the last place.
#ifndef LOCKSTEP_KERNELS_SAMPLING_MATH_H_
#define LOCKSTEP_KERNELS_SAMPLING_MATH_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LOCKSTEP_HD __host__ __device__ __forceinline__
#else
#define LOCKSTEP_HD inline
#endif

namespace lockstep::kernels::sampling_math {

// Philox4x32-10 (Salmon et al. 2011): counter c, key (k0, k1) -> 4 words.
struct Words4 {
  uint32_t w[4];
};

LOCKSTEP_HD Words4 Philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                          uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  return Words4{{c0, c1, c2, c3}};
}

// The two Philox words that drive vocabulary entry j at `position` of the
// stream `key`: counter (position lo, position hi, j / 2, 0), words
// 2 (j % 2) and 2 (j % 2) + 1 as (hi, lo) of a 64-bit value.
LOCKSTEP_HD uint64_t StreamBits(uint64_t key, int64_t position, int64_t j) {
  const uint64_t pos = static_cast<uint64_t>(position);
  const Words4 w = Philox(static_cast<uint32_t>(pos),
                          static_cast<uint32_t>(pos >> 32),
                          static_cast<uint32_t>(j >> 1), 0u,
                          static_cast<uint32_t>(key),
                          static_cast<uint32_t>(key >> 32));
  const int i = static_cast<int>(j & 1) * 2;
  return (static_cast<uint64_t>(w.w[i]) << 32) | w.w[i + 1];
}

// Uniform with 52 random bits: ((bits >> 12) + 0.5) * 2^-52, exact in double
// and inside [2^-53, 1 - 2^-53].
LOCKSTEP_HD double UniformFromBits(uint64_t bits) {
  return (static_cast<double>(bits >> 12) + 0.5) * 2.220446049250313e-16;
}

LOCKSTEP_HD uint64_t DoubleBits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

LOCKSTEP_HD double DoubleFromBits(uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits
constexpr double kLn2Lo = 1.90821492927058770002e-10;  // ln 2 - kLn2Hi
constexpr double kInvLn2 = 1.44269504088896338700e+00;

// Natural log for finite x > 0 (subnormals included): x = 2^k m with
// m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
// by its series to s^23 (|s| <= 0.1716: truncation < 2^-60). A few ulps from
// the correctly rounded value; -inf at 0, NaN below 0 or for NaN, +inf at
// +inf.
LOCKSTEP_HD double PortableLog(double x) {
  if (!(x > 0.0)) {
    return DoubleFromBits(x == 0.0 ? 0xfff0000000000000ull    // -inf
                                   : 0x7ff8000000000000ull);  // NaN
  }
  if (x > 1.7976931348623157e308) return x;  // +inf
  int k = 0;
  if (x < 2.2250738585072014e-308) {  // subnormal: scale by 2^54
    x = x * 18014398509481984.0;
    k = -54;
  }
  const uint64_t b = DoubleBits(x);
  k += static_cast<int>((b >> 52) & 0x7ff) - 1023;
  double m = DoubleFromBits((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  if (m > 1.4142135623730951) {
    m = m * 0.5;
    k += 1;
  }
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double s2 = s * s;
  double p = 1.0 / 23.0;
  p = p * s2 + 1.0 / 21.0;
  p = p * s2 + 1.0 / 19.0;
  p = p * s2 + 1.0 / 17.0;
  p = p * s2 + 1.0 / 15.0;
  p = p * s2 + 1.0 / 13.0;
  p = p * s2 + 1.0 / 11.0;
  p = p * s2 + 1.0 / 9.0;
  p = p * s2 + 1.0 / 7.0;
  p = p * s2 + 1.0 / 5.0;
  p = p * s2 + 1.0 / 3.0;
  // log m = 2 s + 2 s s2 p; f - s f = 2 s exactly in real arithmetic, the
  // form below keeps the leading term f.
  const double two_s = 2.0 * s;
  const double log_m = two_s + two_s * (s2 * p);
  const double kd = static_cast<double>(k);
  return kd * kLn2Hi + (log_m + kd * kLn2Lo);
}

// e^x for x <= 0 (the sampler only needs differences from a maximum):
// x = k ln2 + r, |r| <= ln2 / 2, e^r by its Taylor series to r^13
// (truncation < 2^-57), times 2^k. 0 below -708 (no subnormal results),
// 1 at 0, NaN for NaN; x > 0 is clamped to 0 (returns 1).
LOCKSTEP_HD double PortableExpNonPositive(double x) {
  if (x != x) return x;
  if (x >= 0.0) return 1.0;
  if (x < -708.0) return 0.0;
  const double kd = static_cast<double>(
      static_cast<int64_t>(x * kInvLn2 - 0.5));  // round half down, x < 0
  const double r = (x - kd * kLn2Hi) - kd * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int k = static_cast<int>(kd);  // in [-1022, 0]
  return p * DoubleFromBits(static_cast<uint64_t>(k + 1023) << 52);
}

// Step 1 of kernels/sampling.h for one entry (a LogitAdjustment's fields):
// v + bias, then v / repetition when positive, v * repetition otherwise
// (unless repetition is 1), then - subtract; banned entries are -inf.
LOCKSTEP_HD float AdjustedLogit(float v, float bias, float repetition, float subtract,
                                bool banned) {
  if (banned) {
    const uint32_t neg_inf = 0xff800000u;
    float f;
#if defined(__CUDA_ARCH__)
    f = __int_as_float(static_cast<int>(neg_inf));
#else
    std::memcpy(&f, &neg_inf, sizeof f);
#endif
    return f;
  }
  v = v + bias;
  if (repetition != 1.0f) v = v > 0.0f ? v / repetition : v * repetition;
  return v - subtract;
}

// Gumbel noise -log(-log u) of the stream's uniform for entry j.
LOCKSTEP_HD double Gumbel(uint64_t key, int64_t position, int64_t j) {
  const double u = UniformFromBits(StreamBits(key, position, j));
  return -PortableLog(-PortableLog(u));
}

// Probability masses as integers: m_j = floor(e^(z_j - z_max) * 2^44), so
// sums are exact and independent of their order (rows of at most 2^19
// entries cannot overflow 64 bits).
constexpr double kMassScale = 17592186044416.0;  // 2^44
constexpr int64_t kMaxSampleVocab = int64_t{1} << 19;

LOCKSTEP_HD uint64_t Mass(float z, double z_max) {
  const double e = PortableExpNonPositive(static_cast<double>(z) - z_max);
  return static_cast<uint64_t>(e * kMassScale);
}

// Strict order of the kept-set prefix: value descending, ties lower index
// first; NaN after every number. As a single unsigned key (larger = earlier).
// -0 is folded onto +0: they are equal values, so their order is by index
// (as the learner's mask a_j > a_last || (a_j == a_last && j <= last) has it).
LOCKSTEP_HD uint32_t OrderedFloatBits(float x) {
  uint32_t b;
#if defined(__CUDA_ARCH__)
  b = static_cast<uint32_t>(__float_as_int(x));
#else
  std::memcpy(&b, &x, sizeof b);
#endif
  if ((b & 0x7fffffffu) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

LOCKSTEP_HD uint64_t OrderKey(float x, int64_t j) {
  const uint32_t hi = (x != x) ? 0u : OrderedFloatBits(x);
  return (static_cast<uint64_t>(hi) << 32) |
         (0xFFFFFFFFull - static_cast<uint64_t>(j));
}

// The logprob of a kept token under the renormalised distribution:
// (z_t - z_max) - log(M_kept * 2^-44), computed in double, rounded once.
LOCKSTEP_HD float KeptLogprob(float z_t, double z_max, uint64_t kept_mass) {
  const double log_sum =
      PortableLog(static_cast<double>(kept_mass) / kMassScale);
  return static_cast<float>((static_cast<double>(z_t) - z_max) - log_sum);
}

}  // namespace lockstep::kernels::sampling_math

#endif  // LOCKSTEP_KERNELS_SAMPLING_MATH_H_
