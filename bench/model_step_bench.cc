// model_step_bench: the time of one decode step of Model::Step on the GPU,
// per step implementation (ModelOptions::cuda_step: legacy, eager, graphs),
// for the per-step breakdown of docs/benchmarks.md. A model of a preset
// shape with random bf16 weights (in memory: normal-like, std 0.02, norms
// near 1; never zeros), `batch` sequences prefilled with `context` random
// tokens, then decode steps (temperature 1, seeded) at batch `batch`:
//   wall ms     host time of Model::Step (median, p90), what the engine sees;
//   device ms   GPU time from the metadata copy to the results copy (CUDA
//               events; the eager and graph steps report it): under graph
//               replay this is the kernels' time, op by op it also holds the
//               gaps while the GPU waits for the host's launches;
//   host ms     wall - device: host work the GPU does not overlap.
// The roofline row: weights + the batch's K/V read once per step over the
// measured copy rate (--copy_tbps, default 4.2 TB/s).
//
//   model_step_bench [--config=qwen3-1.7b] [--batch=64] [--context=128]
//                    [--steps=40] [--warmup=5] [--variants=legacy,eager,graphs]
//                    (a variant "<v>-unfused" runs <v> with the fused kernels off)
//                    [--mode=invariant] [--copy_tbps=4.2]
//                    [--layers=N] (the preset cut to N decoder layers: a 30B MoE's
//                    fp32 standard-mode copy must fit the GPU)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "bench/flag_value.h"
#include "absl/strings/str_split.h"
#include "common/formats/model_generator.h"
#include "common/model/cuda_check.h"
#include "common/model/model.h"
#include "common/model/moe_forward.h"

namespace {

using lockstep::common::CudaStep;
using lockstep::common::ForwardBatch;
using lockstep::common::KernelMode;
using lockstep::common::Model;
using lockstep::common::ModelConfig;
using lockstep::common::StepRequest;
using lockstep::common::TensorMap;

struct Flags {
  std::string config = "qwen3-1.7b";
  int batch = 64;
  int context = 128;
  int steps = 40;
  int warmup = 5;
  std::vector<std::string> variants = {"legacy", "eager", "graphs"};
  std::string mode = "invariant";
  double copy_tbps = 4.2;
  int layers = 0;  // > 0: the preset with this many decoder layers
};

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// bf16 bits of (roughly) N(mean, std^2): the sum of four uniforms.
void Fill(uint8_t* out, int64_t n, float mean, float stddev, uint64_t seed) {
  auto* bits = reinterpret_cast<uint16_t*>(out);
  uint64_t s = seed;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = SplitMix(s);
    float u = 0;
    for (int k = 0; k < 4; ++k) u += static_cast<float>((r >> (16 * k)) & 0xFFFF) / 65536.0f;
    const float v = mean + stddev * (u - 2.0f) * 1.7320508f;  // var of the sum: 4/12
    uint32_t f;
    std::memcpy(&f, &v, 4);
    bits[i] = static_cast<uint16_t>((f + 0x7FFF + ((f >> 16) & 1)) >> 16);
  }
}

TensorMap RandomWeights(const ModelConfig& c) {
  TensorMap out;
  std::vector<std::thread> threads;
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected =
      lockstep::common::ExpectedTensors(c);
  for (const auto& [name, shape] : expected) {
    lockstep::common::HostTensor t;
    t.dtype = lockstep::kernels::DType::kBF16;
    t.shape = shape;
    t.data.resize(t.numel() * 2);
    out.emplace(name, std::move(t));
  }
  uint64_t seed = 1;
  for (auto& [name, t] : out) {
    const bool norm = t.shape.size() == 1;
    // Split big tensors into pieces so that all cores fill.
    const int64_t n = t.numel(), piece = int64_t{1} << 24;
    for (int64_t at = 0; at < n; at += piece) {
      threads.emplace_back(Fill, t.data.data() + at * 2, std::min(piece, n - at),
                           norm ? 1.0f : 0.0f, norm ? 0.01f : 0.02f, seed++);
      if (threads.size() >= 32) {
        for (auto& th : threads) th.join();
        threads.clear();
      }
    }
  }
  for (auto& th : threads) th.join();
  return out;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

struct Row {
  std::string variant;
  double wall50, wall90, dev50, host50;
  int64_t graphs, capture_mib;
};

int Run(const Flags& f) {
  if (lockstep::common::CudaDeviceCount() == 0) {
    std::fprintf(stderr, "model_step_bench: no CUDA device\n");
    return 1;
  }
  auto cfg = lockstep::common::PresetConfig(f.config);
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s\n", cfg.status().ToString().c_str());
    return 1;
  }
  ModelConfig c = *cfg;
  c.dtype = lockstep::kernels::DType::kBF16;
  if (f.layers > 0) c.num_hidden_layers = f.layers;
  const auto t0 = std::chrono::steady_clock::now();
  TensorMap weights = RandomWeights(c);
  std::printf("random weights: %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  auto mode = lockstep::common::ParseKernelMode(f.mode);
  if (!mode.ok()) {
    std::fprintf(stderr, "%s\n", mode.status().ToString().c_str());
    return 1;
  }
  const int64_t page = 16, B = f.batch;
  const int64_t blocks = (f.context + f.warmup + f.steps + page) / page;
  std::vector<Row> rows;
  double experts_per_layer = 0;  // MoE: mean experts a decode step's layer read
  for (const std::string& variant : f.variants) {
    // "<variant>-unfused": the same step with the fused kernels off
    // (LOCKSTEP_FUSED_KERNELS=0, common/model/torch_ops.h), the before of
    // issue 15 item 3 in the same run.
    const bool unfused = absl::EndsWith(variant, "-unfused");
    const std::string v = unfused ? variant.substr(0, variant.size() - 8) : variant;
    if (unfused) {
      setenv("LOCKSTEP_FUSED_KERNELS", "0", 1);
    } else {
      unsetenv("LOCKSTEP_FUSED_KERNELS");
    }
    lockstep::common::ModelOptions o;
    o.mode = *mode;
    o.device = lockstep::kernels::Device::kCuda;
    o.cuda_step = v == "legacy" ? CudaStep::kLegacy
                  : v == "eager" ? CudaStep::kEager
                                 : CudaStep::kGraphs;
    // One variant: the weights are handed over (a 30B MoE's 61 GB must not
    // be held twice on the host).
    auto model = f.variants.size() == 1 ? Model::Create(c, std::move(weights), o)
                                        : Model::Create(c, weights, o);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
      return 1;
    }
    auto cache = (*model)->CreateKvCache(B * blocks + 1, page);
    if (!cache.ok()) {
      std::fprintf(stderr, "%s\n", cache.status().ToString().c_str());
      return 1;
    }
    uint64_t s = 7;
    std::vector<std::vector<int32_t>> seqs(B);
    std::vector<lockstep::kernels::SamplingParams> params(B);
    for (int64_t i = 0; i < B; ++i) {
      for (int k = 0; k < f.context; ++k) seqs[i].push_back(SplitMix(s) % c.vocab_size);
      params[i].seed = SplitMix(s);
    }
    auto step = [&](bool prefill) -> double {
      ForwardBatch b;
      b.num_seqs = B;
      b.max_blocks_per_seq = blocks;
      StepRequest req;
      for (int64_t i = 0; i < B; ++i) {
        for (int64_t k = 0; k < blocks; ++k) b.block_tables.push_back(i * blocks + k);
        const int64_t len = seqs[i].size();
        for (int64_t p = prefill ? 0 : len - 1; p < len; ++p) {
          b.tokens.push_back(seqs[i][p]);
          b.positions.push_back(p);
          b.seq_ids.push_back(i);
          b.slots.push_back((i * blocks + p / page) * page + p % page);
        }
        b.logit_rows.push_back(b.tokens.size() - 1);
        req.params.push_back(params[i]);
        req.positions.push_back(len);
      }
      const auto a = std::chrono::steady_clock::now();
      auto r = (*model)->Step(b, cache->get(), req);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
      if (!r.ok()) {
        std::fprintf(stderr, "step failed: %s\n", r.status().ToString().c_str());
        std::exit(1);
      }
      for (int64_t i = 0; i < B; ++i) seqs[i].push_back(r->tokens[i]);
      return ms;
    };
    step(true);
    for (int i = 0; i < f.warmup; ++i) step(false);
    std::vector<double> wall, dev, host;
    const lockstep::common::MoeCounters moe0 = lockstep::common::ReadMoeCounters();
    for (int i = 0; i < f.steps; ++i) {
      const double ms = step(false);
      const auto st = (*model)->cuda_graph_stats();
      wall.push_back(ms);
      dev.push_back(st.last_step_device_ms);
      host.push_back(ms - st.last_step_device_ms);
    }
    const lockstep::common::MoeCounters moe1 = lockstep::common::ReadMoeCounters();
    if (moe1.layer_calls > moe0.layer_calls) {
      experts_per_layer = static_cast<double>(moe1.experts_touched - moe0.experts_touched) /
                          static_cast<double>(moe1.layer_calls - moe0.layer_calls);
    }
    const auto st = (*model)->cuda_graph_stats();
    rows.push_back({variant, Percentile(wall, 0.5), Percentile(wall, 0.9), Percentile(dev, 0.5),
                    Percentile(host, 0.5), st.graphs, st.capture_bytes >> 20});
    std::printf("%s: wall p50 %.3f ms, device p50 %.3f ms, graphs %lld, replays %lld, "
                "capture %lld MiB, graph memory %lld MiB, last graph %lld nodes / %lld "
                "kernels\n",
                variant.c_str(), rows.back().wall50, rows.back().dev50,
                static_cast<long long>(st.graphs), static_cast<long long>(st.replays),
                static_cast<long long>(st.capture_bytes >> 20),
                static_cast<long long>(st.graph_memory_bytes >> 20),
                static_cast<long long>(st.last_graph_nodes),
                static_cast<long long>(st.last_graph_kernels));
  }
  // Bytes read once per step: every weight (a tied model's lm_head is the
  // embedding, read whole by the head; the lookup reads only B rows) and
  // the K/V of the batch's contexts at the mean measured position.
  // A mixture-of-experts layer reads its router and the experts the step's
  // tokens chose (measured), not all of them.
  double params = static_cast<double>(c.NumParameters());
  if (c.IsMoe()) {
    int64_t sparse = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) sparse += c.IsSparseLayer(l);
    const double expert = 3.0 * c.hidden_size * c.moe_intermediate_size;
    params -= sparse * (c.num_experts - experts_per_layer) * expert;
    std::printf("MoE: %.1f of %lld experts read per sparse layer and step\n", experts_per_layer,
                static_cast<long long>(c.num_experts));
  }
  const double params_bytes = params * 2;
  const double mean_ctx = f.context + f.warmup + f.steps / 2.0;
  const double kv_bytes = 2.0 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 *
                          mean_ctx * B;
  const double floor_ms = (params_bytes + kv_bytes) / (f.copy_tbps * 1e12) * 1e3;
  std::printf("\n%s (%lld layers), batch %d, context %d..%d, mode %s\n", f.config.c_str(),
              static_cast<long long>(c.num_hidden_layers), f.batch, f.context + f.warmup,
              f.context + f.warmup + f.steps, f.mode.c_str());
  std::printf("roofline: (%.2f GB weights + %.2f GB K/V) / %.1f TB/s = %.3f ms/step "
              "(%.0f tokens/s)\n",
              params_bytes / 1e9, kv_bytes / 1e9, f.copy_tbps, floor_ms, B / floor_ms * 1e3);
  std::printf("\n| step | wall p50 (ms) | wall p90 (ms) | device p50 (ms) | host p50 (ms) | "
              "tokens/s (B / wall p50) | fraction of roofline | graphs | capture MiB |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.0f | %.3f | %lld | %lld |\n",
                r.variant.c_str(), r.wall50, r.wall90, r.dev50, r.host50, B / r.wall50 * 1e3,
                floor_ms / r.wall50, static_cast<long long>(r.graphs),
                static_cast<long long>(r.capture_mib));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    auto value = [&](const char* name) { return lockstep::bench::FlagValue(argv[i], name); };
    if (const char* v = value("config")) {
      f.config = v;
    } else if (const char* v = value("batch")) {
      f.batch = std::stoi(v);
    } else if (const char* v = value("context")) {
      f.context = std::stoi(v);
    } else if (const char* v = value("layers")) {
      f.layers = std::stoi(v);
    } else if (const char* v = value("steps")) {
      f.steps = std::stoi(v);
    } else if (const char* v = value("warmup")) {
      f.warmup = std::stoi(v);
    } else if (const char* v = value("variants")) {
      f.variants = absl::StrSplit(v, ',', absl::SkipEmpty());
    } else if (const char* v = value("mode")) {
      f.mode = v;
    } else if (const char* v = value("copy_tbps")) {
      f.copy_tbps = std::stod(v);
    } else {
      std::fprintf(stderr, "model_step_bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  return Run(f);
}
