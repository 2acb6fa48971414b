// Fused row-wise kernels (kernels/fused.h). Each reproduces the arithmetic of
// the single kernels it replaces element by element: AddRmsNorm and the
// QK-norm of HeadNormRope use rms_norm.cu's block of 256 threads, its
// element-to-thread map (4-element groups at 4t + 1024i, fma in index order)
// and BlockSumFixed's tree, so a row's sum of squares is the same bits;
// RoPE's cos/sin and rotation are rope.cu's expressions; SwiGLU is
// activation.cu's. The bf16 casts are F32ToBf16Bits (round to nearest even),
// the cast LibTorch's to(bfloat16) applies on the GPU.
#include "kernels/cuda/fused.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 256;  // rms_norm.cu's block: part of the tree
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 4;

__device__ __forceinline__ float R(float v, bool round) {
  return round ? Bf16BitsToF32(F32ToBf16Bits(v)) : v;
}

struct AddRmsNormParams {
  float* h;
  int64_t ldh;
  const float* delta;
  int64_t ld_delta;
  const void* weight;
  void* y;
  int64_t ldy;
  int64_t rows;
  int64_t n;
  float eps;
  bool round;
};

template <typename WT, typename YT>
__global__ void __launch_bounds__(kThreads) AddRmsNormKernel(const AddRmsNormParams p) {
  __shared__ float scratch[kWarps];
  const WT* w = static_cast<const WT*>(p.weight);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    float* h = p.h + row * p.ldh;
    const float* d = p.delta == nullptr ? nullptr : p.delta + row * p.ld_delta;
    YT* y = static_cast<YT*>(p.y) + row * p.ldy;
    float ss = 0.0f;
    for (int64_t base = kGroup * threadIdx.x; base < p.n; base += kGroup * kThreads) {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (base + c < p.n) {
          float v = h[base + c];
          if (d != nullptr) {
            v = R(__fadd_rn(v, R(d[base + c], p.round)), p.round);
            h[base + c] = v;
          }
          ss = __fmaf_rn(v, v, ss);
        }
      }
    }
    ss = BlockSumFixed<kWarps>(ss, scratch);
    const float inv = __fdiv_rn(
        1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(p.n)), p.eps)));
    // Each thread re-reads only the elements it wrote itself.
    for (int64_t base = kGroup * threadIdx.x; base < p.n; base += kGroup * kThreads) {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        const int64_t j = base + c;
        if (j < p.n) {
          StoreF32<YT>(y, j, R(__fmul_rn(__fmul_rn(h[j], inv), LoadF32<WT>(w, j)), p.round));
        }
      }
    }
    __syncthreads();
  }
}

struct HeadNormRopeParams {
  float* x;
  int64_t ldx;
  const int32_t* positions;
  int64_t tokens;
  int64_t heads;
  int64_t head_dim;
  const void* norm_weight;  // null: no norm
  float eps;
  const double* inv_freq;
  double scale;
  bool round;
};

// One block per (token, head): the head's row goes through the RmsNorm
// block's element map and tree, then is rotated through shared memory
// (pair i and i + half belong to different threads).
template <typename WT>
__global__ void __launch_bounds__(kThreads) HeadNormRopeKernel(const HeadNormRopeParams p) {
  extern __shared__ float row_smem[];  // [head_dim]
  __shared__ float scratch[kWarps];
  const WT* w = static_cast<const WT*>(p.norm_weight);
  const int64_t half = p.head_dim / 2;
  const int64_t items = p.tokens * p.heads;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t t = item / p.heads;
    const int64_t hd = item - t * p.heads;
    float* xh = p.x + t * p.ldx + hd * p.head_dim;
    float ss = 0.0f;
    for (int64_t base = kGroup * threadIdx.x; base < p.head_dim; base += kGroup * kThreads) {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (base + c < p.head_dim) {
          const float v = R(xh[base + c], p.round);
          row_smem[base + c] = v;
          ss = __fmaf_rn(v, v, ss);
        }
      }
    }
    if (w != nullptr) {
      // BlockSumFixed syncs, so every thread takes part in it.
      ss = BlockSumFixed<kWarps>(ss, scratch);
      const float inv = __fdiv_rn(
          1.0f,
          __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(p.head_dim)), p.eps)));
      for (int64_t base = kGroup * threadIdx.x; base < p.head_dim;
           base += kGroup * kThreads) {
#pragma unroll
        for (int c = 0; c < kGroup; ++c) {
          const int64_t j = base + c;
          if (j < p.head_dim) {
            row_smem[j] = R(__fmul_rn(__fmul_rn(row_smem[j], inv), LoadF32<WT>(w, j)), p.round);
          }
        }
      }
    }
    __syncthreads();
    const int32_t pos = p.positions[t];
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      float c;
      float s;
      if (pos < 0) {
        c = s = __int_as_float(0x7fc00000);
      } else {
        const double angle = static_cast<double>(pos) * p.inv_freq[i];
        c = static_cast<float>(cos(angle) * p.scale);
        s = static_cast<float>(sin(angle) * p.scale);
      }
      const float a = row_smem[i];
      const float b = row_smem[i + half];
      xh[i] = R(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)), p.round);
      xh[i + half] = R(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)), p.round);
    }
    __syncthreads();
  }
}

struct SiluMulRoundParams {
  const float* gate;
  int64_t ld_gate;
  const float* up;
  int64_t ld_up;
  void* out;
  int64_t ld_out;
  int64_t rows;
  int64_t n;
  bool round;
};

template <typename OT>
__global__ void SiluMulRoundKernel(const SiluMulRoundParams p) {
  const int64_t total = p.rows * p.n;
  OT* out = static_cast<OT*>(p.out);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.n;
    const int64_t c = i - r * p.n;
    const float g = R(p.gate[r * p.ld_gate + c], p.round);
    const float u = R(p.up[r * p.ld_up + c], p.round);
    const float s = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
    StoreF32<OT>(out, r * p.ld_out + c, R(__fmul_rn(s, u), p.round));
  }
}

int RowGrid(int64_t rows) {
  return static_cast<int>(std::min<int64_t>(rows, SmCount() * 16LL));
}

}  // namespace

absl::Status AddRmsNorm(const AddRmsNormArgs& args, void* stream) {
  if (args.rows <= 0 || args.n <= 0) return absl::OkStatus();
  const AddRmsNormParams p{args.h, args.ldh, args.delta, args.ld_delta, args.weight, args.y,
                           args.ldy, args.rows, args.n, args.eps, args.round_bf16};
  const int grid = RowGrid(args.rows);
  cudaStream_t s = AsStream(stream);
  const bool wb = args.weight_dtype == DType::kBF16, yb = args.y_dtype == DType::kBF16;
  if (wb && yb) {
    AddRmsNormKernel<uint16_t, uint16_t><<<grid, kThreads, 0, s>>>(p);
  } else if (wb) {
    AddRmsNormKernel<uint16_t, float><<<grid, kThreads, 0, s>>>(p);
  } else if (yb) {
    AddRmsNormKernel<float, uint16_t><<<grid, kThreads, 0, s>>>(p);
  } else {
    AddRmsNormKernel<float, float><<<grid, kThreads, 0, s>>>(p);
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("AddRmsNormKernel");
  return absl::OkStatus();
}

absl::Status HeadNormRope(const HeadNormRopeArgs& args, void* stream) {
  if (args.tokens <= 0 || args.heads <= 0) return absl::OkStatus();
  const HeadNormRopeParams p{args.x,           args.ldx,  args.positions,
                             args.tokens,      args.heads, args.head_dim,
                             args.norm_weight, args.eps,   args.inv_freq,
                             args.attention_factor, args.round_bf16};
  const size_t smem = static_cast<size_t>(args.head_dim) * sizeof(float);
  if (smem > 48 * 1024) return absl::InvalidArgumentError("HeadNormRope: head_dim too large");
  const int grid = RowGrid(args.tokens * args.heads);
  cudaStream_t s = AsStream(stream);
  if (args.norm_weight != nullptr && args.norm_dtype == DType::kBF16) {
    HeadNormRopeKernel<uint16_t><<<grid, kThreads, smem, s>>>(p);
  } else {
    HeadNormRopeKernel<float><<<grid, kThreads, smem, s>>>(p);
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("HeadNormRopeKernel");
  return absl::OkStatus();
}

absl::Status SiluMulRound(const SiluMulRoundArgs& args, void* stream) {
  if (args.rows <= 0 || args.n <= 0) return absl::OkStatus();
  const SiluMulRoundParams p{args.gate, args.ld_gate, args.up, args.ld_up, args.out,
                             args.ld_out, args.rows, args.n, args.round_bf16};
  const int64_t total = args.rows * args.n;
  const int grid =
      static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, SmCount() * 8LL));
  cudaStream_t s = AsStream(stream);
  if (args.out_dtype == DType::kBF16) {
    SiluMulRoundKernel<uint16_t><<<grid, kThreads, 0, s>>>(p);
  } else {
    SiluMulRoundKernel<float><<<grid, kThreads, 0, s>>>(p);
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("SiluMulRoundKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
