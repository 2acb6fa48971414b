// CPU kernel benchmarks: the batch-invariant matmul (per-call packing and
// prepacked weights) against LibTorch's at::matmul on the same shapes, fp32,
// at 1 and 2 threads. At the end a table of median GFLOP/s and the
// invariant/LibTorch ratios is printed (run with --benchmark_repetitions=N
// so that medians exist; otherwise the single run is used). Benchmarks of one
// shape are registered next to each other, and random interleaving spreads
// the repetitions, so that a changing machine load hits all peers alike:
//
//   kernels_bench --benchmark_repetitions=5 --benchmark_min_time=0.2
//       --benchmark_enable_random_interleaving=true

#include <dlfcn.h>
#include <time.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/matmul.h"

namespace {

using lockstep::kernels::DType;
using lockstep::kernels::MatmulArgs;
using lockstep::kernels::PackedWeight;

// OpenBLAS keeps its own thread pool, which at::set_num_threads does not
// resize; set it too so "1 thread" means one thread for the peer as well.
void SetBlasThreads(int n) {
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(
          dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(n);
  }
}

void SetThreads(int n) {
  lockstep::kernels::SetNumThreads(n);
  at::set_num_threads(n);
  SetBlasThreads(n);
}

struct Problem {
  at::Tensor x;  // [m, k]
  at::Tensor w;  // [n, k]
  at::Tensor y;  // [m, n]
  std::shared_ptr<const PackedWeight> packed;
};

Problem MakeProblem(int64_t m, int64_t n, int64_t k) {
  at::manual_seed(1);
  Problem p;
  p.x = at::randn({m, k});
  p.w = at::randn({n, k});
  p.y = at::empty({m, n});
  auto packed =
      PackedWeight::Pack(p.w.data_ptr(), DType::kF32, k, n, k);
  if (!packed.ok()) std::abort();
  p.packed = *packed;
  return p;
}

MatmulArgs ArgsOf(Problem& p) {
  MatmulArgs a;
  a.x = p.x.data_ptr();
  a.ldx = p.x.size(1);
  a.w = p.w.data_ptr();
  a.ldw = p.w.size(1);
  a.y = p.y.data_ptr();
  a.ldy = p.y.size(1);
  a.m = p.x.size(0);
  a.n = p.w.size(0);
  a.k = p.x.size(1);
  return a;
}

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// GFLOP/s over wall time; for one thread also over the calling thread's CPU
// time (both libraries then compute on the calling thread only), which is
// robust against other processes taking the core away.
void SetFlops(benchmark::State& state, int64_t m, int64_t n, int64_t k,
              double cpu_seconds) {
  const double gflop = 2.0 * m * n * k / 1e9;
  state.counters["GFLOP/s"] = benchmark::Counter(
      gflop, benchmark::Counter::kIsIterationInvariantRate);
  if (state.range(2) == 1 && cpu_seconds > 0) {
    state.counters["cpu_GFLOP/s"] =
        gflop * static_cast<double>(state.iterations()) / cpu_seconds;
  }
}

// Args: M, K (= N), threads.
void BM_InvariantMatmul(benchmark::State& state) {
  const int64_t m = state.range(0), kn = state.range(1);
  SetThreads(static_cast<int>(state.range(2)));
  Problem p = MakeProblem(m, kn, kn);
  const MatmulArgs a = ArgsOf(p);
  const double t0 = ThreadCpuSeconds();
  for (auto _ : state) {
    if (!lockstep::kernels::Matmul(a).ok()) state.SkipWithError("Matmul");
    benchmark::ClobberMemory();
  }
  SetFlops(state, m, kn, kn, ThreadCpuSeconds() - t0);
}

void BM_InvariantMatmulPacked(benchmark::State& state) {
  const int64_t m = state.range(0), kn = state.range(1);
  SetThreads(static_cast<int>(state.range(2)));
  Problem p = MakeProblem(m, kn, kn);
  const MatmulArgs a = ArgsOf(p);
  const double t0 = ThreadCpuSeconds();
  for (auto _ : state) {
    if (!lockstep::kernels::MatmulPacked(a, *p.packed).ok()) {
      state.SkipWithError("MatmulPacked");
    }
    benchmark::ClobberMemory();
  }
  SetFlops(state, m, kn, kn, ThreadCpuSeconds() - t0);
}

void BM_TorchMatmul(benchmark::State& state) {
  const int64_t m = state.range(0), kn = state.range(1);
  SetThreads(static_cast<int>(state.range(2)));
  Problem p = MakeProblem(m, kn, kn);
  const at::Tensor wt = p.w.t();
  const double t0 = ThreadCpuSeconds();
  for (auto _ : state) {
    at::Tensor y = at::matmul(p.x, wt);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  SetFlops(state, m, kn, kn, ThreadCpuSeconds() - t0);
}

// Registers the three peers shape by shape.
void RegisterAll() {
  for (int threads : {1, 2}) {
    for (int64_t kn : {1024, 2048}) {
      for (int64_t m : {1, 16, 64, 256}) {
        for (auto [name, fn] :
             {std::pair{"BM_TorchMatmul", &BM_TorchMatmul},
              std::pair{"BM_InvariantMatmul", &BM_InvariantMatmul},
              std::pair{"BM_InvariantMatmulPacked",
                        &BM_InvariantMatmulPacked}}) {
          benchmark::RegisterBenchmark(name, fn)
              ->ArgNames({"M", "KN", "threads"})
              ->Args({m, kn, threads})
              ->UseRealTime();
        }
      }
    }
  }
}

// Which BLAS LibTorch's CPU matmul lands in: the shared objects mapped into
// this process, OpenBLAS's own description, and Torch's build config line.
void PrintBlasInfo() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> libs;
  for (std::string line; std::getline(maps, line);) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    if (path.find("blas") != std::string::npos ||
        path.find("mkl") != std::string::npos ||
        path.find("lapack") != std::string::npos) {
      libs.insert(path);
    }
  }
  std::printf("BLAS libraries mapped:\n");
  for (const std::string& l : libs) std::printf("  %s\n", l.c_str());
  using ConfigFn = char* (*)();
  if (auto fn = reinterpret_cast<ConfigFn>(
          dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    std::printf("openblas_get_config: %s\n", fn());
  }
  using CoreFn = char* (*)();
  if (auto fn = reinterpret_cast<CoreFn>(
          dlsym(RTLD_DEFAULT, "openblas_get_corename"))) {
    std::printf("openblas_get_corename: %s\n", fn());
  }
  std::istringstream config(at::show_config());
  for (std::string line; std::getline(config, line);) {
    if (line.find("BLAS") != std::string::npos ||
        line.find("LAPACK") != std::string::npos) {
      std::printf("torch config:%s\n", line.c_str());
    }
  }
  std::printf("lockstep SIMD level: %s\n",
              std::string(lockstep::kernels::SimdLevelName(
                               lockstep::kernels::ActiveSimdLevel()))
                  .c_str());
}

// Console output plus the median GFLOP/s of every benchmark, keyed by
// (M, KN, threads), for the ratio table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      const bool median = run.aggregate_name == "median";
      if (run.run_type == Run::RT_Aggregate && !median) continue;
      auto wall = run.counters.find("GFLOP/s");
      if (wall == run.counters.end()) continue;
      auto cpu = run.counters.find("cpu_GFLOP/s");
      // A median overrides the single runs of the same benchmark.
      Result& slot = results_[run.run_name.function_name][run.run_name.args];
      if (median || !slot.median) {
        slot.wall = wall->second.value;
        slot.cpu = cpu == run.counters.end() ? 0.0 : cpu->second.value;
        slot.median = median;
      }
    }
  }

  void PrintTable() const {
    const auto torch = results_.find("BM_TorchMatmul");
    if (torch == results_.end()) return;
    auto get = [&](const char* fn, const std::string& args) {
      auto it = results_.find(fn);
      if (it == results_.end()) return Result{};
      auto r = it->second.find(args);
      return r == it->second.end() ? Result{} : r->second;
    };
    // Rows sorted by (threads, K=N, M) rather than by the args string.
    std::map<std::tuple<long, long, long>, std::string> rows;
    for (const auto& entry : torch->second) {
      long m = 0, kn = 0, threads = 0;
      if (std::sscanf(entry.first.c_str(), "M:%ld/KN:%ld/threads:%ld", &m, &kn,
                      &threads) == 3) {
        rows[{threads, kn, m}] = entry.first;
      }
    }
    std::printf(
        "\nMedian GFLOP/s over wall time; ratio = invariant / LibTorch. "
        "cpu ratio: the same over the calling thread's CPU time (1 thread "
        "only).\n\n"
        "| M | K=N | threads | LibTorch | per-call pack | ratio | prepacked | "
        "ratio | cpu ratio per-call | cpu ratio prepacked |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& [key, args] : rows) {
      const Result t = get("BM_TorchMatmul", args);
      const Result p = get("BM_InvariantMatmul", args);
      const Result q = get("BM_InvariantMatmulPacked", args);
      std::printf("| %ld | %ld | %ld | %.1f | %.1f | %.2f | %.1f | %.2f |",
                  std::get<2>(key), std::get<1>(key), std::get<0>(key),
                  t.wall, p.wall, p.wall / t.wall, q.wall, q.wall / t.wall);
      if (t.cpu > 0 && p.cpu > 0 && q.cpu > 0) {
        std::printf(" %.2f | %.2f |\n", p.cpu / t.cpu, q.cpu / t.cpu);
      } else {
        std::printf(" – | – |\n");
      }
    }
  }

 private:
  struct Result {
    double wall = 0;  // GFLOP/s over wall time
    double cpu = 0;   // GFLOP/s over the calling thread's CPU time
    bool median = false;
  };
  // function name -> args -> result
  std::map<std::string, std::map<std::string, Result>> results_;
};

}  // namespace

int main(int argc, char** argv) {
  RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  PrintBlasInfo();
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintTable();
  benchmark::Shutdown();
  return 0;
}
