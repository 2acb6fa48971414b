// Sampling on the GPU: Philox4x32-10 Gumbel-max (the same counter-based
// stream as the CPU's PhiloxUniform, bit for bit), top-k / top-p filtering
// and argmax, one row per block of a constant 1024 threads.
//
// Filtering defines the kept set as a prefix of the order "logit descending,
// lower index first" (the CPU's order). Each element gets the unique 64-bit
// key (ordered logit bits << 32) | (2^32-1 - index), so a prefix is "key >=
// threshold" and the threshold is found by an 8-bit radix descent over the
// keys: by counts for top-k, by probability mass for top-p. Masses are
// integers (floor(expf(z - zmax) * 2^40)), so every histogram and sum is
// exact and independent of the order of the atomics: the kept set of a row
// depends only on that row. Top-p compares the prefix mass with
// ceil(top_p * total) on those integers (the CPU compares a float running
// sum; the two can differ only when the prefix sum lands within ~1e-7 of
// top_p). The winner is argmax over kept j of z_j + g_j, ties to the lower
// index, reduced on (ordered value bits, ~index) keys -- again exact.
#include "kernels/cuda/sampling.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ uint4 Philox(uint4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint32_t lo0 = 0xD2511F53u * c.x;
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x);
    const uint32_t lo1 = 0xCD9E8D57u * c.z;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z);
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
  }
  return c;
}

// (w >> 9 + 0.5) * 2^-23: every step exact in fp32, never 0 or 1.
__device__ __forceinline__ float UniformFromWord(uint32_t w) {
  return __fmul_rn(__fadd_rn(static_cast<float>(w >> 9), 0.5f),
                   1.1920928955078125e-7f);
}

__device__ __forceinline__ uint4 PhiloxWords(uint64_t seed, int64_t position,
                                             int64_t group) {
  const uint64_t pos = static_cast<uint64_t>(position);
  return Philox(make_uint4(static_cast<uint32_t>(pos),
                           static_cast<uint32_t>(pos >> 32),
                           static_cast<uint32_t>(group), 0u),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

__device__ __forceinline__ uint32_t Word(const uint4& w, int i) {
  return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w;
}

// Sort key of element j: larger = earlier in "logit desc, index asc"; NaN
// logits sort after every number.
__device__ __forceinline__ uint64_t OrderKey(float x, int64_t j) {
  const uint32_t hi = isnan(x) ? 0u : OrderedBits(x);
  return (static_cast<uint64_t>(hi) << 32) |
         (0xFFFFFFFFull - static_cast<uint64_t>(j));
}

__device__ __forceinline__ unsigned long long WarpMaxU64(unsigned long long v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const unsigned long long o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

// Max of a uint64 over the block (exact, order-free). Contains barriers.
__device__ unsigned long long BlockMaxU64(unsigned long long v,
                                          unsigned long long* scratch) {
  v = WarpMaxU64(v);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  unsigned long long m = scratch[0];
  for (int i = 1; i < kWarps; ++i) m = scratch[i] > m ? scratch[i] : m;
  __syncthreads();
  return m;
}

// Argmax key: NaN never wins unless every value is NaN (then index 0).
__device__ __forceinline__ unsigned long long ArgmaxKey(float x, int64_t j) {
  const uint64_t hi = isnan(x) ? 0ull : static_cast<uint64_t>(OrderedBits(x)) + 1;
  return (hi << 32) | (0xFFFFFFFFull - static_cast<uint64_t>(j));
}

__device__ int32_t RowArgmax(const float* x, int64_t vocab,
                             unsigned long long* scratch) {
  unsigned long long best = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
    const unsigned long long k = ArgmaxKey(x[j], j);
    best = k > best ? k : best;
  }
  best = BlockMaxU64(best, scratch);
  return static_cast<int32_t>(0xFFFFFFFFull - (best & 0xFFFFFFFFull));
}

struct ArgmaxParams {
  const float* logits;
  int64_t ld;
  int64_t rows;
  int64_t vocab;
  int32_t* out;
};

__global__ void __launch_bounds__(kThreads) ArgmaxKernel(const ArgmaxParams p) {
  __shared__ unsigned long long scratch[kWarps];
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const int32_t tok = RowArgmax(p.logits + r * p.ld, p.vocab, scratch);
    if (threadIdx.x == 0) p.out[r] = tok;
  }
}

struct SampleParams {
  const float* logits;
  int64_t ld;
  int64_t rows;
  int64_t vocab;
  const SamplingParams* params;
  const int64_t* positions;
  int32_t* out;
};

struct SampleShared {
  unsigned long long scratch[kWarps];
  unsigned long long hist[256];
  unsigned long long prefix;
  unsigned long long mask;
  unsigned long long remaining;  // top-k: count still to take
  unsigned long long above;      // top-p: mass of keys above the range
  unsigned long long total;      // top-p: total mass
};

// One radix pass: histogram (counts or masses) of digit `shift` among the
// candidates matching the decided prefix, then thread 0 picks the digit.
// by_mass: pick the first digit (from the top) where above + mass >= target;
// else the first where remaining <= count.
__device__ void RadixPass(const float* x, int64_t vocab, float temperature,
                          float zmax, int shift, bool by_mass,
                          unsigned long long target, SampleShared& sh) {
  for (int i = threadIdx.x; i < 256; i += kThreads) sh.hist[i] = 0;
  __syncthreads();
  const unsigned long long prefix = sh.prefix;
  const unsigned long long mask = sh.mask;
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
    const float xv = x[j];
    const uint64_t key = OrderKey(xv, j);
    if ((key & mask) != prefix) continue;
    unsigned long long inc = 1;
    if (by_mass) {
      const float z = __fdiv_rn(xv, temperature);
      const float e = isnan(z) ? 0.0f : expf(__fsub_rn(z, zmax));
      inc = __float2ull_rz(__fmul_rn(e, 1099511627776.0f));  // * 2^40
      if (inc == 0) continue;
    }
    atomicAdd(&sh.hist[(key >> shift) & 255], inc);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int sel = -1;
    for (int d = 255; d >= 0; --d) {
      const unsigned long long h = sh.hist[d];
      if (by_mass) {
        if (sh.above + h >= target) {
          sel = d;
          break;
        }
        sh.above += h;
      } else {
        if (sh.remaining <= h) {
          sel = d;
          break;
        }
        sh.remaining -= h;
      }
    }
    if (sel < 0) sel = 0;  // unreachable with consistent totals
    sh.prefix |= static_cast<unsigned long long>(sel) << shift;
    sh.mask |= 255ull << shift;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) SampleKernel(const SampleParams p) {
  __shared__ SampleShared sh;
  const float kNegInf = -__int_as_float(0x7f800000);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.logits + r * p.ld;
    const SamplingParams sp = p.params[r];
    const int64_t position = p.positions[r];
    const bool bad = !(sp.temperature >= 0.0f) || isinf(sp.temperature) ||
                     !(sp.top_p > 0.0f && sp.top_p <= 1.0f) || sp.top_k < 0;
    if (bad) {
      if (threadIdx.x == 0) p.out[r] = -1;
      continue;
    }
    if (sp.temperature == 0.0f) {
      const int32_t tok = RowArgmax(x, p.vocab, sh.scratch);
      if (threadIdx.x == 0) p.out[r] = tok;
      continue;
    }
    const bool use_k = sp.top_k > 0 && sp.top_k < p.vocab;
    const bool use_p = sp.top_p < 1.0f;
    unsigned long long thresh = 0;
    if (use_k || use_p) {
      // z = x / T exactly as the CPU (division, not a reciprocal multiply)
      // for the masses; zmax over all non-NaN z.
      float zmax = kNegInf;
      if (use_p) {
        float mloc = kNegInf;
        for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
          const float z = __fdiv_rn(x[j], sp.temperature);
          mloc = z > mloc ? z : mloc;
        }
        __shared__ float fscratch[kWarps];
        zmax = BlockMax<kWarps>(mloc, fscratch);
      }
      unsigned long long tk = 0;
      if (use_k) {
        if (threadIdx.x == 0) {
          sh.prefix = 0;
          sh.mask = 0;
          sh.remaining = static_cast<unsigned long long>(sp.top_k);
        }
        __syncthreads();
        for (int shift = 56; shift >= 0; shift -= 8) {
          RadixPass(x, p.vocab, sp.temperature, 0.0f, shift, false, 0, sh);
        }
        tk = sh.prefix;
        __syncthreads();
      }
      unsigned long long tp = 0;
      if (use_p) {
        // Total mass (exact integer sum).
        unsigned long long part = 0;
        for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
          const float z = __fdiv_rn(x[j], sp.temperature);
          const float e = isnan(z) ? 0.0f : expf(__fsub_rn(z, zmax));
          part += __float2ull_rz(__fmul_rn(e, 1099511627776.0f));
        }
        if (threadIdx.x == 0) sh.total = 0;
        __syncthreads();
        atomicAdd(&sh.total, part);
        __syncthreads();
        double tgt = ceil(static_cast<double>(sp.top_p) *
                          static_cast<double>(sh.total));
        unsigned long long target =
            tgt < 1.0 ? 1ull : static_cast<unsigned long long>(tgt);
        if (target > sh.total) target = sh.total;
        __syncthreads();
        if (threadIdx.x == 0) {
          sh.prefix = 0;
          sh.mask = 0;
          sh.above = 0;
        }
        __syncthreads();
        for (int shift = 56; shift >= 0; shift -= 8) {
          RadixPass(x, p.vocab, sp.temperature, zmax, shift, true, target, sh);
        }
        tp = sh.prefix;
        __syncthreads();
      }
      thresh = tk > tp ? tk : tp;
    }
    // Gumbel-max over the kept set; one Philox call per 4 consecutive j.
    unsigned long long best = 0;
    unsigned long long first_kept = 0;
    const int64_t groups = (p.vocab + 3) / 4;
    for (int64_t gi = threadIdx.x; gi < groups; gi += kThreads) {
      const uint4 words = PhiloxWords(sp.seed, position, gi);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t j = gi * 4 + c;
        if (j >= p.vocab) break;
        const float xv = x[j];
        if (OrderKey(xv, j) < thresh) continue;
        const unsigned long long low = 0xFFFFFFFFull - static_cast<uint64_t>(j);
        first_kept = low > first_kept ? low : first_kept;
        const float u = UniformFromWord(Word(words, c));
        const float g = -logf(-logf(u));
        const float k = __fadd_rn(__fdiv_rn(xv, sp.temperature), g);
        if (isnan(k)) continue;
        const unsigned long long key =
            (static_cast<unsigned long long>(OrderedBits(k)) + 1) << 32 | low;
        best = key > best ? key : best;
      }
    }
    best = BlockMaxU64(best, sh.scratch);
    first_kept = BlockMaxU64(first_kept, sh.scratch);
    if (threadIdx.x == 0) {
      const unsigned long long low = best != 0 ? (best & 0xFFFFFFFFull) : first_kept;
      p.out[r] = static_cast<int32_t>(0xFFFFFFFFull - low);
    }
    __syncthreads();
  }
}

__global__ void PhiloxUniformKernel(uint64_t seed, int64_t position,
                                    int64_t count, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 w = PhiloxWords(seed, position, i / 4);
    out[i] = UniformFromWord(Word(w, static_cast<int>(i % 4)));
  }
}

int RowGrid(int64_t rows) {
  return static_cast<int>(std::min<int64_t>(rows, SmCount() * 2LL));
}

}  // namespace

absl::Status Sample(const SampleArgs& args, void* stream) {
  if (args.rows <= 0) return absl::OkStatus();
  cudaStream_t s = AsStream(stream);
  if (!StreamIsCapturing(s)) {
    // Parameters live on the device; check them like the CPU path does (the
    // engine reads the sampled tokens back right after anyway).
    std::vector<SamplingParams> sp(args.rows);
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        sp.data(), args.params, args.rows * sizeof(SamplingParams),
        cudaMemcpyDeviceToHost, s));
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    for (int64_t r = 0; r < args.rows; ++r) {
      if (!std::isfinite(sp[r].temperature) || sp[r].temperature < 0.0f) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Sample: params[", r, "].temperature = ", sp[r].temperature,
            " must be finite and >= 0"));
      }
      if (!(sp[r].top_p > 0.0f && sp[r].top_p <= 1.0f)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Sample: params[", r, "].top_p = ", sp[r].top_p,
            " is not in (0, 1]"));
      }
      if (sp[r].top_k < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Sample: params[", r, "].top_k = ", sp[r].top_k, " < 0"));
      }
    }
  }
  const SampleParams p{args.logits, args.ld,        args.rows,      args.vocab,
                       args.params, args.positions, args.tokens_out};
  SampleKernel<<<RowGrid(args.rows), kThreads, 0, s>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("SampleKernel");
  return absl::OkStatus();
}

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out, void* stream) {
  if (rows <= 0) return absl::OkStatus();
  const ArgmaxParams p{logits, ld, rows, vocab, tokens_out};
  ArgmaxKernel<<<RowGrid(rows), kThreads, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("ArgmaxKernel");
  return absl::OkStatus();
}

absl::Status PhiloxUniformDevice(uint64_t seed, int64_t position,
                                 int64_t count, float* out, void* stream) {
  if (count <= 0) return absl::OkStatus();
  const int grid = static_cast<int>(
      std::min<int64_t>((count + 255) / 256, SmCount() * 8LL));
  PhiloxUniformKernel<<<grid, 256, 0, AsStream(stream)>>>(seed, position,
                                                           count, out);
  LOCKSTEP_CUDA_CHECK_LAUNCH("PhiloxUniformKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
