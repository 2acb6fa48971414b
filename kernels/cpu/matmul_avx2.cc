// AVX2+FMA microkernels of the CPU matmul: 8 output columns per vector, one
// fma chain per output element in k order (see kernels/cpu/matmul.h).

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cpu/matmul.h"

namespace lockstep::kernels::cpu {
namespace {

#define LOCKSTEP_AVX2_TARGET __attribute__((target("avx2,fma")))

constexpr int kW = 8;

template <bool kBf16>
LOCKSTEP_AVX2_TARGET inline __m256 LoadB(const void* b, int64_t off) {
  if constexpr (kBf16) {
    // bf16 -> fp32 is exact: the bf16 bits become the high half.
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
        static_cast<const uint16_t*>(b) + off));
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(b) + off);
  }
}

template <int MR, int NV, bool kBf16>
LOCKSTEP_AVX2_TARGET void Kernel(int64_t k, const float* a, const void* b,
                                 int64_t ps, float* c) {
  using T = std::conditional_t<kBf16, uint16_t, float>;
  const T* bp = static_cast<const T*>(b);
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    __m256 bv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      bv[v] = LoadB<kBf16>(bp, (v * kW / kPanelWidth) * ps +
                                   (v * kW) % kPanelWidth);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
      }
    }
    a += MR;
    bp += kPanelWidth;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      _mm256_storeu_ps(c + (r * NV + v) * kW, acc[r][v]);
    }
  }
}

// Accumulators plus loaded weight vectors sized for the 16 ymm registers.
template <bool kBf16>
KernelSet MakeSet() {
  KernelSet s;
  s.vector_width = kW;
  s.max_rows = 6;
  s.narrow_vectors = 2;
  s.wide_vectors[1] = 8;
  s.wide[1] = &Kernel<1, 8, kBf16>;
  s.wide_vectors[2] = 4;
  s.wide[2] = &Kernel<2, 4, kBf16>;
  s.wide_vectors[3] = 4;
  s.wide[3] = &Kernel<3, 4, kBf16>;
  s.wide_vectors[4] = 2;
  s.wide[4] = &Kernel<4, 2, kBf16>;
  s.wide_vectors[5] = 2;
  s.wide[5] = &Kernel<5, 2, kBf16>;
  s.wide_vectors[6] = 2;
  s.wide[6] = &Kernel<6, 2, kBf16>;
  s.narrow[1] = &Kernel<1, 2, kBf16>;
  s.narrow[2] = &Kernel<2, 2, kBf16>;
  s.narrow[3] = &Kernel<3, 2, kBf16>;
  s.narrow[4] = &Kernel<4, 2, kBf16>;
  s.narrow[5] = &Kernel<5, 2, kBf16>;
  s.narrow[6] = &Kernel<6, 2, kBf16>;
  return s;
}

}  // namespace

const KernelSet& Avx2Kernels(bool w_bf16) {
  static const KernelSet f32 = MakeSet<false>();
  static const KernelSet bf16 = MakeSet<true>();
  return w_bf16 ? bf16 : f32;
}

}  // namespace lockstep::kernels::cpu
