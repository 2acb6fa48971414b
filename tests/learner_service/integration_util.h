// Helpers of the learner integration tests (tests/integration/learner_*):
// tiny models, starting rollout_service / learner_service as child processes,
// the client-driven RL loop over gRPC, and /metrics scrapes.
#ifndef LOCKSTEP_TESTS_LEARNER_SERVICE_INTEGRATION_UTIL_H_
#define LOCKSTEP_TESTS_LEARNER_SERVICE_INTEGRATION_UTIL_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/formats/model_generator.h"
#include "gtest/gtest.h"
#include "learner_service/tasks.h"
#include "lockstep/v1/learner.grpc.pb.h"
#include "lockstep/v1/rollout.grpc.pb.h"
#include "tests/testing/service_process.h"

namespace lockstep::learner::itest {

namespace v1 = ::lockstep::v1;
using ::lockstep::testing::ServiceProcess;

inline std::string Binary(const char* name, const char* compiled) {
  if (compiled != nullptr && compiled[0] != '\0') return compiled;
  return absl::StrCat(lockstep::testing::BuildDir(), "/", name);
}

inline std::string RolloutBinary() {
#ifdef LOCKSTEP_ROLLOUT_SERVICE_BINARY
  return Binary("rollout_service/rollout_service", LOCKSTEP_ROLLOUT_SERVICE_BINARY);
#else
  return Binary("rollout_service/rollout_service", nullptr);
#endif
}

inline std::string LearnerBinary() {
#ifdef LOCKSTEP_LEARNER_SERVICE_BINARY
  return Binary("learner_service/learner_service", LOCKSTEP_LEARNER_SERVICE_BINARY);
#else
  return Binary("learner_service/learner_service", nullptr);
#endif
}

// A temporary directory removed at destruction.
using TempDir = ::lockstep::testing::ScopedTempDir;

// A seeded random checkpoint of `config` at `dir`.
inline void MakeModel(const std::string& dir, const common::ModelConfig& config,
                      uint64_t seed = 1) {
  absl::Status s = common::GenerateModel(config, seed, dir);
  ASSERT_TRUE(s.ok()) << s;
}

// The tiny preset (vocab 64, f32 unless `dtype` says otherwise) at `dir`.
inline void MakeTinyModel(const std::string& dir, uint64_t seed = 1,
                          kernels::DType dtype = kernels::DType::kF32) {
  common::ModelConfig config = common::TinyConfig();
  config.dtype = dtype;
  MakeModel(dir, config, seed);
}

inline std::unique_ptr<ServiceProcess> Start(const std::string& binary,
                                             std::vector<std::string> args) {
  lockstep::testing::ServiceProcessOptions o;
  o.binary = binary;
  o.args = std::move(args);
  auto p = ServiceProcess::Start(o);
  EXPECT_TRUE(p.ok()) << binary << ": " << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

// rollout_service on 127.0.0.1 with two kernel threads (CI has two cores and
// the learner runs next to it).
inline std::unique_ptr<ServiceProcess> StartRollout(
    const std::string& model_dir, const std::string& kernels,
    std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--model_dir=" + model_dir,
                                   "--kernels=" + kernels, "--num_threads=2"};
  args.insert(args.end(), extra.begin(), extra.end());
  return Start(RolloutBinary(), args);
}

inline std::unique_ptr<ServiceProcess> StartLearner(
    const std::string& model_dir, const std::string& kernels,
    const std::string& rollout, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--model_dir=" + model_dir,
                                   "--kernels=" + kernels};
  if (!rollout.empty()) args.push_back("--rollout=" + rollout);
  args.insert(args.end(), extra.begin(), extra.end());
  return Start(LearnerBinary(), args);
}

// A loopback port nobody listens on now (the kernel's pick for an
// ephemeral bind), for a service restarted on the same address.
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// rollout_service (invariant kernels) on 127.0.0.1:`port`, so that a restart
// comes back at the address the learner knows.
inline std::unique_ptr<ServiceProcess> StartRolloutOnPort(const std::string& model_dir, int port,
                                                          int num_threads = 2) {
  lockstep::testing::ServiceProcessOptions o;
  o.binary = RolloutBinary();
  o.default_flags = false;
  o.args = {"--host=127.0.0.1", absl::StrCat("--port=", port), "--metrics_port=0",
            "--model_dir=" + model_dir, "--kernels=invariant",
            absl::StrCat("--num_threads=", num_threads)};
  auto p = ServiceProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

inline std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

inline void Deadline(grpc::ClientContext* ctx, int seconds = 120) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(seconds));
}

// `prompts` reverse-task prompts from `seed`.
inline std::vector<TaskExample> Prompts(int prompts, uint64_t seed,
                                        const std::string& task = "reverse") {
  auto t = MakeTask(task);
  EXPECT_TRUE(t.ok());
  std::mt19937_64 rng(seed);
  std::vector<TaskExample> out;
  for (int i = 0; i < prompts; ++i) out.push_back((*t)->Sample(rng));
  return out;
}

// Generate `n` samples of every example (temperature 1). With `stop`, at
// <eos>; otherwise exactly max_tokens tokens per sample.
inline v1::GenerateResponse Generate(v1::RolloutService::Stub& rollout,
                                     const std::vector<TaskExample>& examples,
                                     int n, uint64_t seed, int max_tokens,
                                     bool stop) {
  v1::GenerateRequest req;
  for (const TaskExample& e : examples) {
    req.add_prompts()->mutable_token_ids()->Add(e.prompt.begin(), e.prompt.end());
  }
  req.set_n(n);
  req.mutable_sampling()->set_temperature(1.0f);
  req.mutable_sampling()->set_seed(seed);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  if (stop) req.mutable_sampling()->add_stop_token_ids(CharVocab::kEos);
  v1::GenerateResponse resp;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  grpc::Status s = rollout.Generate(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp;
}

// One trajectory per completion, reward from the reverse task, one group per
// prompt ("<prefix>/<prompt index>").
inline std::vector<v1::Trajectory> Trajectories(
    const std::vector<TaskExample>& examples, const v1::GenerateResponse& resp,
    const std::string& prefix) {
  ReverseTask task(1, 100);
  std::vector<v1::Trajectory> out;
  for (const v1::Completion& c : resp.completions()) {
    const TaskExample& e = examples.at(c.prompt_index());
    v1::Trajectory t;
    t.mutable_prompt_token_ids()->Add(e.prompt.begin(), e.prompt.end());
    *t.mutable_completion_token_ids() = c.token_ids();
    *t.mutable_rollout_logprobs() = c.logprobs();
    *t.mutable_token_weight_versions() = c.token_weight_versions();
    t.set_weight_version(c.weight_version());
    t.set_reward(task.Reward(
        e, std::vector<int32_t>(c.token_ids().begin(), c.token_ids().end())));
    t.set_group_id(absl::StrCat(prefix, "/", c.prompt_index()));
    out.push_back(std::move(t));
  }
  return out;
}

// SubmitTrajectories with the given batches as separate stream messages.
inline grpc::Status Submit(v1::LearnerService::Stub& learner,
                           const std::vector<std::vector<v1::Trajectory>>& messages,
                           v1::SubmitTrajectoriesResponse* resp = nullptr) {
  v1::SubmitTrajectoriesResponse local;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  auto writer = learner.SubmitTrajectories(&ctx, resp ? resp : &local);
  for (const auto& m : messages) {
    v1::SubmitTrajectoriesRequest req;
    for (const v1::Trajectory& t : m) *req.add_trajectories() = t;
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

inline grpc::Status Submit(v1::LearnerService::Stub& learner,
                           const std::vector<v1::Trajectory>& batch,
                           v1::SubmitTrajectoriesResponse* resp = nullptr) {
  return Submit(learner, std::vector<std::vector<v1::Trajectory>>{batch}, resp);
}

inline grpc::Status TrainStep(v1::LearnerService::Stub& learner,
                              const v1::TrainStepRequest& req,
                              v1::TrainStepResponse* resp) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 300);
  return learner.TrainStep(&ctx, req, resp);
}

inline v1::LearnerStats Stats(v1::LearnerService::Stub& learner) {
  v1::LearnerStats stats;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  grpc::Status s = learner.GetStats(&ctx, v1::GetStatsRequest(), &stats);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return stats;
}

// The learner's current weights as GetWeights streams them: every message
// serialised, concatenated (bitwise comparable).
inline std::string WeightBytes(v1::LearnerService::Stub& learner,
                               uint64_t* version = nullptr) {
  grpc::ClientContext ctx;
  Deadline(&ctx);
  auto reader = learner.GetWeights(&ctx, v1::GetWeightsRequest());
  v1::WeightUpdate m;
  std::string out;
  while (reader->Read(&m)) {
    if (m.has_header()) {
      if (version != nullptr) *version = m.header().target_version();
      // The source text names the version; compare tensors only.
      for (const auto& e : m.header().tensors()) {
        absl::StrAppend(&out, e.name(), ":", e.crc32c(), ";");
      }
    } else {
      absl::StrAppend(&out, m.chunk().name(), "@", m.chunk().offset(), "=",
                      m.chunk().data());
    }
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  return out;
}

// GET http://127.0.0.1:<port><path> (HTTP/1.0); the body, or "" on error.
inline std::string HttpGet(int port, const std::string& path = "/metrics") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return "";
  }
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  ::close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

// Value of the sample `series` (name with labels exactly as exposed, e.g.
// `lockstep_logprob_abs_diff_bucket{le="0"}`), NaN when absent.
inline double MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() > series.size() && line.substr(0, series.size()) == series &&
        line[series.size()] == ' ') {
      return std::strtod(std::string(line.substr(series.size() + 1)).c_str(),
                         nullptr);
    }
  }
  return std::nan("");
}

}  // namespace lockstep::learner::itest

#endif  // LOCKSTEP_TESTS_LEARNER_SERVICE_INTEGRATION_UTIL_H_
