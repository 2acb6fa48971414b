// The bf16 tensor-core GEMM for Hopper (sm_90a): TMA loads into a ring of
// shared-memory stages, wgmma.m64nNk16 from shared memory, fp32 accumulators
// in registers, a persistent grid and warp specialisation (one producer
// warpgroup issues the TMA copies, one or two consumer warpgroups issue the
// MMAs). Included by kernels/cuda/matmul.cu only.
//
// Why this arithmetic is batch invariant. The reduction dimension is cut
// into `leaves` of length L (one leaf of length K for a plain matmul, the 8
// fixed TP-tree leaves otherwise). Every output element of every leaf is
//   acc = 0; for kb = 0, 1, ...: for k16 = 0..3:
//     acc = wgmma(acc, A[row, kb*64 + 16*k16 .. +16], B[col, same])
// with the first instruction of a leaf starting from zero (scale-d = 0) and
// the K tail of a leaf zero-filled by the TMA unit. This sequence is the same
// for every M, every tile position and every tile configuration below: the
// configurations only change how many rows (64 per consumer warpgroup) and
// columns (the N of the instruction) one CTA covers, not what each element
// goes through. No split-K, no stream-K; the tile order of the persistent
// scheduler changes timing only. Leaves then combine by the fixed tree of
// tree_reduce.h: in "leaf" mode the two consumer warpgroups of a CTA own the
// two halves of the leaves of the SAME output tile, each reduces its half
// with the fixed tree (register stack), and warpgroup 0 adds warpgroup 1's
// value last: ((p0+p1)+(p2+p3)) + ((p4+p5)+(p6+p7)).
#ifndef LOCKSTEP_KERNELS_CUDA_GEMM_SM90_CUH_
#define LOCKSTEP_KERNELS_CUDA_GEMM_SM90_CUH_

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace lockstep::kernels::cuda::gemm {

constexpr int kBK = 64;              // K elements per stage: one 128-byte row
constexpr int kWgThreads = 128;      // threads per warpgroup
constexpr int kABoxBytes = 64 * kBK * 2;  // one 64-row A box (8 KB)
constexpr int kSmemLimit = 232448;   // H100/H200 opt-in shared memory per CTA

// Launch parameters shared by every configuration.
struct GemmParams {
  int m;
  int n;
  int nkb;           // k-blocks of 64 per leaf: ceil(L / 64)
  int num_m_blocks;  // ceil(m / rows per CTA tile)
  int num_n_blocks;  // ceil(n / BN)
  int num_tiles;
  int unit_m_blocks;  // ceil(num_m_blocks / cluster): m-blocks of a cluster
  int num_units;      // unit_m_blocks * num_n_blocks: work items of a cluster
  int group_m;        // raster: units per group along m (L2 reuse of B)
  void* y;           // [m, n], row stride ldy, fp32 or bf16
  int64_t ldy;
  int y_bf16;        // 1: y is bf16
  int y_vec;         // 1: pairs of y elements can be stored as one vector
};

// Compile-time shape of one configuration.
//   kNC: consumer warpgroups (1 or 2); kBN: columns per tile (the wgmma N);
//   kLPW: 0 for "row" mode (each consumer owns 64 rows of a kNC*64-row tile,
//   one leaf), else "leaf" mode with kLPW leaves per consumer (kNC == 2,
//   a 64-row tile, 2*kLPW leaves in the call).
//   kRowLeaves (row mode only): leaves walked one after the other by every
//   consumer (1 for a plain matmul; 2, 4 or 8 for the "row tree", whose third
//   stack level lives in shared memory).
template <int kNC, int kBN, int kLPW, int kRowLeaves = 1>
struct Shape {
  static constexpr bool kLeafMode = kLPW > 0;
  static constexpr int kTileM = kLeafMode ? 64 : 64 * kNC;
  static constexpr int kBBoxBytes = kBN * kBK * 2;
  static constexpr int kStageBytes =
      kNC * kABoxBytes + (kLeafMode ? 2 : 1) * kBBoxBytes;
  static constexpr int kXchgBytes =
      kLeafMode ? 64 * kBN * 4 : (kRowLeaves == 8 ? 2 * kNC * 64 * kBN * 4 : 0);
  static constexpr int kAvail = kSmemLimit - 1024 - kXchgBytes - 512;
  static constexpr int kStagesFit = kAvail / kStageBytes;
  static constexpr int kStages = kStagesFit > 10 ? 10 : kStagesFit;
  static constexpr int kSmemBytes =
      1024 + kStages * kStageBytes + kXchgBytes + 2 * kStages * 8;
  static constexpr int kThreads = (kNC + 1) * kWgThreads;
  static_assert(kStages >= 2, "not enough shared memory for two stages");
  static_assert(!kLeafMode || kNC == 2, "leaf mode uses two consumers");
};

__device__ __forceinline__ void MbarInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SmemAddr(bar)),
               "r"(count));
}

__device__ __forceinline__ void MbarExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
          SmemAddr(bar)),
      "r"(bytes)
      : "memory");
}

__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(SmemAddr(bar))
               : "memory");
}

// Waits for the phase with the given parity to complete. A wait that never
// ends is a bug (a lost arrival); trap after ~10 s instead of hanging the
// device.
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = SmemAddr(bar);
  uint32_t done = 0;
  long long start = 0;
  for (uint32_t spins = 0;; ++spins) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
    if (done) return;
    if ((spins & 1023) == 0) {
      if (spins == 0) {
        start = clock64();
      } else if (clock64() - start > 20000000000LL) {
        __trap();
      }
    }
  }
}

// 3-D tiled TMA load (coordinates innermost first) completing on `bar`.
__device__ __forceinline__ void TmaLoad3d(void* dst, const CUtensorMap* map,
                                          uint64_t* bar, int c0, int c1,
                                          int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::"
      "bytes [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(SmemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(SmemAddr(bar)), "r"(c0),
      "r"(c1), "r"(c2)
      : "memory");
}

// Shared-memory matrix descriptor: K-major operand, 128-byte swizzle, rows of
// 128 bytes, 8-row core-matrix groups 1024 bytes apart.
__device__ __forceinline__ uint64_t MakeDesc(uint32_t smem_addr) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>(16 >> 4) << 16;
  d |= static_cast<uint64_t>(1024 >> 4) << 32;
  d |= 1ull << 62;
  return d;
}

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// Pins the accumulator registers at this point of the instruction stream so
// that the compiler neither reads them before a wgmma wait nor moves writes
// across a wgmma issue.
template <int kR>
__device__ __forceinline__ void FenceRegs(float (&r)[kR]) {
#pragma unroll
  for (int i = 0; i < kR; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

template <uint32_t kRegs>
__device__ __forceinline__ void RegAlloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <uint32_t kRegs>
__device__ __forceinline__ void RegDealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ uint32_t ClusterCtaRank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}

// Whole-cluster barrier (not .aligned: warps may arrive diverged).
__device__ __forceinline__ void ClusterSync() {
  asm volatile(
      "barrier.cluster.arrive.release;\n"
      "barrier.cluster.wait.acquire;\n" ::
          : "memory");
}

// TMA load written to the same offset in every CTA of `mask`, completing on
// the mbarrier at the same offset in each of them.
__device__ __forceinline__ void TmaLoad3dMulticast(void* dst,
                                                   const CUtensorMap* map,
                                                   uint64_t* bar, int c0,
                                                   int c1, int c2,
                                                   uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::"
      "bytes.multicast::cluster [%0], [%1, {%3, %4, %5}], [%2], %6;" ::"r"(
          SmemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(SmemAddr(bar)), "r"(c0),
      "r"(c1), "r"(c2), "h"(mask)
      : "memory");
}

// Arrives on the mbarrier at the same offset in CTA `cta` of the cluster.
__device__ __forceinline__ void MbarArriveCluster(uint64_t* bar, uint32_t cta) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
               : "=r"(remote)
               : "r"(SmemAddr(bar)), "r"(cta));
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::
                   "r"(remote)
               : "memory");
}

// Work unit -> (cluster m-block, n-block): groups of group_m units along m,
// m fastest inside a group, so that the CTAs running together share the
// same B (weight) columns. A CTA of rank r in a cluster of c takes m-block
// unit_m * c + r. Changes the schedule only, never an element's arithmetic.
__device__ __forceinline__ void UnitCoords(const GemmParams& p, int unit,
                                           int& mu, int& nb) {
  const int group_size = p.group_m * p.num_n_blocks;
  const int group = unit / group_size;
  const int first_m = group * p.group_m;
  const int rows_in_group = min(p.unit_m_blocks - first_m, p.group_m);
  const int r = unit - group * group_size;
  mu = first_m + r % rows_in_group;
  nb = r / rows_in_group;
}

// Stores a 64 x kBN accumulator fragment of one consumer warpgroup. wgmma's
// accumulator layout: element j of thread t lies in row
// 16*(t/32) + (t%32)/4 + 8*((j/2)%2) and column 8*(j/4) + 2*(t%4) + j%2.
template <int kBN>
__device__ __forceinline__ void StoreFragment(const GemmParams& p,
                                              const float (&acc)[kBN / 2],
                                              int row0, int col0, int t) {
  const int warp = t >> 5;
  const int lane = t & 31;
#pragma unroll
  for (int j = 0; j < kBN / 2; j += 2) {
    const int row = row0 + warp * 16 + (lane >> 2) + 8 * ((j >> 1) & 1);
    const int col = col0 + 8 * (j >> 2) + 2 * (lane & 3);
    if (row >= p.m || col >= p.n) continue;
    const int64_t off = static_cast<int64_t>(row) * p.ldy + col;
    const bool pair = col + 1 < p.n;
    if (p.y_bf16) {
      __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.y) + off;
      if (pair && p.y_vec) {
        *reinterpret_cast<__nv_bfloat162*>(y) =
            __nv_bfloat162(__float2bfloat16_rn(acc[j]),
                           __float2bfloat16_rn(acc[j + 1]));
      } else {
        y[0] = __float2bfloat16_rn(acc[j]);
        if (pair) y[1] = __float2bfloat16_rn(acc[j + 1]);
      }
    } else {
      float* y = static_cast<float*>(p.y) + off;
      if (pair && p.y_vec) {
        *reinterpret_cast<float2*>(y) = make_float2(acc[j], acc[j + 1]);
      } else {
        y[0] = acc[j];
        if (pair) y[1] = acc[j + 1];
      }
    }
  }
}

// kCluster == 2 (leaf mode only): two CTAs with adjacent m-blocks and the
// same n-block form a cluster; CTA r loads B box r (warpgroup r's leaves)
// once and multicasts it to both, halving the B traffic. Each stage is
// released to the producers only when the consumers of both CTAs are done.
template <int kNC, int kBN, int kLPW, int kCluster, int kRowLeaves = 1>
__global__ void __launch_bounds__(Shape<kNC, kBN, kLPW, kRowLeaves>::kThreads, 1)
    GemmSm90Kernel(const __grid_constant__ CUtensorMap tma_a,
                   const __grid_constant__ CUtensorMap tma_b,
                   const GemmParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Shape<kNC, kBN, kLPW, kRowLeaves>;
  constexpr bool kLeafMode = S::kLeafMode;
  static_assert(kRowLeaves == 1 || !kLeafMode, "row tree is a row mode");
  constexpr int kLeafIters = kLeafMode ? kLPW : kRowLeaves;
  // Leaves one consumer reduces itself, in order (its tree's width).
  constexpr int kOwnLeaves = kLeafMode ? kLPW : kRowLeaves;
  constexpr int kR = kBN / 2;  // accumulator registers per thread

  extern __shared__ uint8_t smem_raw[];
  // TMA with 128-byte swizzle and the wgmma descriptors need 1024-byte
  // aligned stage buffers; the dynamic base is only 16-byte aligned.
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* stages = smem;
  float* xchg = reinterpret_cast<float*>(smem + S::kStages * S::kStageBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(
      smem + S::kStages * S::kStageBytes + S::kXchgBytes);
  uint64_t* empty = full + S::kStages;

  static_assert(kCluster == 1 || (kCluster == 2 && kLeafMode),
                "clusters are used by leaf mode only");
  const int wg = threadIdx.x / kWgThreads;
  const int t = threadIdx.x % kWgThreads;
  const uint32_t rank = kCluster > 1 ? ClusterCtaRank() : 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      MbarInit(&full[s], 1);
      MbarInit(&empty[s], kNC * kCluster);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  if constexpr (kCluster > 1) {
    ClusterSync();  // the peer's barriers exist before anyone signals them
  } else {
    __syncthreads();
  }
  const int unit_step = gridDim.x / kCluster;
  const int unit_first = blockIdx.x / kCluster;

  if (wg == 0) {
    // Producer warpgroup: one thread walks the same (tile, leaf, k-block)
    // sequence as the consumers and keeps the ring full.
    if constexpr (kNC == 2) RegDealloc<40>();
    if (t == 0) {
      int stage = 0;
      uint32_t phase = 0;
      for (int unit = unit_first; unit < p.num_units; unit += unit_step) {
        int mu, nb;
        UnitCoords(p, unit, mu, nb);
        const int m0 = (mu * kCluster + static_cast<int>(rank)) * S::kTileM;
        const int n0 = nb * kBN;
        for (int li = 0; li < kLeafIters; ++li) {
          for (int kb = 0; kb < p.nkb; ++kb) {
            MbarWait(&empty[stage], phase ^ 1);
            uint8_t* st = stages + stage * S::kStageBytes;
            MbarExpectTx(&full[stage], S::kStageBytes);
            const int kc = kb * kBK;
            if constexpr (kLeafMode) {
              TmaLoad3d(st, &tma_a, &full[stage], kc, li, m0);
              TmaLoad3d(st + kABoxBytes, &tma_a, &full[stage], kc, kLPW + li,
                        m0);
              if constexpr (kCluster == 2) {
                const int w = static_cast<int>(rank);
                TmaLoad3dMulticast(st + 2 * kABoxBytes + w * S::kBBoxBytes,
                                   &tma_b, &full[stage], kc, w * kLPW + li, n0,
                                   uint16_t{3});
              } else {
                TmaLoad3d(st + 2 * kABoxBytes, &tma_b, &full[stage], kc, li,
                          n0);
                TmaLoad3d(st + 2 * kABoxBytes + S::kBBoxBytes, &tma_b,
                          &full[stage], kc, kLPW + li, n0);
              }
            } else {
#pragma unroll
              for (int h = 0; h < kNC; ++h) {
                TmaLoad3d(st + h * kABoxBytes, &tma_a, &full[stage], kc, li,
                          m0 + 64 * h);
              }
              TmaLoad3d(st + kNC * kABoxBytes, &tma_b, &full[stage], kc, li,
                        n0);
            }
            if (++stage == S::kStages) {
              stage = 0;
              phase ^= 1;
            }
          }
        }
      }
    }
  } else {
    if constexpr (kNC == 2) RegAlloc<232>();
    const int c = wg - 1;  // consumer index
    float acc[kR];
    // Register stack of the per-warpgroup leaf tree (kLPW leaves).
    float s0[kOwnLeaves >= 2 ? kR : 1];
    float s1[kOwnLeaves == 4 ? kR : 1];
    // The 8-leaf row tree keeps its 2nd and 3rd stack levels in this
    // consumer's two slots of the exchange area, in fragment order
    // (coalesced, conflict-free): registers hold acc and s0 only.
    float* slot = xchg + c * (2 * 64 * kBN);
    float* slot1 = slot + 64 * kBN;
    int stage = 0;
    uint32_t phase = 0;
    // Releases a stage to this CTA's producer and, in a cluster, to the
    // peer's (whose multicast also writes this CTA's copy of the stage).
    auto release = [&](int st_idx) {
      if (t == 0) {
        MbarArrive(&empty[st_idx]);
        if constexpr (kCluster == 2) MbarArriveCluster(&empty[st_idx], rank ^ 1u);
      }
    };
    for (int unit = unit_first; unit < p.num_units; unit += unit_step) {
      int mu, nb;
      UnitCoords(p, unit, mu, nb);
      const int m0 = (mu * kCluster + static_cast<int>(rank)) * S::kTileM;
      const int n0 = nb * kBN;
#pragma unroll
      for (int li = 0; li < kLeafIters; ++li) {
        int prev = 0;
        for (int kb = 0; kb < p.nkb; ++kb) {
          MbarWait(&full[stage], phase);
          uint8_t* st = stages + stage * S::kStageBytes;
          const uint32_t a_addr = SmemAddr(st + c * kABoxBytes);
          const uint32_t b_addr =
              SmemAddr(st + kNC * kABoxBytes + (kLeafMode ? c * S::kBBoxBytes : 0));
          WgmmaFence();
          FenceRegs(acc);
#pragma unroll
          for (int k16 = 0; k16 < kBK / 16; ++k16) {
            // +32 bytes per k16 step inside the swizzled 128-byte rows.
            Wgmma<kBN>(acc, MakeDesc(a_addr + 32 * k16),
                       MakeDesc(b_addr + 32 * k16), (kb | k16) != 0);
          }
          WgmmaCommit();
          FenceRegs(acc);
          if (kb > 0) {
            // One wgmma group stays in flight; the one before it is done,
            // so its stage can be refilled.
            WgmmaWait<1>();
            FenceRegs(acc);
            release(prev);
          }
          prev = stage;
          if (++stage == S::kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
        WgmmaWait<0>();
        FenceRegs(acc);
        release(prev);
        // Fixed tree over this warpgroup's leaves (left operand = lower
        // leaves): 2 leaves: p0+p1; 4 leaves: (p0+p1)+(p2+p3); 8 leaves:
        // ((p0+p1)+(p2+p3)) + ((p4+p5)+(p6+p7)) with p6 parked in shared
        // memory while p7 is computed.
        if constexpr (kOwnLeaves == 8) {
          // Each thread touches only its own slot entries: no barrier.
          float* s1m = slot1 + t;
          float* s2m = slot + t;
          if (li == 0) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s0[i] = acc[i];
          } else if (li == 1) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s0[i] = __fadd_rn(s0[i], acc[i]);
          } else if (li == 2 || li == 4) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s1m[i * kWgThreads] = acc[i];
          } else if (li == 3) {
#pragma unroll
            for (int i = 0; i < kR; ++i) {
              s0[i] = __fadd_rn(s0[i], __fadd_rn(s1m[i * kWgThreads], acc[i]));
            }
          } else if (li == 5) {
#pragma unroll
            for (int i = 0; i < kR; ++i) {
              s1m[i * kWgThreads] = __fadd_rn(s1m[i * kWgThreads], acc[i]);
            }
          } else if (li == 6) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s2m[i * kWgThreads] = acc[i];
          } else {
#pragma unroll
            for (int i = 0; i < kR; ++i) {
              acc[i] = __fadd_rn(
                  s0[i], __fadd_rn(s1m[i * kWgThreads],
                                   __fadd_rn(s2m[i * kWgThreads], acc[i])));
            }
          }
        } else if constexpr (kOwnLeaves == 2) {
          if (li == 0) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s0[i] = acc[i];
          } else {
#pragma unroll
            for (int i = 0; i < kR; ++i) acc[i] = __fadd_rn(s0[i], acc[i]);
          }
        } else if constexpr (kOwnLeaves == 4) {
          if (li == 0) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s0[i] = acc[i];
          } else if (li == 1) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s0[i] = __fadd_rn(s0[i], acc[i]);
          } else if (li == 2) {
#pragma unroll
            for (int i = 0; i < kR; ++i) s1[i] = acc[i];
          } else {
#pragma unroll
            for (int i = 0; i < kR; ++i) {
              acc[i] = __fadd_rn(s0[i], __fadd_rn(s1[i], acc[i]));
            }
          }
        }
      }
      if constexpr (kLeafMode) {
        // Top of the tree: (warpgroup 0's subtree) + (warpgroup 1's).
        NamedBarrier(1, kNC * kWgThreads);  // previous tile's xchg consumed
        if (c == 1) {
#pragma unroll
          for (int i = 0; i < kR; ++i) xchg[i * kWgThreads + t] = acc[i];
        }
        NamedBarrier(2, kNC * kWgThreads);
        if (c == 0) {
#pragma unroll
          for (int i = 0; i < kR; ++i) {
            acc[i] = __fadd_rn(acc[i], xchg[i * kWgThreads + t]);
          }
          StoreFragment<kBN>(p, acc, m0, n0, t);
        }
      } else {
        StoreFragment<kBN>(p, acc, m0 + 64 * c, n0, t);
      }
    }
  }
  if constexpr (kCluster > 1) {
    // Keep this CTA's shared memory and barriers alive until the peer has
    // sent its last multicast and remote arrival.
    ClusterSync();
  }
#else
  __trap();
#endif
}

}  // namespace lockstep::kernels::cuda::gemm

#endif  // LOCKSTEP_KERNELS_CUDA_GEMM_SM90_CUH_
