// Invariant attention (kernels/cuda) on the H100:
//  - decode over the paged bf16 KV cache: achieved bytes/s against the
//    measured device-to-device copy bandwidth (read + write);
//  - causal prefill against at::scaled_dot_product_attention (bf16, flash).
// Llama-3-8B heads: 32 query heads, 8 KV heads, head_dim 128. Random data,
// 3 warm-ups, median of 25 CUDA-event timings. The caches are larger than
// the 50 MB L2, so no rotation is needed for decode; prefill inputs are
// rotated over 4 sets.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/attention.h"

namespace {

namespace lk = lockstep::kernels;

constexpr int64_t kHq = 32, kHkv = 8, kD = 128, kPage = 16;

double g_copy_bw = 0;
std::vector<std::string>& Lines() {
  static std::vector<std::string> v;
  return v;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

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

double TimeMedian(const std::function<void()>& fn, int reps = 25) {
  for (int i = 0; i < 3; ++i) fn();
  cudaDeviceSynchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(TimeOnce(fn));
  return Median(t);
}

void MeasureCopy() {
  const int64_t bytes = int64_t{1} << 30;
  at::Tensor src = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  at::Tensor dst = at::empty_like(src);
  const double us = TimeMedian([&] {
    cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyDeviceToDevice, nullptr);
  });
  g_copy_bw = 2.0 * bytes / (us * 1e-6);
  std::printf("ceiling: D2D copy %.0f GB/s (read+write)\n", g_copy_bw / 1e9);
}

void BM_Decode(benchmark::State& state) {
  const int64_t batch = state.range(0), ctx = state.range(1);
  const int64_t blocks = (ctx + kPage - 1) / kPage;
  const int64_t pages = batch * blocks;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  at::Tensor kc = at::randn({pages, kPage, kHkv, kD}, bf16);
  at::Tensor vc = at::randn({pages, kPage, kHkv, kD}, bf16);
  at::Tensor tables = at::randperm(pages, at::TensorOptions().dtype(at::kLong))
                          .to(at::kInt).reshape({batch, blocks}).to(at::kCUDA);
  at::Tensor pos = at::full({batch}, ctx - 1, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
  at::Tensor seq = at::arange(batch, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
  at::Tensor q = at::randn({batch, kHq, kD}, f32);
  at::Tensor out = at::empty({batch, kHq, kD}, f32);
  lk::PagedAttentionArgs a;
  a.cache.k = kc.data_ptr();
  a.cache.v = vc.data_ptr();
  a.cache.dtype = lk::DType::kBF16;
  a.cache.num_pages = pages;
  a.cache.page_size = kPage;
  a.cache.num_kv_heads = kHkv;
  a.cache.head_dim = kD;
  a.q = q.data_ptr<float>();
  a.ldq = kHq * kD;
  a.out = out.data_ptr<float>();
  a.ldo = kHq * kD;
  a.tokens = batch;
  a.num_q_heads = kHq;
  a.scale = 1.0f / std::sqrt(float(kD));
  a.positions = pos.data_ptr<int32_t>();
  a.seq_ids = seq.data_ptr<int32_t>();
  a.block_tables = tables.data_ptr<int32_t>();
  a.num_seqs = batch;
  a.max_blocks_per_seq = blocks;
  bool ok = true;
  const double us = TimeMedian([&] {
    if (!lk::cuda::PagedAttention(a, nullptr).ok()) ok = false;
  });
  if (cudaDeviceSynchronize() != cudaSuccess) ok = false;
  const double bytes = 2.0 * batch * ctx * kHkv * kD * 2 + 2.0 * batch * kHq * kD * 4;
  const double bw = bytes / (us * 1e-6);
  for (auto _ : state) state.SetIterationTime(us * 1e-6);
  state.counters["GBps"] = bw / 1e9;
  state.counters["vs_copy"] = bw / g_copy_bw;
  char line[256];
  std::snprintf(line, sizeof line, "| decode | batch %ld, ctx %ld | %.1f | %.1f MB | %.0f GB/s | %.2f | %s |",
                long(batch), long(ctx), us, bytes / 1e6, bw / 1e9, bw / g_copy_bw,
                ok ? "yes" : "ERROR");
  Lines().push_back(line);
}

void BM_Prefill(benchmark::State& state) {
  const int64_t t = state.range(0);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  const int sets = 4;
  std::vector<at::Tensor> q, k, v, qb, kb, vb;
  for (int i = 0; i < sets; ++i) {
    q.push_back(at::randn({t, kHq, kD}, f32));
    k.push_back(at::randn({t, kHkv, kD}, bf16));
    v.push_back(at::randn({t, kHkv, kD}, bf16));
    // SDPA layout [1, heads, T, D], KV heads expanded (untimed).
    qb.push_back(q[i].to(at::kBFloat16).permute({1, 0, 2}).unsqueeze(0).contiguous());
    kb.push_back(k[i].repeat_interleave(kHq / kHkv, 1).permute({1, 0, 2}).unsqueeze(0).contiguous());
    vb.push_back(v[i].repeat_interleave(kHq / kHkv, 1).permute({1, 0, 2}).unsqueeze(0).contiguous());
  }
  at::Tensor out = at::empty({t, kHq, kD}, f32);
  bool ok = true;
  int it = 0;
  const double ours = TimeMedian([&] {
    const int i = it++ % sets;
    lk::PrefillAttentionArgs a;
    a.q = q[i].data_ptr<float>();
    a.ldq = kHq * kD;
    a.k = k[i].data_ptr();
    a.v = v[i].data_ptr();
    a.ldk = kHkv * kD;
    a.kv_dtype = lk::DType::kBF16;
    a.out = out.data_ptr<float>();
    a.ldo = kHq * kD;
    a.tokens = t;
    a.num_q_heads = kHq;
    a.num_kv_heads = kHkv;
    a.head_dim = kD;
    a.scale = 1.0f / std::sqrt(float(kD));
    if (!lk::cuda::PrefillAttention(a, nullptr).ok()) ok = false;
  }, 5);
  const double sdpa = TimeMedian([&] {
    const int i = it++ % sets;
    at::Tensor o = at::scaled_dot_product_attention(qb[i], kb[i], vb[i], {}, 0.0, true);
  });
  if (cudaDeviceSynchronize() != cudaSuccess) ok = false;
  const double flops = 4.0 * kHq * kD * (double(t) * (t + 1) / 2);
  for (auto _ : state) state.SetIterationTime(ours * 1e-6);
  state.counters["ratio"] = sdpa / ours;
  char line[256];
  std::snprintf(line, sizeof line,
                "| prefill | T %ld | %.1f | %.1f GFLOP | %.1f TFLOP/s | SDPA %.1f us (%.0f TFLOP/s): ratio %.3f | %s |",
                long(t), ours, flops / 1e9, flops / (ours * 1e-6) / 1e12, sdpa,
                flops / (sdpa * 1e-6) / 1e12, sdpa / ours, ok ? "yes" : "ERROR");
  Lines().push_back(line);
}

}  // namespace

int main(int argc, char** argv) {
  MeasureCopy();
  for (int64_t ctx : {512, 2048, 8192}) {
    benchmark::RegisterBenchmark(("attention_cuda/decode/b64_ctx" + std::to_string(ctx)).c_str(),
                                 BM_Decode)
        ->Args({64, ctx})->Iterations(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("attention_cuda/decode/b8_ctx8192", BM_Decode)
      ->Args({8, 8192})->Iterations(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
  for (int64_t t : {1024, 4096}) {
    benchmark::RegisterBenchmark(("attention_cuda/prefill/T" + std::to_string(t)).c_str(),
                                 BM_Prefill)
        ->Args({t})->Iterations(1)->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::printf("\n| kind | shape | invariant (us) | bytes / FLOPs | achieved | vs ceiling / peer | ok |\n|---|---|---:|---:|---:|---|---|\n");
  for (const std::string& l : Lines()) std::printf("%s\n", l.c_str());
  return 0;
}
