// Causal attention with the fixed key-block order of attention.h, one code
// path for full-sequence prefill and for the paged cache. Shapes for which
// TcAttentionApplies (bf16 K/V, head_dim 64/128) go to the tensor-core
// kernels of attention_tc.cu instead; this SIMT kernel serves the rest.
//
// One warp owns one (query token, query head) for the whole key range, so a
// query's reduction never depends on which CTA, batch or chunk it sits in.
// Per step the CTA stages 32 keys (two kAttnKeyBlock=16 blocks) of K and V
// in shared memory (cp.async, double-buffered); inside the warp:
//  - lane j computes s_j = dot(q, k_j) for key 32*step + j as a sequential
//    fma chain over d = 0..D-1 (the contract's dot, in index order), then
//    s_j * scale;
//  - block 2*step (lanes 0-15) then block 2*step+1 (lanes 16-31) are merged
//    exactly as the contract says: m' = max(m, block max), alpha =
//    expf(m - m'), l and acc scaled by alpha, then for each key in order
//    l += e_j and acc[d] = fma(e_j, v_j[d], acc[d]) (lane owns d = lane+32i);
//  - out[d] = acc[d] / l.
// Keys beyond the query's position are never visited. The loader (vector or
// scalar, contiguous or paged) only moves bytes; it never changes arithmetic,
// so prefill, decode, chunked prefill and any page layout give equal bits.
#include "kernels/cuda/attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kStepKeys = 2 * kAttnKeyBlock;  // 32: one key per lane
static_assert(kAttnKeyBlock == 16, "the warp layout assumes 16-key blocks");
constexpr int kMaxWarps = 16;

struct AttnParams {
  const float* q;
  int64_t ldq;
  float* out;
  int64_t ldo;
  const void* k;
  const void* v;
  int64_t ldk;  // prefill: elements between consecutive tokens
  // Paged cache (kPaged only).
  const int32_t* positions;
  const int32_t* seq_ids;
  const int32_t* block_tables;
  int64_t num_seqs;
  int64_t max_blocks;
  int64_t page_size;
  int64_t num_pages;
  int tokens;
  int hq;
  int hkv;
  int d;          // head_dim
  int group;      // hq / hkv
  int q_per_cta;  // query tokens per CTA (prefill); 1 when paged
  int row_bytes;  // padded shared-memory row of K or V
  int vec;        // 1: 16-byte cp.async loads are legal
  float scale;
};

// Sequential fma dot of q (fp32, shared) and one K row (shared) over d.
template <typename KvT>
__device__ __forceinline__ float DotRow(const float* q, const uint8_t* krow,
                                        int d, bool vec) {
  float acc = 0.0f;
  const KvT* k = reinterpret_cast<const KvT*>(krow);
  if (vec) {
    // 16-byte loads of K and of q (q rows are 16-byte aligned whenever the
    // vector path is legal); same fma order as the scalar loop.
    constexpr int kPer = 16 / sizeof(KvT);
    for (int base = 0; base < d; base += kPer) {
      const uint4 raw = *reinterpret_cast<const uint4*>(k + base);
      const KvT* e = reinterpret_cast<const KvT*>(&raw);
#pragma unroll
      for (int c = 0; c < kPer; c += 4) {
        const float4 qv = *reinterpret_cast<const float4*>(q + base + c);
        acc = __fmaf_rn(qv.x, LoadF32<KvT>(e, c + 0), acc);
        acc = __fmaf_rn(qv.y, LoadF32<KvT>(e, c + 1), acc);
        acc = __fmaf_rn(qv.z, LoadF32<KvT>(e, c + 2), acc);
        acc = __fmaf_rn(qv.w, LoadF32<KvT>(e, c + 3), acc);
      }
    }
  } else {
    for (int i = 0; i < d; ++i) acc = __fmaf_rn(q[i], LoadF32<KvT>(k, i), acc);
  }
  return acc;
}

// kN consecutive elements of a shared-memory row, widened to fp32, with one
// vector load where the size allows.
template <typename KvT, int kN>
__device__ __forceinline__ void LoadRowVec(const KvT* p, float (&out)[kN]) {
  constexpr int kBytes = kN * static_cast<int>(sizeof(KvT));
  if constexpr (kBytes == 4) {
    const uint32_t raw = *reinterpret_cast<const uint32_t*>(p);
    const KvT* e = reinterpret_cast<const KvT*>(&raw);
#pragma unroll
    for (int c = 0; c < kN; ++c) out[c] = LoadF32<KvT>(e, c);
  } else if constexpr (kBytes == 8) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const KvT* e = reinterpret_cast<const KvT*>(&raw);
#pragma unroll
    for (int c = 0; c < kN; ++c) out[c] = LoadF32<KvT>(e, c);
  } else if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int b = 0; b < kBytes / 16; ++b) {
      const uint4 raw = *reinterpret_cast<const uint4*>(
          reinterpret_cast<const uint8_t*>(p) + 16 * b);
      const KvT* e = reinterpret_cast<const KvT*>(&raw);
#pragma unroll
      for (int c = 0; c < 16 / static_cast<int>(sizeof(KvT)); ++c) {
        out[b * (16 / sizeof(KvT)) + c] = LoadF32<KvT>(e, c);
      }
    }
  } else {
#pragma unroll
    for (int c = 0; c < kN; ++c) out[c] = LoadF32<KvT>(p, c);
  }
}

// kContig: lane owns dims [kNDL*lane, kNDL*lane + kNDL) (D == 32*kNDL, one
// vector load per key); else dims lane + 32*i. Which lane holds which dim
// does not change any dim's fma chain.
template <typename KvT, bool kPaged, int kNDL, bool kContig>
__global__ void __launch_bounds__(kMaxWarps * 32)
    AttentionKernel(const AttnParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int warps = blockDim.x >> 5;
  const int w = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = blockIdx.y;
  float* qs = reinterpret_cast<float*>(smem);
  uint8_t* kv = smem + static_cast<size_t>(warps) * p.d * sizeof(float);
  const int stage_bytes = 2 * kStepKeys * p.row_bytes;  // K then V
  __shared__ int max_pos;
  __shared__ int bad;

  const int qi = w / p.group;
  const int hh = w - qi * p.group;
  const int tok = blockIdx.x * p.q_per_cta + qi;
  const int h = g * p.group + hh;
  const bool active = qi < p.q_per_cta && tok < p.tokens;
  int pos = -1;
  int seq = 0;
  if (active) {
    if constexpr (kPaged) {
      pos = p.positions[tok];
      seq = p.seq_ids[tok];
    } else {
      pos = tok;
    }
  }
  if (threadIdx.x == 0) {
    max_pos = -1;
    bad = 0;
  }
  __syncthreads();
  if constexpr (kPaged) {
    // One token per CTA: validate position, sequence and every page the
    // query will read; a bad entry poisons the output instead of reading
    // out of place.
    if (threadIdx.x == 0 && active) {
      if (pos < 0 || seq < 0 || seq >= p.num_seqs ||
          pos / p.page_size >= p.max_blocks) {
        bad = 1;
      }
    }
    __syncthreads();
    if (!bad && active) {
      const int32_t* bt = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks;
      for (int64_t b = threadIdx.x; b <= pos / p.page_size; b += blockDim.x) {
        const int32_t pg = bt[b];
        if (pg < 0 || pg >= p.num_pages) atomicOr(&bad, 1);
      }
    }
  }
  __syncthreads();
  if (active && lane == 0 && !(kPaged && bad)) atomicMax(&max_pos, pos);
  // Stage this warp's query row.
  if (active) {
    const float* qrow = p.q + static_cast<int64_t>(tok) * p.ldq +
                        static_cast<int64_t>(h) * p.d;
    for (int i = lane; i < p.d; i += 32) qs[w * p.d + i] = qrow[i];
  }
  __syncthreads();
  const int last = max_pos;
  const int steps = last < 0 ? 0 : last / kStepKeys + 1;
  const int64_t kv_head_off = static_cast<int64_t>(g) * p.d;
  const int64_t seq_base = static_cast<int64_t>(seq) * p.max_blocks;

  auto row_offset = [&](int j) -> int64_t {  // element offset of key j
    if constexpr (kPaged) {
      const int ps = static_cast<int>(p.page_size);
      const int64_t page = p.block_tables[seq_base + j / ps];
      const int64_t row = page * ps + j % ps;
      return row * p.hkv * p.d + kv_head_off;
    } else {
      return static_cast<int64_t>(j) * p.ldk + kv_head_off;
    }
  };
  // Row r of a step is staged by the warps-many threads r*warps .. +warps-1:
  // one block-table lookup and address computation per row, then 16-byte
  // copies (or scalar copies when alignment forbids them).
  const int row_threads = warps;
  const int my_row = threadIdx.x / row_threads;
  const int my_sub = threadIdx.x - my_row * row_threads;
  auto load_step = [&](int step, int buf) {
    const int j0 = step * kStepKeys;
    const int rows = min(kStepKeys, last + 1 - j0);
    if (my_row >= rows) return;
    uint8_t* kdst = kv + buf * stage_bytes + my_row * p.row_bytes;
    uint8_t* vdst = kdst + kStepKeys * p.row_bytes;
    const int64_t off = row_offset(j0 + my_row);
    const KvT* ksrc = static_cast<const KvT*>(p.k) + off;
    const KvT* vsrc = static_cast<const KvT*>(p.v) + off;
    if (p.vec) {
      constexpr int kPer = 16 / sizeof(KvT);
      const int chunks = p.d / kPer;
      for (int c = my_sub; c < chunks; c += row_threads) {
        CpAsync16(kdst + 16 * c, ksrc + kPer * c);
        CpAsync16(vdst + 16 * c, vsrc + kPer * c);
      }
    } else {
      KvT* kd = reinterpret_cast<KvT*>(kdst);
      KvT* vd = reinterpret_cast<KvT*>(vdst);
      for (int c = my_sub; c < p.d; c += row_threads) {
        kd[c] = ksrc[c];
        vd[c] = vsrc[c];
      }
    }
  };

  const float kNegInf = -__int_as_float(0x7f800000);
  float m = kNegInf;
  float l = 0.0f;
  float acc[kNDL];
#pragma unroll
  for (int i = 0; i < kNDL; ++i) acc[i] = 0.0f;
  const float* q = qs + w * p.d;

  if (steps > 0) {
    load_step(0, 0);
    CpAsyncCommit();
  }
  for (int s = 0; s < steps; ++s) {
    if (s + 1 < steps) {
      load_step(s + 1, (s + 1) & 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const int j0 = s * kStepKeys;
    if (active && j0 <= pos) {  // warp-uniform
      const uint8_t* kbuf = kv + (s & 1) * stage_bytes;
      const uint8_t* vbuf = kbuf + kStepKeys * p.row_bytes;
      const int j = j0 + lane;
      float sc = kNegInf;
      if (j <= pos) {
        sc = __fmul_rn(DotRow<KvT>(q, kbuf + lane * p.row_bytes, p.d, p.vec),
                       p.scale);
      }
      // Max of each 16-lane half (= each key block); exact in any order.
      float bm = sc;
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {
        bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, off));
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int jb = j0 + half * kAttnKeyBlock;
        if (jb > pos) break;
        const int cnt = min(kAttnKeyBlock, pos - jb + 1);
        const float mblk = __shfl_sync(0xffffffffu, bm, half * kAttnKeyBlock);
        const float mnew = fmaxf(m, mblk);
        const float alpha = m == kNegInf ? 0.0f : expf(__fsub_rn(m, mnew));
        l = __fmul_rn(l, alpha);
#pragma unroll
        for (int i = 0; i < kNDL; ++i) acc[i] = __fmul_rn(acc[i], alpha);
        const float e = expf(__fsub_rn(sc, mnew));
        for (int jj = 0; jj < cnt; ++jj) {
          const float ej = __shfl_sync(0xffffffffu, e, half * kAttnKeyBlock + jj);
          l = __fadd_rn(l, ej);
          const KvT* vrow = reinterpret_cast<const KvT*>(
              vbuf + (half * kAttnKeyBlock + jj) * p.row_bytes);
          if constexpr (kContig) {
            float vv[kNDL];
            LoadRowVec<KvT, kNDL>(vrow + kNDL * lane, vv);
#pragma unroll
            for (int i = 0; i < kNDL; ++i) acc[i] = __fmaf_rn(ej, vv[i], acc[i]);
          } else {
#pragma unroll
            for (int i = 0; i < kNDL; ++i) {
              const int d = lane + 32 * i;
              if (d < p.d) acc[i] = __fmaf_rn(ej, LoadF32<KvT>(vrow, d), acc[i]);
            }
          }
        }
        m = mnew;
      }
    }
    __syncthreads();
  }
  if (active) {
    float* orow = p.out + static_cast<int64_t>(tok) * p.ldo +
                  static_cast<int64_t>(h) * p.d;
    const bool poison = kPaged && bad;
#pragma unroll
    for (int i = 0; i < kNDL; ++i) {
      const int d = kContig ? kNDL * lane + i : lane + 32 * i;
      if (d < p.d) orow[d] = poison ? __int_as_float(0x7fc00000) : __fdiv_rn(acc[i], l);
    }
  }
}

template <typename KvT, bool kPaged>
absl::Status LaunchTyped(const AttnParams& p, int ctas, cudaStream_t stream) {
  const int warps = p.q_per_cta * p.group;
  const size_t smem = static_cast<size_t>(warps) * p.d * sizeof(float) +
                      2 * 2 * kStepKeys * static_cast<size_t>(p.row_bytes);
  const dim3 grid(ctas, p.hkv);
  const int ndl = (p.d + 31) / 32;
  auto launch = [&](auto kernel) -> absl::Status {
    if (smem > 48 * 1024) {
      LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
          static_cast<int>(smem)));
    }
    kernel<<<grid, warps * 32, smem, stream>>>(p);
    LOCKSTEP_CUDA_CHECK_LAUNCH("AttentionKernel");
    return absl::OkStatus();
  };
  // Contiguous dims per lane need D == 32 * kNDL and 16-byte-aligned rows
  // (row_bytes is a multiple of 16).
  const bool contig = p.d % 32 == 0 && (ndl == 1 || ndl == 2 || ndl == 4 || ndl == 8);
  if (contig) {
    if (ndl == 1) return launch(AttentionKernel<KvT, kPaged, 1, true>);
    if (ndl == 2) return launch(AttentionKernel<KvT, kPaged, 2, true>);
    if (ndl == 4) return launch(AttentionKernel<KvT, kPaged, 4, true>);
    return launch(AttentionKernel<KvT, kPaged, 8, true>);
  }
  if (ndl <= 1) return launch(AttentionKernel<KvT, kPaged, 1, false>);
  if (ndl <= 2) return launch(AttentionKernel<KvT, kPaged, 2, false>);
  if (ndl <= 4) return launch(AttentionKernel<KvT, kPaged, 4, false>);
  return launch(AttentionKernel<KvT, kPaged, 8, false>);
}

absl::Status CheckHeads(int64_t hq, int64_t hkv, int64_t d) {
  if (hkv <= 0 || hq % hkv != 0 || hq / hkv > kMaxWarps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention (CUDA): num_q_heads=", hq, " must be a multiple of "
        "num_kv_heads=", hkv, " with at most ", kMaxWarps, " per group"));
  }
  if (d <= 0 || d > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention (CUDA): head_dim=", d, " must be in [1, 256]"));
  }
  if (hkv > 65535) {
    return absl::InvalidArgumentError("attention (CUDA): too many kv heads");
  }
  return absl::OkStatus();
}

int PaddedRowBytes(int64_t d, DType dtype) {
  const int64_t bytes = d * DTypeSize(dtype);
  return static_cast<int>((bytes + 15) / 16 * 16 + 16);
}

struct KvWriteParams {
  void* kc;
  void* vc;
  int64_t cache_rows;  // num_pages * page_size
  int hkv;
  int d;
  const float* k;
  int64_t ldk;
  const float* v;
  int64_t ldv;
  const int64_t* slots;
  int64_t tokens;
};

template <typename T>
__global__ void WriteKvKernel(const KvWriteParams p) {
  const int64_t per = static_cast<int64_t>(p.hkv) * p.d;
  const int64_t total = p.tokens * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / per;
    const int64_t e = i - t * per;
    const int64_t slot = p.slots[t];
    if (slot < 0 || slot >= p.cache_rows) continue;  // invalid: write nothing
    StoreF32<T>(static_cast<T*>(p.kc), slot * per + e, p.k[t * p.ldk + e]);
    StoreF32<T>(static_cast<T*>(p.vc), slot * per + e, p.v[t * p.ldv + e]);
  }
}

}  // namespace

absl::Status WriteKv(const KvWriteArgs& args, void* stream) {
  if (args.tokens <= 0) return absl::OkStatus();
  const PagedKvCache& c = args.cache;
  const KvWriteParams p{c.k,  c.v,  c.num_pages * c.page_size,
                        static_cast<int>(c.num_kv_heads),
                        static_cast<int>(c.head_dim),
                        args.k, args.ldk, args.v, args.ldv, args.slots,
                        args.tokens};
  const int64_t total = args.tokens * c.num_kv_heads * c.head_dim;
  const int grid = static_cast<int>(
      std::min<int64_t>((total + 255) / 256, SmCount() * 16LL));
  if (grid <= 0) return absl::OkStatus();
  if (c.dtype == DType::kBF16) {
    WriteKvKernel<uint16_t><<<grid, 256, 0, AsStream(stream)>>>(p);
  } else {
    WriteKvKernel<float><<<grid, 256, 0, AsStream(stream)>>>(p);
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("WriteKvKernel");
  return absl::OkStatus();
}

absl::Status PagedAttention(const PagedAttentionArgs& args, void* stream) {
  if (args.tokens <= 0) return absl::OkStatus();
  const PagedKvCache& c = args.cache;
  if (absl::Status s = CheckHeads(args.num_q_heads, c.num_kv_heads, c.head_dim);
      !s.ok()) {
    return s;
  }
  if (TcAttentionApplies(c.dtype, c.head_dim, args.num_q_heads / c.num_kv_heads)) {
    return PagedAttentionTc(args, stream);
  }
  AttnParams p{};
  p.q = args.q;
  p.ldq = args.ldq;
  p.out = args.out;
  p.ldo = args.ldo;
  p.k = c.k;
  p.v = c.v;
  p.ldk = 0;
  p.positions = args.positions;
  p.seq_ids = args.seq_ids;
  p.block_tables = args.block_tables;
  p.num_seqs = args.num_seqs;
  p.max_blocks = args.max_blocks_per_seq;
  p.page_size = c.page_size;
  p.num_pages = c.num_pages;
  p.tokens = static_cast<int>(args.tokens);
  p.hq = static_cast<int>(args.num_q_heads);
  p.hkv = static_cast<int>(c.num_kv_heads);
  p.d = static_cast<int>(c.head_dim);
  p.group = p.hq / p.hkv;
  p.q_per_cta = 1;
  p.row_bytes = PaddedRowBytes(c.head_dim, c.dtype);
  const int64_t row_bytes = c.head_dim * DTypeSize(c.dtype);
  p.vec = (row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(c.k) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(c.v) % 16 == 0)
              ? 1
              : 0;
  p.scale = args.scale;
  if (c.dtype == DType::kBF16) {
    return LaunchTyped<uint16_t, true>(p, p.tokens, AsStream(stream));
  }
  return LaunchTyped<float, true>(p, p.tokens, AsStream(stream));
}

absl::Status PrefillAttention(const PrefillAttentionArgs& args, void* stream) {
  if (args.tokens <= 0) return absl::OkStatus();
  if (absl::Status s =
          CheckHeads(args.num_q_heads, args.num_kv_heads, args.head_dim);
      !s.ok()) {
    return s;
  }
  if (TcAttentionApplies(args.kv_dtype, args.head_dim,
                         args.num_q_heads / args.num_kv_heads)) {
    return PrefillAttentionTc(args, stream);
  }
  AttnParams p{};
  p.q = args.q;
  p.ldq = args.ldq;
  p.out = args.out;
  p.ldo = args.ldo;
  p.k = args.k;
  p.v = args.v;
  p.ldk = args.ldk;
  p.tokens = static_cast<int>(args.tokens);
  p.hq = static_cast<int>(args.num_q_heads);
  p.hkv = static_cast<int>(args.num_kv_heads);
  p.d = static_cast<int>(args.head_dim);
  p.group = p.hq / p.hkv;
  // Several consecutive queries share each staged key block; how many is a
  // scheduling choice that does not touch any query's arithmetic.
  p.q_per_cta = std::max(1, kMaxWarps / p.group);
  p.row_bytes = PaddedRowBytes(args.head_dim, args.kv_dtype);
  const int64_t es = DTypeSize(args.kv_dtype);
  p.vec = ((args.head_dim * es) % 16 == 0 && (args.ldk * es) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(args.k) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(args.v) % 16 == 0)
              ? 1
              : 0;
  p.scale = args.scale;
  const int ctas = (p.tokens + p.q_per_cta - 1) / p.q_per_cta;
  if (args.kv_dtype == DType::kBF16) {
    return LaunchTyped<uint16_t, false>(p, ctas, AsStream(stream));
  }
  return LaunchTyped<float, false>(p, ctas, AsStream(stream));
}

}  // namespace lockstep::kernels::cuda
