// Invariant attention (kernels/cuda) on the H100/H200:
//  - decode over the paged bf16 KV cache, with the invariant fixed 128-key
//    splits and with the standard mode's batch-dependent (FlashDecoding)
//    splits (PagedAttentionArgs::batch_dependent_splits): achieved bytes/s
//    against the measured device-to-device copy bandwidth (read + write);
//  - causal prefill against at::scaled_dot_product_attention (bf16, flash).
// Heads (query / KV / head_dim): 32/8/128 (Llama-3-8B, Qwen3-8B) and
// 16/8/128 (Qwen3-1.7B). Random data.
//
// Method, --timing=graph (default): L input sets, where the KV cache, q and
// the output all rotate and L is the smallest count >= 8 whose sets together
// exceed 3x the 50 MB L2, capped at 64. Everything runs on one pool stream.
// Each contender is launched once eagerly (shared-memory opt-ins, SDPA's
// first call), then captured as ONE CUDA graph of L launches, launch i on
// set i; 2 warm-up replays, then 10 replays each timed with CUDA events;
// time per kernel = median replay time / L, so small-batch rows measure the
// kernels and not launch overhead. The replays of the contenders of one row
// are interleaved. --timing=eager: the previous method, kept for
// comparison: the same sets, each launch timed alone with CUDA events
// (3 warm-ups, median of 25). The tables' headers name the method used.
//
//   attention_cuda_bench [--quick] [--timing=graph|eager] [google-benchmark flags]
// Decode: batch {1, 16, 64, 256} x context {512, 1024, 4096}, plus
// (64, 2048), (64, 8192), (8, 8192); prefill: T {1024, 4096}; both head
// shapes. --quick: 32/8/128 only, batch {1, 64, 256} x context {512, 4096}.
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
#include <utility>
#include <vector>

#include "bench/launch_timer.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention.h"

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

constexpr int64_t kPage = 16;

double g_copy_bw = 0;  // bytes/s, read + write

int Reps() { return TimingMode() == Timing::kGraph ? 10 : 25; }

void MeasureCopy() {
  g_copy_bw = MeasureCopyBandwidth();
  std::printf("timing: %s\n", TimingDescription(Reps()).c_str());
  std::printf("ceiling: D2D copy %.0f GB/s (read+write)\n", g_copy_bw / 1e9);
}

struct Heads {
  const char* label;
  int64_t hq, hkv, d;
};

constexpr Heads kHeads[] = {
    {"32/8/128 (Llama-3-8B, Qwen3-8B)", 32, 8, 128},
    {"16/8/128 (Qwen3-1.7B)", 16, 8, 128},
};

std::vector<std::string>& DecodeLines() {
  static std::vector<std::string> v;
  return v;
}

std::vector<std::string>& PrefillLines() {
  static std::vector<std::string> v;
  return v;
}

// The rotated input sets of one decode row: every sequence at position
// ctx - 1. Block tables, positions and sequence ids (a few KB, read-only)
// are shared by the sets.
struct DecodeSets {
  DecodeSets(const Heads& h, int64_t batch, int64_t ctx, int count)
      : heads(h), batch(batch), blocks((ctx + kPage - 1) / kPage) {
    const int64_t pages = batch * blocks;
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
    const auto i32 = at::TensorOptions().dtype(at::kInt).device(at::kCUDA);
    tables = at::randperm(pages, at::TensorOptions().dtype(at::kLong))
                 .to(at::kInt)
                 .reshape({batch, blocks})
                 .to(at::kCUDA);
    pos = at::full({batch}, ctx - 1, i32);
    seq = at::arange(batch, i32);
    for (int i = 0; i < count; ++i) {
      k.push_back(at::randn({pages, kPage, h.hkv, h.d}, bf16));
      v.push_back(at::randn({pages, kPage, h.hkv, h.d}, bf16));
      q.push_back(at::randn({batch, h.hq, h.d}, f32));
      out.push_back(at::empty({batch, h.hq, h.d}, f32));
    }
  }

  lk::PagedAttentionArgs Args(int i, bool batch_dependent_splits) const {
    lk::PagedAttentionArgs a;
    a.cache.k = k[i].data_ptr();
    a.cache.v = v[i].data_ptr();
    a.cache.dtype = lk::DType::kBF16;
    a.cache.num_pages = batch * blocks;
    a.cache.page_size = kPage;
    a.cache.num_kv_heads = heads.hkv;
    a.cache.head_dim = heads.d;
    a.q = q[i].data_ptr<float>();
    a.ldq = heads.hq * heads.d;
    a.out = out[i].data_ptr<float>();
    a.ldo = heads.hq * heads.d;
    a.tokens = batch;
    a.num_q_heads = heads.hq;
    a.scale = 1.0f / std::sqrt(float(heads.d));
    a.positions = pos.data_ptr<int32_t>();
    a.seq_ids = seq.data_ptr<int32_t>();
    a.block_tables = tables.data_ptr<int32_t>();
    a.num_seqs = batch;
    a.max_blocks_per_seq = blocks;
    a.batch_dependent_splits = batch_dependent_splits;
    return a;
  }

  Heads heads;
  int64_t batch, blocks;
  at::Tensor tables, pos, seq;
  std::vector<at::Tensor> k, v, q, out;
};

Launch PagedLaunch(const DecodeSets& sets, bool batch_dependent_splits, bool& ok) {
  return [&sets, batch_dependent_splits, &ok](int i) {
    if (!lk::cuda::PagedAttention(sets.Args(i, batch_dependent_splits), Stream()).ok()) {
      ok = false;
    }
  };
}

// K and V read, q read and out written, per launch.
double DecodeBytes(const Heads& h, int64_t batch, int64_t ctx) {
  return 2.0 * batch * ctx * h.hkv * h.d * 2 + 2.0 * batch * h.hq * h.d * 4;
}

void BM_Decode(benchmark::State& state) {
  const Heads& h = kHeads[state.range(0)];
  const int64_t batch = state.range(1), ctx = state.range(2);
  const double bytes = DecodeBytes(h, batch, ctx);
  const int launches = LaunchCount(bytes);
  bool ok = true;
  double invariant_us = 0, standard_us = 0;
  const std::string error = Guarded([&] {
    DecodeSets sets(h, batch, ctx, launches);
    LaunchTimer invariant(PagedLaunch(sets, false, ok), launches);
    LaunchTimer standard(PagedLaunch(sets, true, ok), launches);
    const std::vector<double> us = MedianUs({&invariant, &standard}, Reps());
    invariant_us = us[0];
    standard_us = us[1];
    if (cudaDeviceSynchronize() != cudaSuccess) ok = false;
  });
  c10::cuda::CUDACachingAllocator::emptyCache();
  char line[512];
  if (!error.empty()) {
    std::snprintf(line, sizeof line, "| %s | %ld | %ld | ERROR: %s |", h.label, long(batch),
                  long(ctx), error.c_str());
    DecodeLines().push_back(line);
    state.SkipWithError(error.c_str());
    return;
  }
  const double bw = bytes / (invariant_us * 1e-6);
  const double standard_bw = bytes / (standard_us * 1e-6);
  for (auto _ : state) state.SetIterationTime(invariant_us * 1e-6);
  state.counters["L"] = launches;
  state.counters["GBps"] = bw / 1e9;
  state.counters["vs_copy"] = bw / g_copy_bw;
  state.counters["standard_us"] = standard_us;
  state.counters["ratio"] = standard_us / invariant_us;
  std::snprintf(line, sizeof line,
                "| %s | %ld | %ld | %d | %.1f | %.1f | %.0f GB/s | %.2f | %.1f | %.0f GB/s | "
                "%.2f | %s |",
                h.label, long(batch), long(ctx), launches, bytes / 1e6, invariant_us, bw / 1e9,
                bw / g_copy_bw, standard_us, standard_bw / 1e9, standard_us / invariant_us,
                ok ? "yes" : "ERROR");
  DecodeLines().push_back(line);
}

// The rotated input sets of one prefill row, in our layout and in SDPA's.
struct PrefillSets {
  PrefillSets(const Heads& h, int64_t t, int count) : heads(h), tokens(t) {
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
    const int64_t group = h.hq / h.hkv;
    for (int i = 0; i < count; ++i) {
      q.push_back(at::randn({t, h.hq, h.d}, f32));
      k.push_back(at::randn({t, h.hkv, h.d}, bf16));
      v.push_back(at::randn({t, h.hkv, h.d}, bf16));
      out.push_back(at::empty({t, h.hq, h.d}, f32));
      // SDPA layout [1, heads, T, D], KV heads expanded (untimed).
      qb.push_back(q[i].to(at::kBFloat16).permute({1, 0, 2}).unsqueeze(0).contiguous());
      kb.push_back(k[i].repeat_interleave(group, 1).permute({1, 0, 2}).unsqueeze(0).contiguous());
      vb.push_back(v[i].repeat_interleave(group, 1).permute({1, 0, 2}).unsqueeze(0).contiguous());
    }
  }

  lk::PrefillAttentionArgs Args(int i) const {
    lk::PrefillAttentionArgs a;
    a.q = q[i].data_ptr<float>();
    a.ldq = heads.hq * heads.d;
    a.k = k[i].data_ptr();
    a.v = v[i].data_ptr();
    a.ldk = heads.hkv * heads.d;
    a.kv_dtype = lk::DType::kBF16;
    a.out = out[i].data_ptr<float>();
    a.ldo = heads.hq * heads.d;
    a.tokens = tokens;
    a.num_q_heads = heads.hq;
    a.num_kv_heads = heads.hkv;
    a.head_dim = heads.d;
    a.scale = 1.0f / std::sqrt(float(heads.d));
    return a;
  }

  Heads heads;
  int64_t tokens;
  std::vector<at::Tensor> q, k, v, out, qb, kb, vb;
};

// Bytes one prefill launch reads and writes: the smaller of ours (f32 q and
// out, bf16 K/V) and SDPA's (bf16 throughout, KV heads expanded), so that
// both contenders' sets exceed the L2 target.
double PrefillSetBytes(const Heads& h, int64_t t) {
  const double ours = t * h.d * (8.0 * h.hq + 4.0 * h.hkv);
  const double sdpa = t * h.d * 8.0 * h.hq;
  return std::min(ours, sdpa);
}

void BM_Prefill(benchmark::State& state) {
  const Heads& h = kHeads[state.range(0)];
  const int64_t t = state.range(1);
  const int launches = LaunchCount(PrefillSetBytes(h, t));
  bool ok = true;
  double ours_us = 0, sdpa_us = 0;
  const std::string error = Guarded([&] {
    PrefillSets sets(h, t, launches);
    LaunchTimer ours(
        [&](int i) {
          if (!lk::cuda::PrefillAttention(sets.Args(i), Stream()).ok()) ok = false;
        },
        launches);
    LaunchTimer sdpa(
        [&](int i) {
          at::Tensor o = at::scaled_dot_product_attention(sets.qb[i], sets.kb[i], sets.vb[i], {},
                                                          0.0, true);
        },
        launches);
    const std::vector<double> us = MedianUs({&ours, &sdpa}, Reps());
    ours_us = us[0];
    sdpa_us = us[1];
    if (cudaDeviceSynchronize() != cudaSuccess) ok = false;
  });
  c10::cuda::CUDACachingAllocator::emptyCache();
  char line[512];
  if (!error.empty()) {
    std::snprintf(line, sizeof line, "| %s | %ld | ERROR: %s |", h.label, long(t), error.c_str());
    PrefillLines().push_back(line);
    state.SkipWithError(error.c_str());
    return;
  }
  const double flops = 4.0 * h.hq * h.d * (double(t) * (t + 1) / 2);
  for (auto _ : state) state.SetIterationTime(ours_us * 1e-6);
  state.counters["L"] = launches;
  state.counters["sdpa_us"] = sdpa_us;
  state.counters["ratio"] = sdpa_us / ours_us;
  std::snprintf(line, sizeof line,
                "| %s | %ld | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.3f | %s |", h.label,
                long(t), launches, flops / 1e9, ours_us, flops / (ours_us * 1e-6) / 1e12,
                sdpa_us, flops / (sdpa_us * 1e-6) / 1e12, sdpa_us / ours_us,
                ok ? "yes" : "ERROR");
  PrefillLines().push_back(line);
}

void PrintTables() {
  std::printf("\ntiming: %s\n", TimingDescription(Reps()).c_str());
  std::printf(
      "\n| heads | batch | ctx | L | MB | invariant (us) | achieved | vs copy | standard splits "
      "(us) | achieved | standard / invariant | ok |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const std::string& l : DecodeLines()) std::printf("%s\n", l.c_str());
  std::printf(
      "\ndecode: invariant = fixed 128-key splits (one warp per split, or per token in whole-token mode at large batch); standard splits = batch_dependent_splits "
      "(FlashDecoding policy); MB = K + V + q + out per launch; L = launches per graph = "
      "rotated input sets.\n");
  std::printf(
      "\n| heads | T | L | GFLOP | invariant (us) | TFLOP/s | SDPA (us) | SDPA TFLOP/s | "
      "SDPA / invariant | ok |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const std::string& l : PrefillLines()) std::printf("%s\n", l.c_str());
}

void Register(const std::string& name, void (*fn)(benchmark::State&),
              const std::vector<int64_t>& args) {
  benchmark::RegisterBenchmark(name.c_str(), fn)
      ->Args(args)
      ->Iterations(1)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

void RegisterAll(bool quick) {
  std::vector<std::pair<int64_t, int64_t>> decode;  // (batch, ctx)
  const std::vector<int64_t> batches =
      quick ? std::vector<int64_t>{1, 64, 256} : std::vector<int64_t>{1, 16, 64, 256};
  const std::vector<int64_t> contexts =
      quick ? std::vector<int64_t>{512, 4096} : std::vector<int64_t>{512, 1024, 4096};
  for (int64_t b : batches) {
    for (int64_t c : contexts) decode.push_back({b, c});
  }
  if (!quick) decode.insert(decode.end(), {{64, 2048}, {64, 8192}, {8, 8192}});
  const int64_t head_shapes = quick ? 1 : static_cast<int64_t>(std::size(kHeads));
  for (int64_t h = 0; h < head_shapes; ++h) {
    const std::string heads = "/hq" + std::to_string(kHeads[h].hq);
    for (const auto& [b, c] : decode) {
      Register("attention_cuda/decode" + heads + "/b" + std::to_string(b) + "_ctx" +
                   std::to_string(c),
               BM_Decode, {h, b, c});
    }
    for (int64_t t : {1024, 4096}) {
      Register("attention_cuda/prefill" + heads + "/T" + std::to_string(t), BM_Prefill, {h, t});
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  if (!ParseTimingFlags(argc, argv, quick)) return 2;
  // Graph capture needs a non-default stream; SDPA runs on it too.
  c10::cuda::CUDAStreamGuard stream_guard(c10::cuda::getStreamFromPool());
  MeasureCopy();
  RegisterAll(quick);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintTables();
  return 0;
}
