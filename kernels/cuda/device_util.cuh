// Device helpers shared by kernels/cuda/*.cu: element loads/stores for the
// two storage types and block reductions with a FIXED combination tree.
//
// Why fixed trees: a row's result must not depend on the batch. Every
// reduction below combines values in an order that depends only on the
// thread index and the (constant) block size, never on M, the grid size or
// timing; so a row reduces to the same bits alone or in any batch.
#ifndef LOCKSTEP_KERNELS_CUDA_DEVICE_UTIL_CUH_
#define LOCKSTEP_KERNELS_CUDA_DEVICE_UTIL_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lockstep::kernels::cuda {

// bf16 bits -> fp32 (exact).
__device__ __forceinline__ float Bf16BitsToF32(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}

// fp32 -> bf16 bits, round to nearest even.
__device__ __forceinline__ uint16_t F32ToBf16Bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// Element i of a float or bf16 buffer, widened to fp32.
template <typename T>
__device__ __forceinline__ float LoadF32(const T* p, int64_t i);
template <>
__device__ __forceinline__ float LoadF32<float>(const float* p, int64_t i) {
  return p[i];
}
template <>
__device__ __forceinline__ float LoadF32<uint16_t>(const uint16_t* p,
                                                   int64_t i) {
  return Bf16BitsToF32(p[i]);
}

// Stores fp32 v as element i of a float or bf16 buffer.
template <typename T>
__device__ __forceinline__ void StoreF32(T* p, int64_t i, float v);
template <>
__device__ __forceinline__ void StoreF32<float>(float* p, int64_t i, float v) {
  p[i] = v;
}
template <>
__device__ __forceinline__ void StoreF32<uint16_t>(uint16_t* p, int64_t i,
                                                   float v) {
  p[i] = F32ToBf16Bits(v);
}

// Shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy (cp.async.cg), and its group commit / wait
// (at most kN of this thread's groups still pending).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(SmemAddr(smem)), "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int kN>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kN) : "memory");
}

// Sum over a warp by an xor butterfly. After each level the two partners hold
// a+b and b+a, which are equal in IEEE arithmetic, so every lane ends with the
// same bits and the grouping depends only on lane numbers.
__device__ __forceinline__ float WarpSumFixed(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
  }
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  }
  return v;
}

// Block sum with a fixed tree: warp butterflies, then the kWarps warp sums
// combined pairwise ((w0+w1)+(w2+w3))+... by every thread. `scratch` holds
// kWarps floats; returns the sum to all threads. Contains __syncthreads.
template <int kWarps>
__device__ __forceinline__ float BlockSumFixed(float v, float* scratch) {
  static_assert((kWarps & (kWarps - 1)) == 0, "power of two warps");
  v = WarpSumFixed(v);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float level[kWarps];
#pragma unroll
  for (int i = 0; i < kWarps; ++i) level[i] = scratch[i];
#pragma unroll
  for (int width = kWarps; width > 1; width >>= 1) {
#pragma unroll
    for (int i = 0; i < width / 2; ++i) {
      level[i] = __fadd_rn(level[2 * i], level[2 * i + 1]);
    }
  }
  __syncthreads();
  return level[0];
}

// Block max (exact in any order). Returns the max to all threads.
template <int kWarps>
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  v = WarpMax(v);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
#pragma unroll
  for (int i = 1; i < kWarps; ++i) m = fmaxf(m, scratch[i]);
  __syncthreads();
  return m;
}

// Monotone map of a float to uint32 (larger float -> larger integer); -0 is
// folded onto +0 so that equal values compare equal.
__device__ __forceinline__ uint32_t OrderedBits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) == 0) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_DEVICE_UTIL_CUH_
