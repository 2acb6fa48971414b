// rollout_service: serves lockstep.v1.RolloutService over a model directory.
// When ready it prints exactly one line to stdout,
//   listening grpc=HOST:PORT metrics=HOST:PORT
// and on SIGTERM/SIGINT it drains (health NOT_SERVING, new requests
// UNAVAILABLE, in-flight ones get --drain_grace_seconds) and exits 0.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/model/cuda_check.h"
#include "common/model/kernel_mode.h"
#include "common/model/model.h"
#include "common/model/nccl_communicator.h"
#include "kernels/cpu/threading.h"
#include "common/net/channel_security.h"
#include "kernels/device.h"
#include "rollout_service/server/rollout_server.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to bind (gRPC and metrics)");
ABSL_FLAG(int, port, 0, "gRPC port (0: pick a free port)");
ABSL_FLAG(int, metrics_port, 0,
          "Prometheus /metrics port (0: pick a free port)");
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
ABSL_FLAG(int, tp, 1, "Tensor-parallel ranks: 1, 2, 4 or 8");
ABSL_FLAG(std::string, tp_backend, "inprocess",
          "How the TP ranks run: inprocess (threads on one device, e.g. to check TP "
          "invariance on one GPU or on CPU) or nccl (rank r on GPU r of this pod; "
          "needs --device=cuda and --tp visible GPUs)");
ABSL_FLAG(int64_t, kv_cache_bytes, int64_t{512} << 20,
          "KV-cache budget in bytes (pages = budget / bytes per page)");
ABSL_FLAG(int64_t, page_size, 16, "Tokens per KV-cache page");
ABSL_FLAG(int64_t, max_batch_tokens, 512, "Tokens computed per engine step");
ABSL_FLAG(int64_t, max_running, 256, "Sequences holding KV at once");
ABSL_FLAG(int64_t, max_queue, 4096,
          "Samples that may wait for admission (RESOURCE_EXHAUSTED past it)");
ABSL_FLAG(bool, prefix_sharing, true,
          "Share the prompt pages among the n samples of a prompt");
ABSL_FLAG(double, selfcheck_rate, 0.0,
          "Fraction of finished samples re-scored alone and compared bitwise");
ABSL_FLAG(uint64_t, initial_version, 0, "Weight version of --model_dir");
ABSL_FLAG(int, max_message_bytes, 16 << 20, "Largest request message accepted");
ABSL_FLAG(double, drain_announce_seconds, 2.0,
          "On SIGTERM, seconds health answers NOT_SERVING before shutdown");
ABSL_FLAG(double, drain_grace_seconds, 30.0,
          "On SIGTERM, time in-flight requests get to finish");
ABSL_FLAG(double, weight_assembly_timeout_s, 60.0,
          "Seconds the parts of a parallel weight update (stream_count > 1) may take to all "
          "arrive after the first; past it every part fails with ABORTED. In (0, 3600]");
ABSL_FLAG(int, num_threads, 0,
          "CPU kernel threads (0: LOCKSTEP_NUM_THREADS or all cores)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle: require client certificates");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding a bearer token every call must present");

namespace {

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const unsigned char c = static_cast<unsigned char>(sig);
  (void)!write(g_signal_pipe[1], &c, 1);
}

int Fail(const std::string& what) {
  std::cerr << "rollout_service: " << what << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves lockstep.v1.RolloutService.\n"
      "  rollout_service --model_dir=DIR [--port=N] [--metrics_port=N] ...");
  absl::ParseCommandLine(argc, argv);

  // SIGTERM/SIGINT only write to a pipe that main() waits on. A handler
  // (not a blocked mask + sigwait) because libraries start threads before
  // main() whose masks we do not control.
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) return Fail("pipe() failed");
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);

  using lockstep::common::KernelMode;
  absl::StatusOr<KernelMode> mode =
      lockstep::common::ParseKernelMode(absl::GetFlag(FLAGS_kernels));
  if (!mode.ok()) return Fail(mode.status().ToString());
  const std::string device = absl::GetFlag(FLAGS_device);
  lockstep::common::ModelOptions model_options;
  model_options.mode = *mode;
  model_options.tp_size = absl::GetFlag(FLAGS_tp);
  if (const std::string b = absl::GetFlag(FLAGS_tp_backend); b == "nccl") {
    model_options.tp_backend = lockstep::common::TpBackend::kNccl;
  } else if (b != "inprocess") {
    return Fail(absl::StrCat("unknown --tp_backend=", b, " (inprocess or nccl)"));
  }
  if (device == "cpu") {
    model_options.device = lockstep::kernels::Device::kCpu;
  } else if (device == "cuda") {
    if (!lockstep::kernels::CudaKernelsBuilt()) {
      return Fail("--device=cuda but this build has no CUDA kernels");
    }
    model_options.device = lockstep::kernels::Device::kCuda;
  } else {
    return Fail(absl::StrCat("unknown --device=", device, " (cpu or cuda)"));
  }
  if (model_options.tp_backend == lockstep::common::TpBackend::kNccl) {
    if (model_options.device != lockstep::kernels::Device::kCuda) {
      return Fail("--tp_backend=nccl needs --device=cuda");
    }
    if (!lockstep::common::NcclBuilt()) {
      return Fail("--tp_backend=nccl but this build has no NCCL");
    }
    const int gpus = lockstep::common::CudaDeviceCount();
    if (gpus < model_options.tp_size) {
      return Fail(absl::StrCat("--tp=", model_options.tp_size, " --tp_backend=nccl puts rank r on GPU r: ",
                               model_options.tp_size, " GPUs are needed, ", gpus,
                               " visible (CUDA_VISIBLE_DEVICES / the pod's nvidia.com/gpu limit)"));
    }
  }
  if (absl::GetFlag(FLAGS_num_threads) > 0) {
    lockstep::kernels::SetNumThreads(absl::GetFlag(FLAGS_num_threads));
  }
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) return Fail("--model_dir is required");

  auto model = lockstep::common::Model::Load(model_dir, model_options);
  if (!model.ok()) return Fail(model.status().ToString());
  std::cerr << "rollout_service: model " << (*model)->config().Summary() << "\n";

  lockstep::rollout::EngineOptions engine_options;
  engine_options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  engine_options.page_size = absl::GetFlag(FLAGS_page_size);
  engine_options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  engine_options.max_running = absl::GetFlag(FLAGS_max_running);
  engine_options.max_queue = absl::GetFlag(FLAGS_max_queue);
  engine_options.prefix_sharing = absl::GetFlag(FLAGS_prefix_sharing);
  engine_options.selfcheck_rate = absl::GetFlag(FLAGS_selfcheck_rate);
  engine_options.initial_version = absl::GetFlag(FLAGS_initial_version);

  lockstep::rollout::ServerOptions server_options;
  server_options.host = absl::GetFlag(FLAGS_host);
  server_options.port = absl::GetFlag(FLAGS_port);
  server_options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  server_options.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  if (const std::string f = absl::GetFlag(FLAGS_metrics_auth_token_file); !f.empty()) {
    absl::StatusOr<std::string> token =
        lockstep::common::ReadTokenFile("--metrics_auth_token_file", f);
    if (!token.ok()) return Fail(token.status().ToString());
    server_options.metrics_bearer_token = *std::move(token);
  }
  server_options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  server_options.device_name = device;
  const double assembly_timeout = absl::GetFlag(FLAGS_weight_assembly_timeout_s);
  if (!(assembly_timeout > 0.0 && assembly_timeout <= 3600.0)) {
    return Fail(absl::StrCat("--weight_assembly_timeout_s must be in (0, 3600], got ",
                             assembly_timeout));
  }
  server_options.weight_assembly_timeout = absl::Seconds(assembly_timeout);
  server_options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  server_options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  server_options.security.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  server_options.security.auth_token_file =
      absl::GetFlag(FLAGS_auth_token_file);

  auto server = lockstep::rollout::RolloutServer::Start(
      std::move(model).value(), engine_options, server_options);
  if (!server.ok()) return Fail(server.status().ToString());

  std::fprintf(
      stderr,
      "rollout_service: model %s, kernels=%s, device=%s, tp=%d, "
      "%lld KV pages of %lld tokens, weight version %llu\n",
      model_dir.c_str(), absl::GetFlag(FLAGS_kernels).c_str(), device.c_str(),
      model_options.tp_size,
      static_cast<long long>((*server)->engine().num_pages()),
      static_cast<long long>(engine_options.page_size),
      static_cast<unsigned long long>((*server)->engine().weight_version()));
  std::printf("listening grpc=%s metrics=%s\n",
              (*server)->grpc_address().c_str(),
              (*server)->metrics_address().c_str());
  std::fflush(stdout);

  unsigned char sig = 0;
  while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
  }
  std::fprintf(stderr, "rollout_service: signal %d, draining\n", sig);
  (*server)->Drain(absl::Seconds(absl::GetFlag(FLAGS_drain_grace_seconds)),
                   absl::Seconds(absl::GetFlag(FLAGS_drain_announce_seconds)));
  server->reset();
  std::fprintf(stderr, "rollout_service: stopped\n");
  return 0;
}
