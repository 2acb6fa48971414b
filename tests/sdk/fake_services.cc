#include "tests/sdk/fake_services.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/testing/service_process.h"

namespace lockstep::sdk_testing {
namespace {

void SleepMs(int ms) {
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

}  // namespace

grpc::Status FakeRollout::Enter(grpc::ServerContext* ctx) {
  calls.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ctx->client_metadata().find("authorization");
    authorization_ = it == ctx->client_metadata().end()
                         ? ""
                         : std::string(it->second.data(), it->second.size());
  }
  if (script.fail_first.load() > 0) {
    script.fail_first.fetch_sub(1);
    return grpc::Status(static_cast<grpc::StatusCode>(script.fail_code.load()),
                        "scripted failure");
  }
  return grpc::Status::OK;
}

std::string FakeRollout::last_authorization() const {
  std::lock_guard<std::mutex> lock(mu_);
  return authorization_;
}

std::vector<v1::WeightUpdate> FakeRollout::last_weights() const {
  std::lock_guard<std::mutex> lock(mu_);
  return weights_;
}

grpc::Status FakeRollout::Generate(grpc::ServerContext* ctx,
                                   const v1::GenerateRequest* req,
                                   v1::GenerateResponse* resp) {
  grpc::Status s = Enter(ctx);
  if (!s.ok()) return s;
  SleepMs(script.sleep_ms.load());
  if (ctx->IsCancelled())
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  if (req->prompts_size() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no prompts");
  }
  const uint32_t n = req->n() == 0 ? 1 : req->n();
  for (int p = 0; p < req->prompts_size(); ++p) {
    for (uint32_t j = 0; j < n; ++j) {
      v1::Completion* c = resp->add_completions();
      c->set_prompt_index(p);
      c->set_sample_index(j);
      // Echo the prompt as the "completion".
      for (int32_t t : req->prompts(p).token_ids()) {
        c->add_token_ids(t);
        c->add_logprobs(-0.5f);
        c->add_token_weight_versions(version.load());
      }
      c->set_weight_version(version.load());
      c->set_finish_reason(v1::FINISH_REASON_LENGTH);
    }
  }
  resp->set_request_id(req->request_id() +
                       std::string(script.response_padding.load(), 'x'));
  return grpc::Status::OK;
}

grpc::Status FakeRollout::GenerateStream(
    grpc::ServerContext* ctx, const v1::GenerateRequest* req,
    grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  grpc::Status s = Enter(ctx);
  if (!s.ok()) return s;
  SleepMs(script.sleep_ms.load());
  const int total = script.stream_messages.load();
  const int fail_after = script.stream_fail_after.load();
  for (int i = 0; i < total; ++i) {
    if (i == fail_after) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream broke");
    }
    v1::GenerateStreamResponse m;
    m.set_prompt_index(0);
    m.set_sample_index(0);
    m.add_token_ids(i);
    m.add_logprobs(-1.0f * i);
    m.add_token_weight_versions(version.load());
    m.set_seed(req->sampling().seed());
    if (i + 1 == total) m.set_finish_reason(v1::FINISH_REASON_STOP);
    if (!writer->Write(m))
      return grpc::Status(grpc::StatusCode::CANCELLED, "gone");
  }
  return grpc::Status::OK;
}

grpc::Status FakeRollout::ComputeLogprobs(grpc::ServerContext* ctx,
                                          const v1::ComputeLogprobsRequest* req,
                                          v1::ComputeLogprobsResponse* resp) {
  grpc::Status s = Enter(ctx);
  if (!s.ok()) return s;
  for (const v1::ScoredSequence& seq : req->sequences()) {
    v1::SequenceLogprobs* r = resp->add_results();
    for (int i = static_cast<int>(seq.prompt_len()); i < seq.token_ids_size();
         ++i) {
      r->add_logprobs(-0.25f);
    }
  }
  resp->set_weight_version(version.load());
  return grpc::Status::OK;
}

grpc::Status FakeRollout::UpdateWeights(
    grpc::ServerContext* ctx, grpc::ServerReader<v1::WeightUpdate>* reader,
    v1::UpdateWeightsResponse* resp) {
  grpc::Status s = Enter(ctx);
  if (!s.ok()) return s;
  std::vector<v1::WeightUpdate> messages;
  v1::WeightUpdate m;
  const bool fail = script.weights_fail_first.load() > 0;
  while (reader->Read(&m)) {
    messages.push_back(m);
    if (fail && messages.size() == 2) {
      script.weights_fail_first.fetch_sub(1);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "dropped mid-stream");
    }
  }
  if (messages.empty() || !messages[0].has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no header");
  }
  const uint64_t target = messages[0].header().target_version();
  if (target <= version.load()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale version");
  }
  uint64_t bytes = 0;
  for (size_t i = 1; i < messages.size(); ++i)
    bytes += messages[i].chunk().data().size();
  resp->set_previous_version(version.load());
  version = target;
  resp->set_weight_version(target);
  resp->set_tensors(messages[0].header().tensors_size());
  resp->set_bytes(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  weights_ = std::move(messages);
  return grpc::Status::OK;
}

grpc::Status FakeRollout::GetModelInfo(grpc::ServerContext* ctx,
                                       const v1::GetModelInfoRequest*,
                                       v1::ModelInfo* resp) {
  grpc::Status s = Enter(ctx);
  if (!s.ok()) return s;
  resp->set_weight_version(version.load());
  resp->mutable_config()->set_dtype(v1::DTYPE_BF16);
  resp->set_kernel_mode(v1::KERNEL_MODE_INVARIANT);
  return grpc::Status::OK;
}

grpc::Status FakeLearner::SubmitTrajectories(
    grpc::ServerContext*,
    grpc::ServerReader<v1::SubmitTrajectoriesRequest>* reader,
    v1::SubmitTrajectoriesResponse* resp) {
  calls.fetch_add(1);
  v1::SubmitTrajectoriesRequest m;
  uint64_t n = 0;
  int messages = 0;
  while (reader->Read(&m)) {
    n += m.trajectories_size();
    ++messages;
    if (fail_first.load() > 0 && messages == 1) {
      fail_first.fetch_sub(1);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
    }
  }
  buffered += n;
  resp->set_accepted(n);
  resp->set_buffered_trajectories(buffered.load());
  return grpc::Status::OK;
}

grpc::Status FakeLearner::TrainStep(grpc::ServerContext*,
                                    const v1::TrainStepRequest* req,
                                    v1::TrainStepResponse* resp) {
  calls.fetch_add(1);
  if (fail_first.load() > 0) {
    fail_first.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
  }
  if (req->has_expected_version() &&
      req->expected_version() != version.load()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "version moved");
  }
  if (buffered.load() == 0) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "nothing buffered");
  }
  resp->set_num_trajectories(buffered.exchange(0));
  resp->set_weight_version(version.fetch_add(1) + 1);
  resp->set_step(version.load());
  return grpc::Status::OK;
}

grpc::Status FakeLearner::GetStats(grpc::ServerContext*,
                                   const v1::GetStatsRequest*,
                                   v1::LearnerStats* resp) {
  calls.fetch_add(1);
  resp->set_weight_version(version.load());
  resp->set_buffered_trajectories(buffered.load());
  return grpc::Status::OK;
}

grpc::Status FakeLearner::GetWeights(
    grpc::ServerContext*, const v1::GetWeightsRequest*,
    grpc::ServerWriter<v1::WeightUpdate>* writer) {
  calls.fetch_add(1);
  if (fail_first.load() > 0) {
    fail_first.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
  }
  v1::WeightUpdate m;
  m.mutable_header()->set_target_version(version.load());
  writer->Write(m);
  m.mutable_chunk()->set_name("w");
  m.mutable_chunk()->set_data("abcd");
  writer->Write(m);
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<FakeServer>> FakeServer::Start(
    const common::ServerSecurityOptions& security_options) {
  absl::StatusOr<common::ServerSecurity> security =
      common::MakeServerSecurity(security_options);
  if (!security.ok()) return security.status();
  std::unique_ptr<FakeServer> s(new FakeServer());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", security->credentials(), &s->port_);
  security->ApplyToBuilder(&builder);
  builder.RegisterService(&s->rollout_);
  builder.RegisterService(&s->learner_);
  builder.SetMaxReceiveMessageSize(16 << 20);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError("cannot start the fake server");
  }
  if (auto* health = s->server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
    health->SetServingStatus("lockstep.v1.RolloutService", true);
    health->SetServingStatus("lockstep.v1.LearnerService", true);
  }
  return s;
}

FakeServer::~FakeServer() {
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
    server_->Wait();
  }
}

std::string FakeServer::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace lockstep::sdk_testing
