// Batch-invariant matmul on CUDA: the sm_90a tensor-core path (kernel in
// gemm_sm90.cuh) for bf16 x bf16, and a SIMT path that follows the CPU
// contract exactly for every other dtype mix. Both also serve the TP-tree
// variant (LeafMatmul with 2, 4 or 8 leaves).
#include "kernels/cuda/matmul.h"

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/gemm_sm90.cuh"

namespace lockstep::kernels::cuda {

std::string GemmTileConfig::ToString() const {
  return absl::StrCat(consumers, "wg_n", block_n, cluster > 1 ? "_c2" : "",
                      row_tree ? "_rowtree" : "");
}

namespace {

// ---------------------------------------------------------------------------
// Capability probe and TMA descriptors.

// 1 when the device code of this translation unit was built for sm_90a (the
// wgmma instructions exist only there; an sm_90 or older image traps).
__device__ const int kBuiltForSm90a =
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    1;
#else
    0;
#endif

PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                         cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

bool BinaryHasSm90a() {
  static const bool ok = [] {
    int v = 0;
    if (cudaMemcpyFromSymbol(&v, kBuiltForSm90a, sizeof(v)) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return v == 1;
  }();
  return ok;
}

// A bf16 operand [rows, leaves * leaf_len] (row stride ld) as the 3-D tensor
// (leaf_len, leaves, rows): a box never crosses a leaf boundary, and the part
// of a k-block beyond the leaf's end is zero-filled by the copy engine.
absl::Status EncodeOperand(CUtensorMap* map, const void* ptr, int64_t rows,
                           int64_t ld, int leaves, int64_t leaf_len,
                           int box_rows) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (encode == nullptr) {
    return absl::InternalError("cuTensorMapEncodeTiled is not available");
  }
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(leaf_len),
                              static_cast<cuuint64_t>(leaves),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(leaf_len * 2),
                                 static_cast<cuuint64_t>(ld * 2)};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(gemm::kBK), 1,
                             static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = encode(
      map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(ptr), dims,
      strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat(
        "cuTensorMapEncodeTiled failed with CUresult ", static_cast<int>(r),
        " (rows=", rows, " ld=", ld, " leaves=", leaves,
        " leaf_len=", leaf_len, ")"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Tensor-core launch.

template <int kNC, int kBN, int kLPW, int kCluster = 1, int kRowLeaves = 1>
absl::Status LaunchSm90(const CUtensorMap& a, const CUtensorMap& b,
                        const gemm::GemmParams& p, cudaStream_t stream) {
  using S = gemm::Shape<kNC, kBN, kLPW, kRowLeaves>;
  auto* kernel = &gemm::GemmSm90Kernel<kNC, kBN, kLPW, kCluster, kRowLeaves>;
  // The opt-in shared-memory limit is a per-device function attribute.
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  const uint64_t bit = 1ull << (dev & 63);
  if ((configured.load(std::memory_order_acquire) & bit) == 0) {
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes));
    configured.fetch_or(bit, std::memory_order_acq_rel);
  }
  if constexpr (kCluster == 1) {
    const int units = std::min(p.num_units, SmCount());
    kernel<<<units, S::kThreads, S::kSmemBytes, stream>>>(a, b, p);
    LOCKSTEP_CUDA_CHECK_LAUNCH("GemmSm90Kernel");
  } else {
    cudaLaunchConfig_t lc = {};
    lc.blockDim = dim3(S::kThreads, 1, 1);
    lc.dynamicSmemBytes = S::kSmemBytes;
    lc.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = kCluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    lc.attrs = attr;
    lc.numAttrs = 1;
    // A persistent grid must not exceed the clusters that can be resident at
    // once (GPC sizes leave some SMs unpaired): a cluster that waits for a
    // slot would start only after a whole resident cluster has finished.
    static std::atomic<int> resident{0};
    int max_clusters = resident.load(std::memory_order_relaxed);
    if (max_clusters == 0) {
      lc.gridDim = dim3(SmCount(), 1, 1);
      LOCKSTEP_CUDA_RETURN_IF_ERROR(
          cudaOccupancyMaxActiveClusters(&max_clusters, kernel, &lc));
      if (max_clusters <= 0) max_clusters = 1;
      resident.store(max_clusters, std::memory_order_relaxed);
    }
    const int units = std::min(p.num_units, max_clusters);
    lc.gridDim = dim3(units * kCluster, 1, 1);
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&lc, kernel, a, b, p));
    LOCKSTEP_CUDA_CHECK_LAUNCH("GemmSm90Kernel(cluster)");
  }
  return absl::OkStatus();
}

absl::Status DispatchSm90(const GemmTileConfig& cfg, int lpw, int leaves,
                          const CUtensorMap& a, const CUtensorMap& b,
                          const gemm::GemmParams& p, cudaStream_t s) {
  if (cfg.row_tree) {
    const int key = cfg.consumers * 10000 + cfg.block_n * 10 + leaves;
    switch (key) {
      case 21282: return LaunchSm90<2, 128, 0, 1, 2>(a, b, p, s);
      case 21284: return LaunchSm90<2, 128, 0, 1, 4>(a, b, p, s);
      case 21288: return LaunchSm90<2, 128, 0, 1, 8>(a, b, p, s);
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "no row-tree GEMM instance for ", cfg.ToString(), " leaves=", leaves));
    }
  }
  const int key = cfg.cluster * 1000000 + cfg.consumers * 100000 +
                  cfg.block_n * 10 + lpw;
  switch (key) {
    case 2201281: return LaunchSm90<2, 128, 1, 2>(a, b, p, s);
    case 2201282: return LaunchSm90<2, 128, 2, 2>(a, b, p, s);
    case 2201284: return LaunchSm90<2, 128, 4, 2>(a, b, p, s);
    case 1100160: return LaunchSm90<1, 16, 0>(a, b, p, s);
    case 1100320: return LaunchSm90<1, 32, 0>(a, b, p, s);
    case 1200321: return LaunchSm90<2, 32, 1>(a, b, p, s);
    case 1200322: return LaunchSm90<2, 32, 2>(a, b, p, s);
    case 1200324: return LaunchSm90<2, 32, 4>(a, b, p, s);
    case 1100640: return LaunchSm90<1, 64, 0>(a, b, p, s);
    case 1101280: return LaunchSm90<1, 128, 0>(a, b, p, s);
    case 1200640: return LaunchSm90<2, 64, 0>(a, b, p, s);
    case 1201280: return LaunchSm90<2, 128, 0>(a, b, p, s);
    case 1202560: return LaunchSm90<2, 256, 0>(a, b, p, s);
    case 1200641: return LaunchSm90<2, 64, 1>(a, b, p, s);
    case 1200642: return LaunchSm90<2, 64, 2>(a, b, p, s);
    case 1200644: return LaunchSm90<2, 64, 4>(a, b, p, s);
    case 1201281: return LaunchSm90<2, 128, 1>(a, b, p, s);
    case 1201282: return LaunchSm90<2, 128, 2>(a, b, p, s);
    case 1201284: return LaunchSm90<2, 128, 4>(a, b, p, s);
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "no tensor-core GEMM instance for ", cfg.ToString(), " lpw=", lpw));
  }
}

bool ConfigValid(const GemmTileConfig& c, int leaves) {
  const std::vector<GemmTileConfig> all = Bf16GemmConfigs(leaves);
  return std::find(all.begin(), all.end(), c) != all.end();
}

// Copies leaf l of src ([rows, leaves*leaf_len], stride ld) to columns
// [l*padded, l*padded + leaf_len) of a dense [rows, leaves*padded] buffer and
// zero-fills the padding. Used only when the operand violates the copy
// engine's 16-byte rules; the zeros are exactly what the copy engine would
// have filled in, so the bits do not depend on which route was taken.
__global__ void PackLeavesKernel(const uint16_t* src, int64_t ld, int64_t rows,
                                 int leaves, int64_t leaf_len, int64_t padded,
                                 uint16_t* dst) {
  const int64_t row_len = leaves * padded;
  const int64_t total = rows * row_len;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / row_len;
    const int64_t rem = i - r * row_len;
    const int64_t leaf = rem / padded;
    const int64_t c = rem - leaf * padded;
    dst[i] = c < leaf_len ? src[r * ld + leaf * leaf_len + c] : uint16_t{0};
  }
}

bool Aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Scratch buffers from the stream-ordered allocator (legal inside graph
// capture); released in stream order after the GEMM.
struct Scratch {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  ~Scratch() {
    if (ptr != nullptr) (void)cudaFreeAsync(ptr, stream);
  }
};

absl::Status PackOperand(const void* src, int64_t ld, int64_t rows, int leaves,
                         int64_t leaf_len, int64_t padded, Scratch& scratch,
                         cudaStream_t stream) {
  scratch.stream = stream;
  const size_t bytes = static_cast<size_t>(rows) * leaves * padded * 2;
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&scratch.ptr, bytes, stream));
  const int64_t total = rows * leaves * padded;
  const int grid = static_cast<int>(
      std::min<int64_t>((total + 255) / 256, SmCount() * 16LL));
  PackLeavesKernel<<<grid, 256, 0, stream>>>(
      static_cast<const uint16_t*>(src), ld, rows, leaves, leaf_len, padded,
      static_cast<uint16_t*>(scratch.ptr));
  LOCKSTEP_CUDA_CHECK_LAUNCH("PackLeavesKernel");
  return absl::OkStatus();
}

absl::Status TensorCoreLeafMatmul(const MatmulArgs& args, int leaves,
                                  int64_t leaf_len, const GemmTileConfig& cfg,
                                  cudaStream_t stream) {
  if (!ConfigValid(cfg, leaves)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LeafMatmul: configuration ", cfg.ToString(), " is not valid for ",
        leaves, " leaves"));
  }
  // The copy engine needs 16-byte aligned bases and 16-byte multiple strides
  // (leaf_len and ld multiples of 8 bf16). Otherwise repack with zero padding.
  const void* x = args.x;
  const void* w = args.w;
  int64_t ldx = args.ldx;
  int64_t ldw = args.ldw;
  int64_t len = leaf_len;
  Scratch sx;
  Scratch sw;
  const int64_t padded = (leaf_len + 7) / 8 * 8;
  const bool len_ok = leaf_len % 8 == 0;
  if (!len_ok || !Aligned16(x) || ldx % 8 != 0) {
    absl::Status s = PackOperand(args.x, args.ldx, args.m, leaves, leaf_len,
                                 padded, sx, stream);
    if (!s.ok()) return s;
    x = sx.ptr;
    ldx = leaves * padded;
  }
  if (!len_ok || !Aligned16(w) || ldw % 8 != 0) {
    absl::Status s = PackOperand(args.w, args.ldw, args.n, leaves, leaf_len,
                                 padded, sw, stream);
    if (!s.ok()) return s;
    w = sw.ptr;
    ldw = leaves * padded;
  }
  if (!len_ok) len = padded;

  const bool leaf_mode = leaves >= 2 && !cfg.row_tree;
  const int lpw = leaf_mode ? leaves / 2 : 0;
  const int tile_m = leaf_mode ? 64 : 64 * cfg.consumers;
  CUtensorMap map_a;
  CUtensorMap map_b;
  if (absl::Status s = EncodeOperand(&map_a, x, args.m, ldx, leaves, len, 64);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          EncodeOperand(&map_b, w, args.n, ldw, leaves, len, cfg.block_n);
      !s.ok()) {
    return s;
  }
  gemm::GemmParams p;
  p.m = static_cast<int>(args.m);
  p.n = static_cast<int>(args.n);
  p.nkb = static_cast<int>((len + gemm::kBK - 1) / gemm::kBK);
  p.num_m_blocks = static_cast<int>((args.m + tile_m - 1) / tile_m);
  p.num_n_blocks = static_cast<int>((args.n + cfg.block_n - 1) / cfg.block_n);
  p.num_tiles = p.num_m_blocks * p.num_n_blocks;
  p.unit_m_blocks = (p.num_m_blocks + cfg.cluster - 1) / cfg.cluster;
  p.num_units = p.unit_m_blocks * p.num_n_blocks;
  // m-blocks per raster group. Measured on the H100: 8 beats 16 for the
  // 64-row tiles too (1024-row groups made leaf mode ~10% slower at large M).
  p.group_m = 8;
  p.y = args.y;
  p.ldy = args.ldy;
  p.y_bf16 = args.y_dtype == DType::kBF16 ? 1 : 0;
  const int64_t esize = p.y_bf16 ? 2 : 4;
  p.y_vec = (args.ldy % 2 == 0 &&
             reinterpret_cast<uintptr_t>(args.y) % (2 * esize) == 0)
                ? 1
                : 0;
  return DispatchSm90(cfg, lpw, leaves, map_a, map_b, p, stream);
}

// ---------------------------------------------------------------------------
// SIMT path: the CPU contract, element by element.

constexpr int kSimtTile = 64;
constexpr int kSimtK = 16;
constexpr int kSimtThreads = 256;

struct SimtParams {
  const void* x;
  int64_t ldx;
  const void* w;
  int64_t ldw;
  void* y;
  int64_t ldy;
  int y_bf16;
  int64_t m;
  int64_t n;
  int64_t leaf_len;
};

// 64x64 output tile per block, 4x4 per thread. Each output of each leaf is
// acc = 0; for k in the leaf, in order: acc = fma(x, w, acc) -- only real k
// indices, no padded ones -- then the leaves combine by the fixed tree
// through a register stack (compile-time indices once the leaf loop is
// unrolled).
template <typename XT, typename WT, int kLeaves>
__global__ void __launch_bounds__(kSimtThreads)
    SimtGemmKernel(const SimtParams p) {
  __shared__ float xs[kSimtK][kSimtTile + 1];
  __shared__ float ws[kSimtK][kSimtTile + 1];
  const XT* x = static_cast<const XT*>(p.x);
  const WT* w = static_cast<const WT*>(p.w);
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kSimtTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSimtTile;
  float stack[3][4][4];
  float result[4][4];
  int sp = 0;
#pragma unroll
  for (int li = 0; li < kLeaves; ++li) {
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    const int64_t kbeg = li * p.leaf_len;
    for (int64_t k0 = 0; k0 < p.leaf_len; k0 += kSimtK) {
      for (int e = threadIdx.x; e < kSimtK * kSimtTile; e += kSimtThreads) {
        const int r = e / kSimtK;
        const int kk = e % kSimtK;
        const int64_t k = k0 + kk;
        float xv = 0.0f;
        float wv = 0.0f;
        if (k < p.leaf_len) {
          if (m0 + r < p.m) xv = LoadF32<XT>(x, (m0 + r) * p.ldx + kbeg + k);
          if (n0 + r < p.n) wv = LoadF32<WT>(w, (n0 + r) * p.ldw + kbeg + k);
        }
        xs[kk][r] = xv;
        ws[kk][r] = wv;
      }
      __syncthreads();
      const int kc = static_cast<int>(
          p.leaf_len - k0 < kSimtK ? p.leaf_len - k0 : kSimtK);
      for (int kk = 0; kk < kc; ++kk) {
        float a[4];
        float b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            acc[i][j] = __fmaf_rn(a[i], b[j], acc[i][j]);
          }
        }
      }
      __syncthreads();
    }
    // After leaf li, combine with the left siblings: once per trailing zero
    // bit of li + 1 (p0+p1, then (p0+p1)+(p2+p3), ...).
#pragma unroll
    for (int lvl = 0; lvl < 3; ++lvl) {
      if ((li + 1) % (2 << lvl) == 0) {
        --sp;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            acc[i][j] = __fadd_rn(stack[sp][i][j], acc[i][j]);
          }
        }
      }
    }
    if (li == kLeaves - 1) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) result[i][j] = acc[i][j];
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) stack[sp][i][j] = acc[i][j];
      }
      ++sp;
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = m0 + ty + 16 * i;
    if (r >= p.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = n0 + tx + 16 * j;
      if (c >= p.n) continue;
      if (p.y_bf16) {
        StoreF32<uint16_t>(static_cast<uint16_t*>(p.y), r * p.ldy + c,
                           result[i][j]);
      } else {
        StoreF32<float>(static_cast<float*>(p.y), r * p.ldy + c, result[i][j]);
      }
    }
  }
}

template <typename XT, typename WT>
absl::Status LaunchSimtTyped(const SimtParams& p, int leaves,
                             cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.n + kSimtTile - 1) / kSimtTile),
                  static_cast<unsigned>((p.m + kSimtTile - 1) / kSimtTile));
  if (grid.y > 65535) {
    return absl::InvalidArgumentError("Matmul: m too large for the SIMT path");
  }
  switch (leaves) {
    case 1: SimtGemmKernel<XT, WT, 1><<<grid, kSimtThreads, 0, stream>>>(p); break;
    case 2: SimtGemmKernel<XT, WT, 2><<<grid, kSimtThreads, 0, stream>>>(p); break;
    case 4: SimtGemmKernel<XT, WT, 4><<<grid, kSimtThreads, 0, stream>>>(p); break;
    case 8: SimtGemmKernel<XT, WT, 8><<<grid, kSimtThreads, 0, stream>>>(p); break;
    default:
      return absl::InvalidArgumentError("LeafMatmul: leaves must be 1/2/4/8");
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("SimtGemmKernel");
  return absl::OkStatus();
}

absl::Status SimtLeafMatmul(const MatmulArgs& args, int leaves,
                            int64_t leaf_len, cudaStream_t stream) {
  const SimtParams p{args.x, args.ldx, args.w, args.ldw, args.y, args.ldy,
                     args.y_dtype == DType::kBF16 ? 1 : 0, args.m, args.n,
                     leaf_len};
  const bool xb = args.x_dtype == DType::kBF16;
  const bool wb = args.w_dtype == DType::kBF16;
  if (xb && wb) return LaunchSimtTyped<uint16_t, uint16_t>(p, leaves, stream);
  if (xb) return LaunchSimtTyped<uint16_t, float>(p, leaves, stream);
  if (wb) return LaunchSimtTyped<float, uint16_t>(p, leaves, stream);
  return LaunchSimtTyped<float, float>(p, leaves, stream);
}

// K == 0: every output is the empty sum, +0.
__global__ void ZeroFillKernel(void* y, int64_t ldy, int y_bf16, int64_t m,
                               int64_t n) {
  const int64_t total = m * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    if (y_bf16) {
      static_cast<uint16_t*>(y)[r * ldy + c] = 0;
    } else {
      static_cast<float*>(y)[r * ldy + c] = 0.0f;
    }
  }
}

}  // namespace

std::vector<GemmTileConfig> Bf16GemmConfigs(int leaves) {
  if (leaves <= 1) {
    return {{1, 16}, {1, 32}, {1, 64}, {1, 128}, {2, 64}, {2, 128}, {2, 256}};
  }
  return {{2, 32}, {2, 64}, {2, 128}, {2, 128, 2}, {2, 128, 1, true}};
}

GemmTileConfig ChooseBf16GemmConfig(int64_t m, int64_t n, int leaves) {
  const int64_t sms = SmCount();
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  if (leaves <= 1 && m <= 64) {
    // Weight-bandwidth bound. Measured on the H100 (docs/benchmarks.md): the
    // widest tile that still gives about 1/d of the SMs a column tile
    // streams fastest (larger TMA boxes beat more, smaller CTAs); d = 3.
    // LOCKSTEP_GEMM_SMALL_M_SM_DIVISOR=d overrides it for measurements (any
    // configuration gives the same bits, so this never changes a result).
    static const int divisor = [] {
      const char* v = std::getenv("LOCKSTEP_GEMM_SMALL_M_SM_DIVISOR");
      const int d = v == nullptr ? 3 : std::atoi(v);
      return d >= 1 && d <= 8 ? d : 3;
    }();
    for (int bn : {128, 64, 32}) {
      if (ceil_div(n, bn) * divisor >= sms) return {1, bn};
    }
    return {1, divisor == 3 ? 32 : 16};
  }
  if (leaves > 1 && ceil_div(m, 128) * ceil_div(n, 128) >= 8 * sms) {
    // Row tree: 128x128 tiles whose two warpgroups share the B box (the
    // operand bytes per FLOP of the plain 128x128 GEMM) but with fewer,
    // larger tiles than leaf mode: measured ahead only with many waves.
    return {2, 128, 1, true};
  }
  // Compute bound: fewest waves weighted by a per-tile efficiency (narrow
  // wgmma tiles re-read A from shared memory more often per FLOP).
  struct Cand {
    int bn;
    double cost_per_elem;
  };
  const int tile_m = leaves <= 1 ? 128 : 64;
  const Cand cands_rows[] = {{256, 1.0}, {128, 1.12}, {64, 1.4}};
  const Cand cands_leaf[] = {{128, 1.0}, {64, 1.25}};
  const Cand* begin = leaves <= 1 ? cands_rows : cands_leaf;
  const int count = leaves <= 1 ? 3 : 2;
  GemmTileConfig best{2, begin[0].bn};
  double best_cost = 0.0;
  for (int i = 0; i < count; ++i) {
    const int64_t tiles = ceil_div(m, tile_m) * ceil_div(n, begin[i].bn);
    const double waves = static_cast<double>(ceil_div(tiles, sms));
    const double cost = waves * tile_m * begin[i].bn * begin[i].cost_per_elem;
    if (i == 0 || cost < best_cost) {
      best_cost = cost;
      best = {2, begin[i].bn};
    }
  }
  return best;
}

bool Bf16TensorCorePathAvailable() {
  int dev = 0;
  int major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && BinaryHasSm90a() && TensorMapEncoder() != nullptr;
}

absl::Status LeafMatmul(const MatmulArgs& args, int leaves, int64_t leaf_len,
                        const GemmTileConfig* config, void* stream_ptr) {
  cudaStream_t stream = AsStream(stream_ptr);
  if (args.m <= 0 || args.n <= 0) return absl::OkStatus();
  if (leaves != 1 && leaves != 2 && leaves != 4 && leaves != 8) {
    return absl::InvalidArgumentError("LeafMatmul: leaves must be 1/2/4/8");
  }
  if (args.k != leaves * leaf_len) {
    return absl::InvalidArgumentError("LeafMatmul: k != leaves * leaf_len");
  }
  if (args.m > (1LL << 30) || args.n > (1LL << 30)) {
    return absl::InvalidArgumentError("LeafMatmul: m or n too large");
  }
  if (leaf_len == 0) {
    const int64_t total = args.m * args.n;
    const int grid = static_cast<int>(
        std::min<int64_t>((total + 255) / 256, SmCount() * 16LL));
    ZeroFillKernel<<<grid, 256, 0, stream>>>(
        args.y, args.ldy, args.y_dtype == DType::kBF16 ? 1 : 0, args.m,
        args.n);
    LOCKSTEP_CUDA_CHECK_LAUNCH("ZeroFillKernel");
    return absl::OkStatus();
  }
  if (args.x_dtype == DType::kBF16 && args.w_dtype == DType::kBF16 &&
      Bf16TensorCorePathAvailable()) {
    const GemmTileConfig cfg =
        config != nullptr ? *config
                          : ChooseBf16GemmConfig(args.m, args.n, leaves);
    return TensorCoreLeafMatmul(args, leaves, leaf_len, cfg, stream);
  }
  return SimtLeafMatmul(args, leaves, leaf_len, stream);
}

absl::Status Matmul(const MatmulArgs& args, void* stream) {
  return LeafMatmul(args, 1, args.k, nullptr, stream);
}

}  // namespace lockstep::kernels::cuda
