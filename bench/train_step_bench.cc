// train_step_bench: one GRPO training step of the learner (Trainer::Step:
// invariant or standard forward, LibTorch backward, gradient clipping,
// AdamW over fp32 master weights, refresh of the compute copy) on
// `--seqs` sequences of `--seq_len` tokens, for the training table of
// docs/benchmarks.md (issue 17 §6). The checkpoint is any Hugging Face
// directory the learner loads (e.g. lockstep_make_model --preset
// qwen3-1.7b). Sequences: a `--prompt_len` random prompt per group of
// `--group` samples, then random completion tokens; every completion token
// is trained (rollout logprobs -log(vocab), rewards spread over [0, 1)).
// Prints one markdown row:
//   tokens/s   (seqs × seq_len) / median step time over --steps timed steps
//              (after --warmup untimed ones)
//   MFU        model FLOPs per step / step time / --peak_tflops: 6 × (the
//              linear layers' parameters, lm_head included) × tokens +
//              12 × layers × q_heads × head_dim × Σ seq_len² / 2 (causal
//              attention, forward + backward); activation recomputation is
//              not counted (PaLM's convention)
// Each step's line also gives StepResult's phases (forward, backward,
// optimizer, snapshot). Peak GPU memory is sampled outside (nvidia-smi), the
// same way for the peer.
//   train_step_bench --model_dir=DIR [--device=cuda] [--mode=invariant]
//       [--seqs=8] [--seq_len=4096] [--prompt_len=64] [--group=8]
//       [--micro_batch_size=1] [--checkpoint_layers=1] [--warmup=1]
//       [--steps=1] [--peak_tflops=780] [--allow_tf32=1] [--profile=TRACE.json]
// --profile: the last timed step runs under LibTorch's Kineto profiler (CPU
// ops and CUDA kernels) and its Chrome trace is written to the file;
// bench/trace_summary.py sums it by kernel.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "absl/strings/str_cat.h"
#include "bench/flag_value.h"
#include "learner_service/trainer.h"

namespace {

using lockstep::learner::Trainer;
using lockstep::learner::TrainerOptions;
using lockstep::learner::Trajectory;

struct Flags {
  std::string model_dir, device = "cuda", mode = "invariant", profile;
  int seqs = 8, seq_len = 4096, prompt_len = 64, group = 8, micro_batch_size = 1;
  int warmup = 1, steps = 1;
  bool checkpoint_layers = true;
  bool allow_tf32 = true;
  double peak_tflops = 780.0;
};

std::vector<Trajectory> Batch(int64_t vocab, const Flags& f) {
  std::mt19937_64 rng(11);
  std::vector<Trajectory> out;
  std::vector<int32_t> prompt;
  for (int s = 0; s < f.seqs; ++s) {
    if (s % f.group == 0) {
      prompt.assign(f.prompt_len, 0);
      for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % vocab);
    }
    Trajectory t;
    t.prompt_tokens = prompt;
    t.completion_tokens.resize(f.seq_len - f.prompt_len);
    for (int32_t& id : t.completion_tokens) id = static_cast<int32_t>(rng() % vocab);
    t.rollout_logprobs.assign(t.completion_tokens.size(),
                              -static_cast<float>(std::log(static_cast<double>(vocab))));
    t.reward = static_cast<float>(rng() % 100) / 100.0f;
    t.group_id = absl::StrCat("g", s / f.group);
    out.push_back(std::move(t));
  }
  return out;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "train_step_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    auto value = [&](const char* name) { return lockstep::bench::FlagValue(argv[i], name); };
    if (auto v = value("model_dir")) f.model_dir = v;
    else if (auto v = value("device")) f.device = v;
    else if (auto v = value("mode")) f.mode = v;
    else if (auto v = value("seqs")) f.seqs = std::atoi(v);
    else if (auto v = value("seq_len")) f.seq_len = std::atoi(v);
    else if (auto v = value("prompt_len")) f.prompt_len = std::atoi(v);
    else if (auto v = value("group")) f.group = std::atoi(v);
    else if (auto v = value("micro_batch_size")) f.micro_batch_size = std::atoi(v);
    else if (auto v = value("checkpoint_layers")) f.checkpoint_layers = std::atoi(v) != 0;
    else if (auto v = value("profile")) f.profile = v;
    else if (auto v = value("allow_tf32")) f.allow_tf32 = std::atoi(v) != 0;
    else if (auto v = value("warmup")) f.warmup = std::atoi(v);
    else if (auto v = value("steps")) f.steps = std::atoi(v);
    else if (auto v = value("peak_tflops")) f.peak_tflops = std::atof(v);
    else return Fail(absl::StrCat("unknown flag ", argv[i]));
  }
  if (f.model_dir.empty()) return Fail("--model_dir is required");
  if (f.seqs < 1 || f.group < 1 || f.prompt_len < 1 || f.seq_len <= f.prompt_len ||
      f.steps < 1 || f.warmup < 0) {
    return Fail("need seqs, group, prompt_len, steps >= 1, warmup >= 0, seq_len > prompt_len");
  }
  TrainerOptions o;
  o.model_dir = f.model_dir;
  if (f.device != "cpu" && f.device != "cuda") return Fail("--device must be cpu or cuda");
  o.device = f.device == "cuda" ? lockstep::kernels::Device::kCuda
                                : lockstep::kernels::Device::kCpu;
  if (f.mode != "invariant" && f.mode != "standard") return Fail("--mode: invariant or standard");
  o.mode = f.mode == "invariant" ? lockstep::common::KernelMode::kInvariant
                                 : lockstep::common::KernelMode::kStandard;
  o.micro_batch_size = f.micro_batch_size;
  o.checkpoint_layers = f.checkpoint_layers;
  o.allow_tf32 = f.allow_tf32;
  o.learning_rate = 1e-6;
  auto trainer = Trainer::Create(o);
  if (!trainer.ok()) return Fail(std::string(trainer.status().ToString()));
  const auto& c = (*trainer)->config();
  const std::vector<Trajectory> batch = Batch(c.vocab_size, f);
  std::vector<double> times;
  namespace prof = torch::profiler::impl;
  const prof::ProfilerConfig profiler_config(prof::ProfilerState::KINETO);
  const std::set<prof::ActivityType> activities = {prof::ActivityType::CPU,
                                                   prof::ActivityType::CUDA};
  for (int s = 0; s < f.warmup + f.steps; ++s) {
    const bool profiled = !f.profile.empty() && s == f.warmup + f.steps - 1;
    if (profiled) {
      try {
        torch::autograd::profiler::prepareProfiler(profiler_config, activities);
        torch::autograd::profiler::enableProfiler(profiler_config, activities);
      } catch (const c10::Error& e) {
        return Fail(absl::StrCat("--profile: ", e.what_without_backtrace()));
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto r = (*trainer)->Step(batch);
    const double dt =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (profiled) {
      try {
        torch::autograd::profiler::disableProfiler()->save(f.profile);
      } catch (const c10::Error& e) {
        return Fail(absl::StrCat("--profile: ", e.what_without_backtrace()));
      }
    }
    if (!r.ok()) return Fail(std::string(r.status().ToString()));
    std::printf(
        "step %d: %.3f s (forward %.3f, backward %.3f, optimizer %.3f, snapshot %.3f) loss %.6f "
        "grad_norm %.4f\n",
        s, dt, r->forward_seconds, r->backward_seconds, r->optimizer_seconds, r->snapshot_seconds,
        r->loss, r->grad_norm);
    std::fflush(stdout);
    if (s >= f.warmup) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  const double step_s = times[times.size() / 2];
  const double tokens = static_cast<double>(f.seqs) * f.seq_len;
  // Linear-layer parameters: everything but the embedding table (lm_head is
  // a matmul even when tied) and the norms.
  const double embed = static_cast<double>(c.vocab_size) * c.hidden_size;
  double linear = static_cast<double>(c.NumParameters()) - embed;
  if (c.tie_word_embeddings) linear += embed;
  const double attn = 12.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim *
                      static_cast<double>(f.seqs) * f.seq_len * f.seq_len / 2.0;
  const double flops = 6.0 * linear * tokens + attn;
  std::printf(
      "| mode | seqs x len | checkpoint_layers | allow_tf32 | step s | tokens/s | model TFLOP/step "
      "| MFU |\n");
  std::printf("|---|---|---|---|---:|---:|---:|---:|\n");
  std::printf("| %s | %d x %d | %d | %d | %.3f | %.0f | %.1f | %.3f |\n", f.mode.c_str(), f.seqs,
              f.seq_len, f.checkpoint_layers ? 1 : 0, f.allow_tf32 ? 1 : 0, step_s, tokens / step_s, flops / 1e12,
              flops / step_s / (f.peak_tflops * 1e12));
  return 0;
}
