// learner_service: the lockstep learner as a gRPC server, optionally driving
// the RL loop itself (--drive). Prints exactly one line
//   listening grpc=HOST:PORT metrics=HOST:PORT
// once it serves (after the --rollout endpoints are registered); SIGTERM or
// SIGINT drains (health NOT_SERVING, new calls UNAVAILABLE, in-flight calls
// finish) and exits 0.
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>


#include "absl/time/clock.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/wire/weight_stream.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/net/channel_security.h"
#include "common/model/kernel_mode.h"
#include "common/net/metrics.h"
#include "common/net/server_host.h"
#include "learner_service/server/learner_metrics.h"
#include "common/net/server_security.h"
#include "learner_service/driver.h"
#include "learner_service/membership.h"
#include "learner_service/server/learner_grpc_service.h"
#include "learner_service/learner.h"

ABSL_FLAG(std::string, host, "0.0.0.0",
          "Address the gRPC and metrics servers bind (0.0.0.0: all)");
ABSL_FLAG(int, port, 50052, "gRPC port (0: pick a free one)");
ABSL_FLAG(int, metrics_port, 9092, "Prometheus /metrics port (0: pick)");
ABSL_FLAG(std::string, metrics_host, "",
          "Address the /metrics endpoint binds (default: --host)");
ABSL_FLAG(std::string, metrics_auth_token_file, "",
          "When set, /metrics requires \"Authorization: Bearer <token>\" (the "
          "file's content, whitespace stripped)");
ABSL_FLAG(std::string, model_dir, "",
          "Directory with config.json and model.safetensors, or "
          "model.safetensors.index.json + shards (required)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(std::string, kernels, "invariant", "invariant or standard");
ABSL_FLAG(std::string, compute_dtype, "",
          "f32 or bf16: dtype of the compute copy pushed to rollouts "
          "(default: the model config's torch_dtype; must match the "
          "rollouts')");
ABSL_FLAG(bool, drive, false,
          "Run the built-in RL loop against the --rollout endpoints");
ABSL_FLAG(int64_t, steps, 20, "--drive: training steps (0: until SIGTERM)");
ABSL_FLAG(std::string, task, "reverse", "--drive: reverse or add");
ABSL_FLAG(int, prompts_per_step, 16, "--drive: prompts per step");
ABSL_FLAG(int, samples_per_prompt, 8,
          "--drive: samples per prompt (the GRPO group size)");
ABSL_FLAG(int, max_tokens, 0,
          "--drive: max completion tokens (0: the task's maximum)");
ABSL_FLAG(double, temperature, 1.0, "--drive: sampling temperature");
ABSL_FLAG(double, top_p, 1.0, "--drive: nucleus mass in (0, 1] (1: off)");
ABSL_FLAG(int32_t, top_k, 0, "--drive: keep the top_k tokens (0: off)");
ABSL_FLAG(double, min_p, 0.0, "--drive: min_p filter in [0, 1] (0: off)");
ABSL_FLAG(uint64_t, seed, 1, "--drive: seed of prompts and sampling");
ABSL_FLAG(bool, keep_serving, false,
          "--drive: keep serving after the last step (until SIGTERM)");
ABSL_FLAG(bool, fail_on_mismatch, false,
          "--drive: exit with status 3 at the first step with a logprob "
          "mismatch");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Root directory of Save/LoadCheckpoint (empty: disabled)");
ABSL_FLAG(double, lr, 3e-3,
          "AdamW learning rate (the default suits the tiny model's tasks)");
ABSL_FLAG(double, weight_decay, 0.0, "AdamW weight decay");
ABSL_FLAG(double, clip_ratio, 0.2, "PPO clip range (ratio in [1-c, 1+c])");
ABSL_FLAG(double, clip_ratio_low, -1.0, "PPO clip below 1 (overrides --clip_ratio; < 0: it)");
ABSL_FLAG(double, clip_ratio_high, -1.0,
          "PPO clip above 1 (overrides --clip_ratio, e.g. DAPO's 0.28; < 0: it)");
ABSL_FLAG(double, clip_ratio_c, 0.0, "Dual-clip bound for negative advantages (0: off; > 1)");
ABSL_FLAG(std::string, loss_aggregation, "token-mean",
          "token-mean, seq-mean-token-mean or seq-mean-token-sum");
ABSL_FLAG(std::string, kl_estimator, "k3", "KL estimator of the penalty: k1, k2 or k3");
ABSL_FLAG(double, entropy_coef, 0.0, "Entropy bonus coefficient (>= 0)");
ABSL_FLAG(double, router_aux_loss_coef, 0.0,
          "Mixture-of-experts load-balancing loss coefficient (>= 0; 0: off)");
ABSL_FLAG(bool, kl_in_reward, false,
          "Subtract kl_coef * KL from the rewards (before the advantages) instead of adding "
          "it to the loss");
ABSL_FLAG(std::string, ref_model_dir, "",
          "Frozen reference policy for the KL (a model dir of the same config; empty: the "
          "initial weights)");
ABSL_FLAG(std::string, advantage_norm, "grpo",
          "grpo ((r - mean) / std per group) or drgrpo (r - mean, Dr. GRPO)");
ABSL_FLAG(std::string, lr_schedule, "constant", "constant, linear or cosine (after the warmup)");
ABSL_FLAG(int64_t, lr_warmup_steps, 0, "Linear learning-rate warmup steps");
ABSL_FLAG(int64_t, lr_total_steps, 0,
          "Steps of a linear or cosine schedule (0 with --drive: --steps)");
ABSL_FLAG(double, min_lr_ratio, 0.0, "Final learning rate of the schedule / --lr");
ABSL_FLAG(bool, checkpoint_layers, false,
          "Activation checkpointing: keep only each layer's input, recompute it in the "
          "backward (the same bits; less memory)");
ABSL_FLAG(bool, decay_norms_and_biases, false,
          "Apply --weight_decay to norm weights and biases too");
ABSL_FLAG(double, kl_coef, 0.0,
          "Weight of the k3 KL penalty to the initial policy (0: off)");
ABSL_FLAG(double, max_grad_norm, 1.0, "Gradient-norm clip (<= 0: off)");
ABSL_FLAG(int64_t, micro_batch_size, 16,
          "Trajectories per no-grad forward of the KL's reference logprobs "
          "(the gradient pass runs one trajectory at a time and sums the "
          "gradients in batch order: the split never changes the update "
          "in invariant mode)");
ABSL_FLAG(int64_t, max_buffered_trajectories, 65536,
          "Trajectory buffer capacity");
ABSL_FLAG(int, push_attempts, 0,
          "Weight push tries, UNAVAILABLE retried (0: as many as "
          "--push_retry_seconds allows)");
ABSL_FLAG(double, push_retry_seconds, 60.0,
          "Keep retrying a push to an unavailable (restarting) rollout this long");
ABSL_FLAG(std::string, weight_path, "auto",
          "How pushes carry the weights: auto (shared memory to rollouts on this host, the "
          "stream to others), stream, or shared_memory");
ABSL_FLAG(int64_t, push_chunk_bytes, int64_t{4} << 20,
          "Payload bytes per chunk of a streamed push, 1..4194304 (the rollout's "
          "--max_message_bytes must hold one)");
ABSL_FLAG(int, push_streams, 1,
          "Parallel UpdateWeights calls a streamed push is split into, 1..16 (the tensors "
          "round-robin over them; 1: one stream)");
ABSL_FLAG(bool, colocate, false,
          "--drive: the rollouts share the learner's GPU: every step they generate, sleep "
          "(KV cache and weights released) while the learner trains, get the new weights "
          "and wake up");
ABSL_FLAG(double, generate_retry_seconds, 60.0,
          "--drive: keep retrying Generate on an unavailable rollout this long");
ABSL_FLAG(int64_t, checkpoint_every, 0,
          "--drive: save the checkpoint 'drive' every N steps (needs --checkpoint_dir)");
ABSL_FLAG(std::string, rollout_dns, "",
          "HOST:PORT names (comma list) re-resolved every --rollout_resolve_seconds: "
          "every address is a rollout (e.g. a Kubernetes headless Service); new ones "
          "are registered and brought to the current version, vanished ones dropped");
ABSL_FLAG(double, rollout_resolve_seconds, 10.0, "Period of --rollout_dns resolution");
ABSL_FLAG(bool, resume, false,
          "Start from the checkpoint 'drive' under --checkpoint_dir when it "
          "exists; rollouts that kept newer weights get the checkpoint's, "
          "under a newer version");
ABSL_FLAG(int, num_threads, 0,
          "CPU threads of the invariant kernels (0: LOCKSTEP_NUM_THREADS or "
          "all cores)");
ABSL_FLAG(bool, allow_tf32, true,
          "--device=cuda: LibTorch's fp32 matmuls (the backward's GEMMs) may "
          "use TF32 tensor cores; the invariant forward is unaffected");
ABSL_FLAG(int, torch_threads, 0,
          "LibTorch intra-op threads (0: LibTorch's default)");
ABSL_FLAG(double, drain_announce_seconds, 2.0,
          "On SIGTERM, seconds health answers NOT_SERVING before shutdown");
ABSL_FLAG(std::string, rollout_auth_token_file, "",
          "File with the bearer token the rollouts require (if any)");
ABSL_FLAG(bool, rollout_tls, false,
          "Dial the rollouts with TLS, verifying their certificates against "
          "gRPC's default roots (implied by the other --rollout_tls_* files)");
ABSL_FLAG(std::string, rollout_tls_ca, "",
          "PEM CA bundle verifying the rollouts' certificates (rollouts "
          "started with --tls_cert); implies TLS");
ABSL_FLAG(std::string, rollout_tls_cert, "",
          "PEM client certificate chain presented to the rollouts (needed by "
          "rollouts started with --tls_ca); with --rollout_tls_key; implies "
          "TLS");
ABSL_FLAG(std::string, rollout_tls_key, "",
          "PEM private key of --rollout_tls_cert");
ABSL_FLAG(std::string, rollout_tls_server_name, "",
          "Name checked against the rollouts' certificates instead of the "
          "--rollout host (e.g. localhost when dialing 127.0.0.1); needs TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle: require and verify client certificates (mTLS)");
ABSL_FLAG(std::string, auth_token_file, "",
          "File with the bearer token every call (except health and "
          "reflection) must present");

namespace {

using lockstep::learner::Learner;

// Pulls every --rollout=X / --rollout X out of argv (repeatable and comma
// separated), leaving the rest for absl::ParseCommandLine.
std::vector<std::string> ExtractRollouts(int* argc, char** argv) {
  std::vector<std::string> out;
  int w = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string_view a = argv[i];
    std::string value;
    bool match = false;
    for (std::string_view p : {"--rollout=", "-rollout="}) {
      if (a.substr(0, p.size()) == p) {
        value = std::string(a.substr(p.size()));
        match = true;
      }
    }
    if (!match && (a == "--rollout" || a == "-rollout") && i + 1 < *argc) {
      value = argv[++i];
      match = true;
    }
    if (match) {
      for (absl::string_view e : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        out.emplace_back(e);
      }
      continue;
    }
    argv[w++] = argv[i];
  }
  *argc = w;
  return out;
}

// Set by SIGTERM/SIGINT or by the end of --drive; may be set twice.
class StopSignal {
 public:
  void Set() {
    absl::MutexLock lock(&mu_);
    set_ = true;
  }
  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&set_));
  }

 private:
  absl::Mutex mu_;
  bool set_ = false;
};

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int) {
  const char c = 's';
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &c, 1);
}

int Fail(const absl::Status& s) {
  std::cerr << "learner_service: " << s << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "lockstep learner service.\n"
      "  learner_service --model_dir=DIR [--rollout=HOST:PORT ...] [--drive]");
  std::vector<std::string> rollouts = ExtractRollouts(&argc, argv);
  absl::ParseCommandLine(argc, argv);

  // SIGTERM/SIGINT: the handler only writes to a pipe (async-signal-safe);
  // a watcher thread turns that into the stop request. A handler rather than
  // sigwait because threads started before main (by libraries) would not
  // inherit a signal mask.
  if (pipe(g_signal_pipe) != 0) {
    return Fail(absl::InternalError("cannot create the signal pipe"));
  }
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::atomic<bool> stop{false};
  StopSignal stop_requested;
  // Set once the gRPC server runs, so that a signal turns health NOT_SERVING
  // at once, even while a training step is still finishing.
  std::atomic<lockstep::common::ServerHost*> live_server{nullptr};
  // Set once the learner exists: a signal also ends its push retries.
  std::atomic<Learner*> live_learner{nullptr};
  std::thread([&] {
    char c;
    while (read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    stop = true;
    if (lockstep::common::ServerHost* h = live_server.load()) h->SetServing(false);
    if (Learner* l = live_learner.load()) l->BeginShutdown();
    stop_requested.Set();
  }).detach();

  if (absl::GetFlag(FLAGS_model_dir).empty()) {
    return Fail(absl::InvalidArgumentError("--model_dir is required"));
  }
  lockstep::learner::LearnerOptions options;
  lockstep::learner::TrainerOptions& t = options.trainer;
  t.model_dir = absl::GetFlag(FLAGS_model_dir);
  absl::StatusOr<lockstep::common::KernelMode> mode =
      lockstep::common::ParseKernelMode(absl::GetFlag(FLAGS_kernels));
  if (!mode.ok()) return Fail(mode.status());
  t.mode = *mode;
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device == "cpu") {
    t.device = lockstep::kernels::Device::kCpu;
  } else if (device == "cuda") {
    t.device = lockstep::kernels::Device::kCuda;
  } else {
    return Fail(absl::InvalidArgumentError("--device must be cpu or cuda"));
  }
  const std::string dtype = absl::GetFlag(FLAGS_compute_dtype);
  if (dtype == "f32") {
    t.compute_dtype = lockstep::kernels::DType::kF32;
  } else if (dtype == "bf16") {
    t.compute_dtype = lockstep::kernels::DType::kBF16;
  } else if (!dtype.empty()) {
    return Fail(absl::InvalidArgumentError("--compute_dtype must be f32 or bf16"));
  }
  t.learning_rate = absl::GetFlag(FLAGS_lr);
  t.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  t.clip_ratio_low = t.clip_ratio_high = absl::GetFlag(FLAGS_clip_ratio);
  if (absl::GetFlag(FLAGS_clip_ratio_low) >= 0) t.clip_ratio_low = absl::GetFlag(FLAGS_clip_ratio_low);
  if (absl::GetFlag(FLAGS_clip_ratio_high) >= 0) {
    t.clip_ratio_high = absl::GetFlag(FLAGS_clip_ratio_high);
  }
  t.clip_ratio_c = absl::GetFlag(FLAGS_clip_ratio_c);
  {
    auto agg = lockstep::learner::ParseLossAggregation(absl::GetFlag(FLAGS_loss_aggregation));
    if (!agg.ok()) return Fail(agg.status());
    t.loss_aggregation = *agg;
    auto kl = lockstep::learner::ParseKlEstimator(absl::GetFlag(FLAGS_kl_estimator));
    if (!kl.ok()) return Fail(kl.status());
    t.kl_estimator = *kl;
    auto sched = lockstep::learner::ParseLrSchedule(absl::GetFlag(FLAGS_lr_schedule));
    if (!sched.ok()) return Fail(sched.status());
    t.lr_schedule = *sched;
    const std::string norm = absl::GetFlag(FLAGS_advantage_norm);
    if (norm != "grpo" && norm != "drgrpo") {
      return Fail(absl::InvalidArgumentError("--advantage_norm must be grpo or drgrpo"));
    }
    t.advantages.scale_by_std = norm == "grpo";
  }
  t.kl_in_reward = absl::GetFlag(FLAGS_kl_in_reward);
  t.entropy_coef = absl::GetFlag(FLAGS_entropy_coef);
  t.router_aux_loss_coef = absl::GetFlag(FLAGS_router_aux_loss_coef);
  t.reference_model_dir = absl::GetFlag(FLAGS_ref_model_dir);
  t.lr_warmup_steps = absl::GetFlag(FLAGS_lr_warmup_steps);
  t.lr_total_steps = absl::GetFlag(FLAGS_lr_total_steps);
  if (t.lr_total_steps == 0 && absl::GetFlag(FLAGS_drive)) t.lr_total_steps = absl::GetFlag(FLAGS_steps);
  t.min_lr_ratio = absl::GetFlag(FLAGS_min_lr_ratio);
  t.decay_norms_and_biases = absl::GetFlag(FLAGS_decay_norms_and_biases);
  t.checkpoint_layers = absl::GetFlag(FLAGS_checkpoint_layers);
  t.kl_coef = absl::GetFlag(FLAGS_kl_coef);
  t.max_grad_norm = absl::GetFlag(FLAGS_max_grad_norm);
  t.micro_batch_size = absl::GetFlag(FLAGS_micro_batch_size);
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.max_buffered_trajectories =
      absl::GetFlag(FLAGS_max_buffered_trajectories);
  {
    const int attempts = absl::GetFlag(FLAGS_push_attempts);
    options.push.retry.max_attempts = attempts > 0 ? attempts : std::numeric_limits<int>::max();
    options.push.retry.max_backoff = absl::Seconds(2);
    options.push.retry_window = absl::Seconds(absl::GetFlag(FLAGS_push_retry_seconds));
    absl::StatusOr<lockstep::learner::WeightPathChoice> path =
        lockstep::learner::ParseWeightPathChoice(absl::GetFlag(FLAGS_weight_path));
    if (!path.ok()) return Fail(path.status());
    options.push.path = *path;
    const int64_t chunk = absl::GetFlag(FLAGS_push_chunk_bytes);
    if (chunk < 1 || chunk > static_cast<int64_t>(lockstep::common::kMaxWeightChunkBytes)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--push_chunk_bytes must be in [1, ", lockstep::common::kMaxWeightChunkBytes, "]")));
    }
    options.push.chunk_bytes = static_cast<size_t>(chunk);
    const int streams = absl::GetFlag(FLAGS_push_streams);
    if (!lockstep::learner::CheckPushStreams(streams).ok()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--push_streams must be in [1, ", lockstep::common::kMaxWeightStreams,
                       "], got ", streams)));
    }
    options.push.streams = streams;
  }
  options.adopt_newer_rollouts = absl::GetFlag(FLAGS_resume);
  if (absl::GetFlag(FLAGS_resume) && absl::GetFlag(FLAGS_checkpoint_dir).empty()) {
    return Fail(absl::InvalidArgumentError("--resume needs --checkpoint_dir"));
  }
  t.num_threads = absl::GetFlag(FLAGS_num_threads);
  t.torch_threads = absl::GetFlag(FLAGS_torch_threads);
  t.allow_tf32 = absl::GetFlag(FLAGS_allow_tf32);
  if (const std::string f = absl::GetFlag(FLAGS_rollout_auth_token_file);
      !f.empty()) {
    absl::StatusOr<std::string> token =
        lockstep::common::ReadTokenFile("--rollout_auth_token_file", f);
    if (!token.ok()) return Fail(token.status());
    options.rollout_auth_token = *std::move(token);
  }
  {
    lockstep::common::ChannelSecurityOptions rollout_tls;
    rollout_tls.enabled = absl::GetFlag(FLAGS_rollout_tls);
    rollout_tls.ca_file = absl::GetFlag(FLAGS_rollout_tls_ca);
    rollout_tls.cert_file = absl::GetFlag(FLAGS_rollout_tls_cert);
    rollout_tls.key_file = absl::GetFlag(FLAGS_rollout_tls_key);
    rollout_tls.server_name = absl::GetFlag(FLAGS_rollout_tls_server_name);
    const lockstep::common::ChannelSecurityNames flags{
        "--rollout_tls", "--rollout_tls_ca", "--rollout_tls_cert",
        "--rollout_tls_key", "--rollout_tls_server_name"};
    absl::StatusOr<lockstep::common::ChannelSecurity> rollout_security =
        lockstep::common::MakeChannelSecurity(rollout_tls, flags);
    if (!rollout_security.ok()) return Fail(rollout_security.status());
    options.rollout_security = *std::move(rollout_security);
    if (options.rollout_security.tls()) {
      std::cerr << "learner_service: rollout channels: "
                << options.rollout_security.Describe() << std::endl;
    }
  }

  const std::string host = absl::GetFlag(FLAGS_host);
  absl::StatusOr<std::unique_ptr<lockstep::common::MetricsServer>> metrics =
      [&]() -> absl::StatusOr<std::unique_ptr<lockstep::common::MetricsServer>> {
        std::string token;
        if (const std::string f = absl::GetFlag(FLAGS_metrics_auth_token_file); !f.empty()) {
          absl::StatusOr<std::string> read =
              lockstep::common::ReadTokenFile("--metrics_auth_token_file", f);
          if (!read.ok()) return read.status();
          token = *std::move(read);
        }
        const std::string metrics_host = absl::GetFlag(FLAGS_metrics_host);
        return lockstep::common::MetricsServer::Start(
            metrics_host.empty() ? host : metrics_host, absl::GetFlag(FLAGS_metrics_port),
            nullptr, token);
      }();
  if (!metrics.ok()) return Fail(metrics.status());
  lockstep::common::BuildInfo build_info;
  build_info.role = "learner";
  build_info.kernels = std::string(lockstep::common::KernelModeName(t.mode));
  build_info.device = device;
  lockstep::learner::LearnerMetrics learner_metrics(*(*metrics)->registry(), build_info);
  absl::StatusOr<std::unique_ptr<Learner>> learner = Learner::Create(options, &learner_metrics);
  if (!learner.ok()) return Fail(learner.status());
  live_learner.store(learner->get());
  if (stop) (*learner)->BeginShutdown();
  std::cerr << "learner_service: model " << (*learner)->config().Summary() << std::endl;

  lockstep::learner::LearnerServiceImpl service(learner->get());
  lockstep::common::ServerHostOptions host_options;
  host_options.host = host;
  host_options.port = absl::GetFlag(FLAGS_port);
  host_options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  host_options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  host_options.security.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  host_options.security.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  host_options.max_receive_message_bytes = 64 << 20;
  host_options.max_send_message_bytes = 64 << 20;
  absl::StatusOr<std::unique_ptr<lockstep::common::ServerHost>> server =
      lockstep::common::ServerHost::Start(host_options, {&service}, {lockstep::learner::kLearnerServiceName});
  if (!server.ok()) return Fail(server.status());

  std::map<std::string, std::string> resume_state;
  if (absl::GetFlag(FLAGS_resume)) {
    absl::StatusOr<lockstep::learner::CheckpointInfo> loaded = (*learner)->LoadCheckpoint("drive");
    if (loaded.ok()) {
      std::cerr << "learner_service: resumed from " << loaded->path << " (step " << loaded->step
                << ", version " << loaded->weight_version << ")" << std::endl;
      resume_state = loaded->extra;
    } else if (!absl::IsNotFound(loaded.status())) {
      return Fail(loaded.status());
    }
  }
  if (!rollouts.empty()) {
    // Rollouts may still be starting: registration waits for them.
    absl::StatusOr<std::vector<lockstep::learner::PushResult>> reg =
        (*learner)->RegisterRollouts(rollouts, /*push_now=*/true);
    if (!reg.ok()) return Fail(reg.status());
    for (const auto& p : *reg) {
      if (!p.status.ok()) return Fail(p.status);
    }
  }
  std::unique_ptr<lockstep::learner::Membership> membership;
  if (const std::string names = absl::GetFlag(FLAGS_rollout_dns); !names.empty()) {
    lockstep::learner::MembershipOptions m;
    for (absl::string_view n : absl::StrSplit(names, ',', absl::SkipEmpty())) m.names.emplace_back(n);
    m.period = absl::Seconds(absl::GetFlag(FLAGS_rollout_resolve_seconds));
    membership = std::make_unique<lockstep::learner::Membership>(learner->get(), m);
    // The first round before serving and driving, so that the members are
    // known (and current) from the start; then one every period.
    const lockstep::learner::MembershipRound first = membership->RunOnce();
    for (const std::string& a : first.added) {
      std::cerr << "learner_service: rollout " << a << " joined" << std::endl;
    }
    for (const std::string& e : first.errors) {
      std::cerr << "learner_service: membership: " << e << std::endl;
    }
    membership->Start();
  }
  (*server)->SetServing(true);
  live_server.store(server->get());
  if (stop) (*server)->SetServing(false);  // a signal came during start-up
  const std::string grpc_addr = (*server)->address();
  std::printf("listening grpc=%s metrics=%s\n", grpc_addr.c_str(),
              (*metrics)->address().c_str());
  std::fflush(stdout);

  int exit_code = 0;
  if (absl::GetFlag(FLAGS_drive)) {
    lockstep::learner::DriverOptions d;
    d.task = absl::GetFlag(FLAGS_task);
    d.steps = absl::GetFlag(FLAGS_steps);
    d.prompts_per_step = absl::GetFlag(FLAGS_prompts_per_step);
    d.samples_per_prompt = absl::GetFlag(FLAGS_samples_per_prompt);
    d.seed = absl::GetFlag(FLAGS_seed);
    d.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
    d.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
    d.top_k = absl::GetFlag(FLAGS_top_k);
    d.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
    d.max_tokens = absl::GetFlag(FLAGS_max_tokens);
    d.fail_on_mismatch = absl::GetFlag(FLAGS_fail_on_mismatch);
    d.colocate = absl::GetFlag(FLAGS_colocate);
    d.retry_window = absl::Seconds(absl::GetFlag(FLAGS_generate_retry_seconds));
    d.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
    d.resume_state = resume_state;
    d.out = &std::cout;
    absl::StatusOr<lockstep::learner::DriveSummary> summary =
        lockstep::learner::RunDriver(learner->get(), d, &stop);
    if (!summary.ok()) {
      std::cerr << "learner_service: drive: " << summary.status() << std::endl;
      exit_code = absl::IsFailedPrecondition(summary.status()) &&
                          d.fail_on_mismatch
                      ? 3
                      : 1;
    } else {
      const lockstep::learner::DriveSummary& s = *summary;
      const double exact =
          s.tokens_compared == 0
              ? 100.0
              : 100.0 * static_cast<double>(s.tokens_compared -
                                            s.tokens_mismatched) /
                    static_cast<double>(s.tokens_compared);
      std::cout << absl::StrFormat(
                       "summary kernels=%s steps=%d tokens_compared=%d "
                       "tokens_mismatched=%d exact_pct=%.4f "
                       "max_abs_diff=%.6g reward_first=%.4f reward_last=%.4f "
                       "mean_push_ms=%.2f seconds=%.1f sampled_compared=%d "
                       "sampled_mismatched=%d",
                       std::string(lockstep::common::KernelModeName(t.mode)),
                       s.steps.size(), s.tokens_compared, s.tokens_mismatched,
                       exact, s.max_abs_diff, s.reward_first, s.reward_last,
                       s.mean_push_ms, s.seconds, s.sampled_compared,
                       s.sampled_mismatched)
                << std::endl;
    }
    if (!absl::GetFlag(FLAGS_keep_serving)) stop_requested.Set();
  }
  stop_requested.Wait();
  if (membership != nullptr) membership->Stop();

  // Drain: refuse new work, keep answering health NOT_SERVING for
  // --drain_announce_seconds (so probes and load balancers see it), let
  // in-flight calls finish (bounded), exit.
  (*server)->SetServing(false);
  service.StartDraining();
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_drain_announce_seconds)));
  live_server.store(nullptr);
  (*server)->Shutdown(absl::Seconds(10));
  return exit_code;
}
