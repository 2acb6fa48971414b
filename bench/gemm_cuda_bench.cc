// Invariant bf16 GEMM (kernels/cuda) vs cuBLAS through at::matmul on the
// decoder layer shapes of Llama-3-8B, Qwen3-1.7B and Qwen3-8B, plus the
// TP-tree GEMM (8 leaves, TP = 1): the path the model takes for row-parallel
// layers (o, down; marked "row-par." in the table).
//
// Method, --timing=graph (default): random bf16 data in L input sets, where
// A, W and C all rotate (W dominates the bytes at small M) and L is the
// smallest count >= 8 whose sets together exceed 3x the 50 MB L2, capped at
// 64. Everything runs on one pool stream. Each contender is launched once
// eagerly (cuBLAS handle and workspace, shared-memory opt-ins), then
// captured as ONE CUDA graph of L launches, launch i on set i; 2 warm-up
// replays, then 10 replays each timed with CUDA events; time per kernel =
// median replay time / L. Launch overhead is thus amortised over L kernels,
// and small-M ratios are kernel ratios. The replays of the three main
// contenders (invariant, cuBLAS, tree) are interleaved. Every tile
// configuration of the invariant kernel (1 and 8 leaves) is timed the same
// way with 3 replays, to check the configuration heuristic against the best.
// --timing=eager: the previous method, kept for comparison: the same sets,
// each launch timed alone with CUDA events (3 warm-ups; median of 25, of 10
// per configuration), which at small M includes launch gaps.
// The table header names the method used. Printed: the measured ceilings
// (device-to-device copy bandwidth, cuBLAS 8192^3 peak) and a markdown table
// with, per row, the bytes moved (W + A + C), the floor at the copy
// bandwidth, and the roofline floor (max of that and FLOPs at cuBLAS peak).
//
//   gemm_cuda_bench [--quick] [--timing=graph|eager] [google-benchmark flags]
// M in {1, 16, 64, 128, 256}, plus {1024, 4096, 16384} for Llama-3-8B;
// --quick: M in {1, 16, 256}, plus 4096 for Llama-3-8B.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <benchmark/benchmark.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/launch_timer.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/tree_reduce.h"
#include "kernels/matmul.h"
#include "kernels/tree_reduce.h"

namespace {

namespace lk = lockstep::kernels;
using ::lockstep::bench::Guarded;
using ::lockstep::bench::Launch;
using ::lockstep::bench::LaunchCount;
using ::lockstep::bench::LaunchTimer;
using ::lockstep::bench::MeasureCopyBandwidth;
using ::lockstep::bench::MedianUs;
using ::lockstep::bench::ParseTimingFlags;
using ::lockstep::bench::Stream;
using ::lockstep::bench::Timing;
using ::lockstep::bench::TimingDescription;
using ::lockstep::bench::TimingMode;

constexpr int kTreeLeafCount = 8;

double g_copy_bw = 0;      // bytes/s, read + write
double g_cublas_peak = 0;  // FLOP/s

// Timed samples per contender: main columns, and the per-configuration sweep.
int Reps(bool sweep) {
  if (TimingMode() == Timing::kGraph) return sweep ? 3 : 10;
  return sweep ? 10 : 25;
}

void MeasureCeilings() {
  // 8192^3 is far past the L2 and launch overhead: no rotation.
  constexpr int kLaunches = 4;
  g_copy_bw = MeasureCopyBandwidth();
  const int64_t s = 8192;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor a = at::randn({s, s}, opts);
  at::Tensor b = at::randn({s, s}, opts);
  at::Tensor c = at::empty({s, s}, opts);
  LaunchTimer mm([&](int) { at::matmul_out(c, a, b); }, kLaunches);
  g_cublas_peak = 2.0 * s * s * s / (MedianUs({&mm}, 10)[0] * 1e-6);
  std::printf("timing: %s\n", TimingDescription(Reps(false)).c_str());
  std::printf("ceilings: D2D copy %.0f GB/s (read+write), cuBLAS bf16 8192^3 %.0f TFLOP/s\n",
              g_copy_bw / 1e9, g_cublas_peak / 1e12);
}

// One weight matrix of a decoder layer.
struct Shape {
  const char* tag;    // benchmark name part
  const char* model;
  const char* layer;
  int64_t n, k;
  bool row_parallel;  // run by the model through the TP-tree GEMM
  bool large_m;       // also timed at prefill-sized M
};

constexpr Shape kShapes[] = {
    {"llama3_8b_qkv", "Llama-3-8B", "qkv", 6144, 4096, false, true},
    {"llama3_8b_o", "Llama-3-8B", "o", 4096, 4096, true, true},
    {"llama3_8b_gate_up", "Llama-3-8B", "gate+up", 28672, 4096, false, true},
    {"llama3_8b_down", "Llama-3-8B", "down", 4096, 14336, true, true},
    {"qwen3_1.7b_q_o", "Qwen3-1.7B", "q, o", 2048, 2048, true, false},
    {"qwen3_1.7b_k_v", "Qwen3-1.7B", "k, v", 1024, 2048, false, false},
    {"qwen3_1.7b_gate_up", "Qwen3-1.7B", "gate, up", 6144, 2048, false, false},
    {"qwen3_1.7b_down", "Qwen3-1.7B", "down", 2048, 6144, true, false},
    {"qwen3_8b_q_o", "Qwen3-8B", "q, o", 4096, 4096, true, false},
    {"qwen3_8b_k_v", "Qwen3-8B", "k, v", 1024, 4096, false, false},
    {"qwen3_8b_gate_up", "Qwen3-8B", "gate, up", 12288, 4096, false, false},
    {"qwen3_8b_down", "Qwen3-8B", "down", 4096, 12288, true, false},
};

struct Row {
  const Shape* shape = nullptr;
  int64_t m = 0;
  int launches = 0;
  double bytes = 0;  // W + A + C of one launch
  double ours_us = 0, cublas_us = 0, tree_us = 0, best_cfg_us = 0, best_tree_us = 0;
  std::string cfg, best_cfg, tree_cfg, best_tree_cfg;
  double copy_floor_us = 0, floor_us = 0;
  bool ok = false;
  std::string error;  // set when the measurement threw; nothing else is
};

std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}

// The rotated input sets of one (M, N, K).
struct GemmSets {
  GemmSets(int64_t m, int64_t n, int64_t k, int count) {
    const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    for (int i = 0; i < count; ++i) {
      x.push_back(at::randn({m, k}, opts));
      w.push_back(at::randn({n, k}, opts) * 0.02);
      y.push_back(at::empty({m, n}, opts));
    }
  }

  lk::MatmulArgs Args(int i) const {
    lk::MatmulArgs a;
    a.x = x[i].data_ptr();
    a.x_dtype = lk::DType::kBF16;
    a.ldx = x[i].size(1);
    a.w = w[i].data_ptr();
    a.w_dtype = lk::DType::kBF16;
    a.ldw = w[i].size(1);
    a.y = y[i].data_ptr();
    a.y_dtype = lk::DType::kBF16;
    a.ldy = y[i].size(1);
    a.m = x[i].size(0);
    a.n = w[i].size(0);
    a.k = x[i].size(1);
    return a;
  }

  std::vector<at::Tensor> x, w, y;
};

// The invariant kernel over `leaves` leaves; cfg == nullptr: its heuristic.
Launch OursLaunch(const GemmSets& sets, int leaves, const lk::cuda::GemmTileConfig* cfg,
                  bool& ok) {
  return [&sets, leaves, cfg, &ok](int i) {
    const lk::MatmulArgs a = sets.Args(i);
    if (!lk::cuda::LeafMatmul(a, leaves, a.k / leaves, cfg, Stream()).ok()) ok = false;
  };
}

Launch TreeLaunch(const GemmSets& sets, bool& ok) {
  return [&sets, &ok](int i) {
    lk::TreeMatmulArgs a;
    a.base = sets.Args(i);
    a.k_total = a.base.k;
    a.leaf_begin = 0;
    a.leaf_count = kTreeLeafCount;
    if (!lk::cuda::TreeMatmulPartial(a, Stream()).ok()) ok = false;
  };
}

Launch CublasLaunch(GemmSets& sets) {
  return [&sets](int i) { at::matmul_out(sets.y[i], sets.x[i], sets.w[i].t()); };
}

// The fastest tile configuration for `leaves` leaves: (name, microseconds).
std::pair<std::string, double> BestConfig(const GemmSets& sets, int leaves, int launches,
                                          bool& ok) {
  std::pair<std::string, double> best{"", 0};
  for (const lk::cuda::GemmTileConfig& cfg : lk::cuda::Bf16GemmConfigs(leaves)) {
    LaunchTimer timer(OursLaunch(sets, leaves, &cfg, ok), launches);
    const double us = MedianUs({&timer}, Reps(/*sweep=*/true))[0];
    if (best.first.empty() || us < best.second) best = {cfg.ToString(), us};
  }
  return best;
}

Row MeasureGemm(const Shape& shape, int64_t m) {
  const int64_t n = shape.n, k = shape.k;
  Row row;
  row.shape = &shape;
  row.m = m;
  row.bytes = 2.0 * (m * k + n * k + m * n);
  row.launches = LaunchCount(row.bytes);
  GemmSets sets(m, n, k, row.launches);
  bool ok = true;
  {
    LaunchTimer ours(OursLaunch(sets, 1, nullptr, ok), row.launches);
    LaunchTimer cublas(CublasLaunch(sets), row.launches);
    LaunchTimer tree(TreeLaunch(sets, ok), row.launches);
    const std::vector<double> us = MedianUs({&ours, &cublas, &tree}, Reps(/*sweep=*/false));
    row.ours_us = us[0];
    row.cublas_us = us[1];
    row.tree_us = us[2];
  }
  std::tie(row.best_cfg, row.best_cfg_us) = BestConfig(sets, 1, row.launches, ok);
  std::tie(row.best_tree_cfg, row.best_tree_us) =
      BestConfig(sets, kTreeLeafCount, row.launches, ok);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    ok = false;
    std::printf("CUDA error: %s\n", cudaGetErrorString(err));
  }
  row.cfg = lk::cuda::ChooseBf16GemmConfig(m, n, 1).ToString();
  row.tree_cfg = lk::cuda::ChooseBf16GemmConfig(m, n, kTreeLeafCount).ToString();
  // Floors: the measured copy rate (bytes read + written per second) for the
  // compulsory traffic; roofline: also cuBLAS's measured peak for the FLOPs.
  row.copy_floor_us = row.bytes / g_copy_bw * 1e6;
  row.floor_us = std::max(2.0 * m * n * k / g_cublas_peak * 1e6, row.copy_floor_us);
  row.ok = ok;
  return row;
}

void BM_Gemm(benchmark::State& state) {
  const Shape& shape = kShapes[state.range(0)];
  const int64_t m = state.range(1);
  Row row;
  const std::string error = Guarded([&] { row = MeasureGemm(shape, m); });
  if (!error.empty()) {
    row = Row();
    row.shape = &shape;
    row.m = m;
    row.error = error;
  }
  c10::cuda::CUDACachingAllocator::emptyCache();
  Rows().push_back(row);
  if (!row.error.empty()) {
    state.SkipWithError(row.error.c_str());
    return;
  }
  for (auto _ : state) state.SetIterationTime(row.ours_us * 1e-6);
  state.counters["L"] = row.launches;
  state.counters["ours_us"] = row.ours_us;
  state.counters["cublas_us"] = row.cublas_us;
  state.counters["ratio"] = row.cublas_us / row.ours_us;
  state.counters["tree_ratio"] = row.cublas_us / row.tree_us;
  state.counters["TFLOPs"] = 2.0 * m * shape.n * shape.k / (row.ours_us * 1e-6) / 1e12;
  state.counters["copy_floor_us"] = row.copy_floor_us;
}

void PrintTable() {
  std::printf("\ntiming: %s (configuration sweep: %d)\n", TimingDescription(Reps(false)).c_str(), Reps(true));
  std::printf(
      "\n| model | layer | N x K | M | L | MB | invariant (us) | cfg | best cfg (us) | "
      "cuBLAS (us) | ratio | tree (us) | tree cfg | best tree cfg (us) | tree ratio | "
      "TFLOP/s | copy floor (us) | floor (us) | ok |\n");
  std::printf(
      "|---|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|\n");
  for (const Row& r : Rows()) {
    const Shape& s = *r.shape;
    if (!r.error.empty()) {
      std::printf("| %s | %s | %ldx%ld | %ld | ERROR: %s |\n", s.model, s.layer, long(s.n),
                  long(s.k), long(r.m), r.error.c_str());
      continue;
    }
    const double flops = 2.0 * r.m * s.n * s.k;
    std::printf(
        "| %s | %s%s | %ldx%ld | %ld | %d | %.1f | %.1f | %s | %s %.1f | %.1f | %.2f | %.1f | "
        "%s | %s %.1f | %.2f | %.0f | %.1f | %.1f | %s |\n",
        s.model, s.layer, s.row_parallel ? " (row-par.)" : "", long(s.n), long(s.k), long(r.m),
        r.launches, r.bytes / 1e6, r.ours_us, r.cfg.c_str(), r.best_cfg.c_str(), r.best_cfg_us,
        r.cublas_us, r.cublas_us / r.ours_us, r.tree_us, r.tree_cfg.c_str(),
        r.best_tree_cfg.c_str(), r.best_tree_us, r.cublas_us / r.tree_us,
        flops / (r.ours_us * 1e-6) / 1e12, r.copy_floor_us, r.floor_us, r.ok ? "yes" : "ERROR");
  }
  std::printf(
      "\nratio = cuBLAS / invariant; tree ratio = cuBLAS / tree (8 leaves, the path of row-par. "
      "layers); L = launches per graph = rotated input sets; MB = W + A + C per launch; copy "
      "floor = MB at the D2D copy rate; floor = max(copy floor, FLOPs at cuBLAS peak).\n");
}

void RegisterGemms(bool quick) {
  const std::vector<int64_t> small_m =
      quick ? std::vector<int64_t>{1, 16, 256} : std::vector<int64_t>{1, 16, 64, 128, 256};
  const std::vector<int64_t> large_m =
      quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{1024, 4096, 16384};
  for (int64_t i = 0; i < static_cast<int64_t>(std::size(kShapes)); ++i) {
    const Shape& s = kShapes[i];
    std::vector<int64_t> ms = small_m;
    if (s.large_m) ms.insert(ms.end(), large_m.begin(), large_m.end());
    for (int64_t m : ms) {
      const std::string name = std::string("gemm_cuda/") + s.tag + "/N" + std::to_string(s.n) +
                               "_K" + std::to_string(s.k) + "/M" + std::to_string(m);
      benchmark::RegisterBenchmark(name.c_str(), BM_Gemm)
          ->Args({i, m})
          ->Iterations(1)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  if (!ParseTimingFlags(argc, argv, quick)) return 2;
  // Graph capture needs a non-default stream; at::matmul runs on it too.
  c10::cuda::CUDAStreamGuard stream_guard(c10::cuda::getStreamFromPool());
  MeasureCeilings();
  RegisterGemms(quick);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintTable();
  return 0;
}
