// Invariant bf16 GEMM (kernels/cuda) vs cuBLAS through at::matmul on the
// Llama-3-8B layer shapes, plus the TP-tree GEMM (8 leaves, TP = 1).
//
// Method: random bf16 data; inputs rotated over enough sets to exceed 3x the
// 50 MB L2; 3 warm-up runs; 25 timed runs of each contender, interleaved,
// each timed with CUDA events on the same (legacy default) stream; medians.
// Every tile configuration of the invariant kernel is also timed (10 runs)
// so that the configuration heuristic can be checked against the best.
// Prints the measured ceilings (device-to-device copy bandwidth, cuBLAS
// peak) and a markdown table with the roofline floor of each row.
//
//   gemm_cuda_bench [--quick] [google-benchmark flags]
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/matmul.h"
#include "kernels/cuda/tree_reduce.h"
#include "kernels/matmul.h"
#include "kernels/tree_reduce.h"

namespace {

namespace lk = lockstep::kernels;

constexpr double kL2Bytes = 50e6;

struct Row {
  int64_t n, k, m;
  double ours_us, cublas_us, tree_us, best_cfg_us, best_tree_us;
  std::string cfg, best_cfg, tree_cfg, best_tree_cfg;
  double floor_us;
  bool ok;
};

std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}

double g_copy_bw = 0;      // bytes/s, read + write
double g_cublas_peak = 0;  // FLOP/s

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times fn() once with CUDA events; returns microseconds.
double TimeOnce(const std::function<void()>& fn) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, nullptr);
  fn();
  cudaEventRecord(b, nullptr);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms * 1e3;
}

void MeasureCeilings() {
  const int64_t bytes = int64_t{1} << 30;
  at::Tensor src = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  at::Tensor dst = at::empty_like(src);
  std::vector<double> t;
  for (int i = 0; i < 13; ++i) {
    const double us = TimeOnce([&] {
      cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyDeviceToDevice, nullptr);
    });
    if (i >= 3) t.push_back(us);
  }
  g_copy_bw = 2.0 * bytes / (Median(t) * 1e-6);
  const int64_t s = 8192;
  at::Tensor a = at::randn({s, s}, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
  at::Tensor b2 = at::randn({s, s}, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
  t.clear();
  for (int i = 0; i < 13; ++i) {
    const double us = TimeOnce([&] { at::Tensor c = at::matmul(a, b2); });
    if (i >= 3) t.push_back(us);
  }
  g_cublas_peak = 2.0 * s * s * s / (Median(t) * 1e-6);
  std::printf("ceilings: D2D copy %.0f GB/s (read+write), cuBLAS bf16 8192^3 %.0f TFLOP/s\n",
              g_copy_bw / 1e9, g_cublas_peak / 1e12);
}

lk::MatmulArgs Args(const at::Tensor& x, const at::Tensor& w, at::Tensor& y) {
  lk::MatmulArgs a;
  a.x = x.data_ptr();
  a.x_dtype = lk::DType::kBF16;
  a.ldx = x.size(1);
  a.w = w.data_ptr();
  a.w_dtype = lk::DType::kBF16;
  a.ldw = w.size(1);
  a.y = y.data_ptr();
  a.y_dtype = lk::DType::kBF16;
  a.ldy = y.size(1);
  a.m = x.size(0);
  a.n = w.size(0);
  a.k = x.size(1);
  return a;
}

void BM_Gemm(benchmark::State& state) {
  const int64_t n = state.range(0), k = state.range(1), m = state.range(2);
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const double set_bytes = 2.0 * (m * k + n * k + m * n);
  const int sets = std::max(2, std::min(16, static_cast<int>(3 * kL2Bytes / set_bytes) + 1));
  std::vector<at::Tensor> xs, ws, ys;
  for (int i = 0; i < sets; ++i) {
    xs.push_back(at::randn({m, k}, opts));
    ws.push_back(at::randn({n, k}, opts) * 0.02);
    ys.push_back(at::empty({m, n}, opts));
  }
  bool ok = true;
  int it = 0;
  auto ours = [&](const lk::cuda::GemmTileConfig* cfg) {
    const int i = it++ % sets;
    lk::MatmulArgs a = Args(xs[i], ws[i], ys[i]);
    absl::Status s = lk::cuda::LeafMatmul(a, 1, k, cfg, nullptr);
    if (!s.ok()) ok = false;
  };
  auto tree = [&] {
    const int i = it++ % sets;
    lk::TreeMatmulArgs a;
    a.base = Args(xs[i], ws[i], ys[i]);
    a.k_total = k;
    a.leaf_begin = 0;
    a.leaf_count = 8;
    absl::Status s = lk::cuda::TreeMatmulPartial(a, nullptr);
    if (!s.ok()) ok = false;
  };
  auto cublas = [&] {
    const int i = it++ % sets;
    at::matmul_out(ys[i], xs[i], ws[i].t());
  };
  for (int w = 0; w < 3; ++w) {
    ours(nullptr);
    tree();
    cublas();
  }
  cudaDeviceSynchronize();
  std::vector<double> t_ours, t_tree, t_cublas;
  for (int r = 0; r < 25; ++r) {
    t_ours.push_back(TimeOnce([&] { ours(nullptr); }));
    t_cublas.push_back(TimeOnce(cublas));
    t_tree.push_back(TimeOnce(tree));
  }
  // Every configuration (heuristic check).
  double best = 1e30;
  std::string best_name;
  for (const lk::cuda::GemmTileConfig& cfg : lk::cuda::Bf16GemmConfigs(1)) {
    std::vector<double> t;
    for (int r = 0; r < 10; ++r) t.push_back(TimeOnce([&] { ours(&cfg); }));
    const double med = Median(t);
    if (med < best) {
      best = med;
      best_name = cfg.ToString();
    }
  }
  double best_tree = 1e30;
  std::string best_tree_name;
  for (const lk::cuda::GemmTileConfig& cfg : lk::cuda::Bf16GemmConfigs(8)) {
    std::vector<double> t;
    for (int r = 0; r < 10; ++r) {
      t.push_back(TimeOnce([&] {
        const int i = it++ % sets;
        lk::MatmulArgs a = Args(xs[i], ws[i], ys[i]);
        if (!lk::cuda::LeafMatmul(a, 8, k / 8, &cfg, nullptr).ok()) ok = false;
      }));
    }
    const double med = Median(t);
    if (med < best_tree) {
      best_tree = med;
      best_tree_name = cfg.ToString();
    }
  }
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    ok = false;
    std::printf("CUDA error: %s\n", cudaGetErrorString(err));
  }
  Row row;
  row.n = n;
  row.k = k;
  row.m = m;
  row.ours_us = Median(t_ours);
  row.cublas_us = Median(t_cublas);
  row.tree_us = Median(t_tree);
  row.best_cfg_us = best;
  row.best_cfg = best_name;
  row.cfg = lk::cuda::ChooseBf16GemmConfig(m, n, 1).ToString();
  row.tree_cfg = lk::cuda::ChooseBf16GemmConfig(m, n, 8).ToString();
  row.best_tree_us = best_tree;
  row.best_tree_cfg = best_tree_name;
  const double flops = 2.0 * m * n * k;
  // Floor: cuBLAS's measured peak for the FLOPs, the measured copy rate
  // (bytes read + written per second) for the compulsory traffic.
  row.floor_us = std::max(flops / g_cublas_peak, set_bytes / g_copy_bw) * 1e6;
  row.ok = ok;
  Rows().push_back(row);
  for (auto _ : state) state.SetIterationTime(row.ours_us * 1e-6);
  state.counters["ours_us"] = row.ours_us;
  state.counters["cublas_us"] = row.cublas_us;
  state.counters["ratio"] = row.cublas_us / row.ours_us;
  state.counters["tree_ratio"] = row.cublas_us / row.tree_us;
  state.counters["TFLOPs"] = flops / (row.ours_us * 1e-6) / 1e12;
}

void PrintTable() {
  std::printf("\n| N x K | M | invariant (us) | cfg | best cfg (us) | cuBLAS (us) | ratio | tree (us) | tree cfg | best tree cfg (us) | tree ratio | TFLOP/s | floor (us) | ok |\n");
  std::printf("|---|---:|---:|---|---|---:|---:|---:|---|---|---:|---:|---:|---|\n");
  for (const Row& r : Rows()) {
    const double flops = 2.0 * r.m * r.n * r.k;
    std::printf("| %ldx%ld | %ld | %.1f | %s | %s %.1f | %.1f | %.2f | %.1f | %s | %s %.1f | %.2f | %.0f | %.1f | %s |\n",
                long(r.n), long(r.k), long(r.m), r.ours_us, r.cfg.c_str(),
                r.best_cfg.c_str(), r.best_cfg_us, r.cublas_us,
                r.cublas_us / r.ours_us, r.tree_us, r.tree_cfg.c_str(),
                r.best_tree_cfg.c_str(), r.best_tree_us, r.cublas_us / r.tree_us,
                flops / (r.ours_us * 1e-6) / 1e12, r.floor_us, r.ok ? "yes" : "ERROR");
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  int bargc = static_cast<int>(args.size());
  MeasureCeilings();
  const int64_t shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
  const int64_t ms_full[] = {1, 16, 64, 256, 1024, 4096, 16384};
  const int64_t ms_quick[] = {1, 256, 4096};
  for (const auto& s : shapes) {
    for (int64_t m : quick ? std::vector<int64_t>(std::begin(ms_quick), std::end(ms_quick))
                           : std::vector<int64_t>(std::begin(ms_full), std::end(ms_full))) {
      benchmark::RegisterBenchmark(
          ("gemm_cuda/N" + std::to_string(s[0]) + "_K" + std::to_string(s[1]) + "/M" +
           std::to_string(m)).c_str(),
          BM_Gemm)
          ->Args({s[0], s[1], m})
          ->Iterations(1)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  benchmark::Initialize(&bargc, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintTable();
  return 0;
}
