// Bad input through the real server (issue 3 §5): every malformed request
// gets its documented gRPC code with a clear message, and the server keeps
// serving the next good request. Also: health (per-service status),
// reflection, and the bearer-token check.
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <thread>
#include <tuple>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/model/cuda_check.h"
#include "gtest/gtest.h"
#include "tests/rollout_service/integration_util.h"

namespace lockstep::rollout::itest {
namespace {

class RolloutErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("rollout-errors");
    MakeModel(common::TinyConfig(), 1, dir_->Sub("m"));
    server_ = StartRollout(dir_->Sub("m"),
                           {"--max_message_bytes=1048576", "--max_queue=8"})
                  .release();
  }
  static void TearDownTestSuite() {
    if (server_ != nullptr) {
      EXPECT_EQ(server_->Stop().value_or(-1), 0);
    }
    delete server_;
    delete dir_;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    stub_ = Stub(server_->grpc_address());
  }

  // The next good request still works.
  void ExpectServing() {
    v1::GenerateResponse resp;
    grpc::Status s = Generate(*stub_, MakeRequest({1, 2, 3}, 1, 7, 4), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.completions_size(), 1);
  }

  void ExpectGenerateError(const v1::GenerateRequest& req,
                           grpc::StatusCode code, const std::string& needle) {
    v1::GenerateResponse resp;
    grpc::Status s = Generate(*stub_, req, &resp);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_NE(s.error_message().find(needle), std::string::npos)
        << "'" << s.error_message() << "' lacks '" << needle << "'";
    ExpectServing();
  }

  static TempDir* dir_;
  static lockstep::testing::ServiceProcess* server_;
  std::unique_ptr<v1::RolloutService::Stub> stub_;
};
TempDir* RolloutErrorsTest::dir_ = nullptr;
lockstep::testing::ServiceProcess* RolloutErrorsTest::server_ = nullptr;

TEST_F(RolloutErrorsTest, BadGenerateRequests) {
  using C = grpc::StatusCode;
  ExpectGenerateError(
      MakeRequest({1, 64, 2}, 1, 1, 4), C::INVALID_ARGUMENT,
      "token id 64 at position 1 is outside the vocabulary [0, 64)");
  ExpectGenerateError(MakeRequest({-5}, 1, 1, 4), C::INVALID_ARGUMENT,
                      "outside the vocabulary");
  ExpectGenerateError(MakeRequest({}, 1, 1, 4), C::INVALID_ARGUMENT,
                      "prompt 0 is empty");
  ExpectGenerateError(v1::GenerateRequest(), C::INVALID_ARGUMENT, "no prompts");
  ExpectGenerateError(MakeRequest({1, 2}, 1, 1, 511), C::INVALID_ARGUMENT,
                      "exceed the context length 512");
  ExpectGenerateError(MakeRequest({1, 2}, 1, 1, 4, -0.5f), C::INVALID_ARGUMENT,
                      "temperature");
  v1::GenerateRequest r = MakeRequest({1, 2}, 1, 1, 4);
  r.mutable_sampling()->set_top_p(0.0f);
  ExpectGenerateError(r, C::INVALID_ARGUMENT, "top_p must be in (0, 1]");
  r.mutable_sampling()->set_top_p(1.5f);
  ExpectGenerateError(r, C::INVALID_ARGUMENT, "top_p must be in (0, 1]");
  r = MakeRequest({1, 2}, 1, 1, 4);
  r.mutable_sampling()->set_top_k(-2);  // -1 is vLLM's "off"
  ExpectGenerateError(r, C::INVALID_ARGUMENT, "top_k");
  // The parameters of issue 16, each out of range once.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::pair<std::function<void(v1::SamplingParams*)>, std::string>> bad = {
      {[&](v1::SamplingParams* p) { p->set_temperature(nan); }, "temperature"},
      {[&](v1::SamplingParams* p) { p->set_top_p(nan); }, "top_p"},
      {[&](v1::SamplingParams* p) { p->set_min_p(1.5f); }, "min_p"},
      {[&](v1::SamplingParams* p) { p->set_min_p(-0.1f); }, "min_p"},
      {[&](v1::SamplingParams* p) { p->set_repetition_penalty(0.0f); }, "repetition_penalty"},
      {[&](v1::SamplingParams* p) { p->set_repetition_penalty(nan); }, "repetition_penalty"},
      {[&](v1::SamplingParams* p) { p->set_presence_penalty(2.5f); }, "presence_penalty"},
      {[&](v1::SamplingParams* p) { p->set_frequency_penalty(nan); }, "frequency_penalty"},
      {[&](v1::SamplingParams* p) { (*p->mutable_logit_bias())[64] = 1.0f; }, "logit_bias"},
      {[&](v1::SamplingParams* p) { (*p->mutable_logit_bias())[-3] = 1.0f; }, "logit_bias"},
      {[&](v1::SamplingParams* p) { (*p->mutable_logit_bias())[3] = nan; }, "logit_bias"},
      {[&](v1::SamplingParams* p) { p->set_min_tokens(5); }, "min_tokens"},
      {[&](v1::SamplingParams* p) { p->add_stop_sequences(); }, "stop_sequences"},
      {[&](v1::SamplingParams* p) { p->add_stop_sequences()->add_token_ids(64); },
       "stop_sequences"},
      {[&](v1::SamplingParams* p) {
         for (int i = 0; i < 17; ++i) p->add_stop_sequences()->add_token_ids(1);
       },
       "stop_sequences"},
  };
  for (const auto& [mutate, needle] : bad) {
    r = MakeRequest({1, 2}, 1, 1, 4);
    mutate(r.mutable_sampling());
    ExpectGenerateError(r, C::INVALID_ARGUMENT, needle);
    // The same as a per-prompt override: the error names the prompt.
    r = MakeRequest({1, 2}, 1, 1, 4);
    v1::SamplingParams* own = r.mutable_prompts(0)->mutable_sampling();
    own->set_max_tokens(4);
    mutate(own);
    ExpectGenerateError(r, C::INVALID_ARGUMENT, "prompt 0: ");
  }
  r = MakeRequest({1, 2}, 1, 1, 4);
  r.mutable_sampling()->set_top_logprobs(21);
  ExpectGenerateError(r, C::INVALID_ARGUMENT, "top_logprobs");
  r = MakeRequest({1, 2}, 1, 1, 4);
  r.mutable_sampling()->add_stop_token_ids(99);
  ExpectGenerateError(r, C::INVALID_ARGUMENT, "stop_token_ids");
  // More samples than the queue may hold.
  ExpectGenerateError(MakeRequest({1, 2}, 9, 1, 4), C::RESOURCE_EXHAUSTED,
                      "at most 8");
  // Over the 1 MiB message limit.
  std::vector<int32_t> huge(600000, 100000);  // 3-byte varints: ~1.8 MB
  ExpectGenerateError(MakeRequest(huge, 1, 1, 4), C::RESOURCE_EXHAUSTED, "");
}

// Issue 18 §3 (Abort): calls stop by request id at the next step and return
// what they generated, unfinished samples ending with ABORT; other calls are
// untouched; bad Abort requests are INVALID_ARGUMENT; aborting twice or an
// unknown id aborts nothing; the engine ends idle.
TEST_F(RolloutErrorsTest, AbortStopsCallsByIdAndKeepsTheirTokens) {
  const auto abort = [&](const v1::AbortRequest& req, v1::AbortResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub_->Abort(&ctx, req, resp);
  };
  v1::AbortResponse ar;
  EXPECT_EQ(abort(v1::AbortRequest(), &ar).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {
    v1::AbortRequest both;
    both.set_all(true);
    both.add_request_ids("x");
    EXPECT_EQ(abort(both, &ar).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    v1::AbortRequest empty_id;
    empty_id.add_request_ids("");
    EXPECT_EQ(abort(empty_id, &ar).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  v1::AbortRequest by_id;
  by_id.add_request_ids("long-one");
  ASSERT_TRUE(abort(by_id, &ar).ok());
  EXPECT_EQ(ar.aborted(), 0u);  // nothing in flight by that id

  v1::GenerateRequest long_req = MakeRequest({1, 2, 3}, 2, 11, 500);
  long_req.set_request_id("long-one");
  v1::GenerateRequest short_req = MakeRequest({4, 5}, 1, 12, 6);
  short_req.set_request_id("short-one");
  v1::GenerateResponse long_resp, short_resp;
  grpc::Status long_status, short_status;
  std::thread t([&] { long_status = Generate(*stub_, long_req, &long_resp); });
  // Wait until it runs.
  for (int i = 0; i < 200; ++i) {
    v1::RolloutLoad load;
    grpc::ClientContext ctx;
    if (stub_->GetLoad(&ctx, v1::GetLoadRequest(), &load).ok() && load.running_sequences() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(abort(by_id, &ar).ok());
  EXPECT_EQ(ar.aborted(), 1u);
  t.join();
  ASSERT_TRUE(long_status.ok()) << long_status.error_message();
  ASSERT_EQ(long_resp.completions_size(), 2);
  for (const v1::Completion& c : long_resp.completions()) {
    EXPECT_EQ(c.finish_reason(), v1::FINISH_REASON_ABORT);
    EXPECT_LT(c.token_ids_size(), 500);
    EXPECT_EQ(c.logprobs_size(), c.token_ids_size());
    EXPECT_EQ(c.sampled_logprobs_size(), c.token_ids_size());
  }
  // Other calls are not affected; aborting again aborts nothing.
  short_status = Generate(*stub_, short_req, &short_resp);
  ASSERT_TRUE(short_status.ok());
  EXPECT_EQ(short_resp.completions(0).token_ids_size(), 6);
  EXPECT_EQ(short_resp.completions(0).finish_reason(), v1::FINISH_REASON_LENGTH);
  ASSERT_TRUE(abort(by_id, &ar).ok());
  EXPECT_EQ(ar.aborted(), 0u);
  v1::AbortRequest all;
  all.set_all(true);
  ASSERT_TRUE(abort(all, &ar).ok());
  EXPECT_EQ(ar.aborted(), 0u);
  // The engine is idle: nothing running, no KV in use.
  v1::RolloutLoad load;
  for (int i = 0; i < 200; ++i) {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetLoad(&ctx, v1::GetLoadRequest(), &load).ok());
    if (load.running_sequences() == 0 && load.kv_cache_usage() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(load.running_sequences(), 0u);
  EXPECT_EQ(load.kv_cache_usage(), 0.0);
  ExpectServing();
}

// Issue 18 §3/§4: bad Pause / Sleep values and inconsistent partial
// rollouts are INVALID_ARGUMENT, with the server serving the next request.
TEST_F(RolloutErrorsTest, BadControlRequestsAndResumes) {
  using C = grpc::StatusCode;
  auto deadline = [](grpc::ClientContext* ctx) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  };
  for (int mode : {0, 4, -1}) {
    grpc::ClientContext ctx;
    deadline(&ctx);
    v1::PauseRequest req;
    req.set_mode(static_cast<v1::PauseMode>(mode));
    v1::PauseResponse resp;
    EXPECT_EQ(stub_->Pause(&ctx, req, &resp).error_code(), C::INVALID_ARGUMENT) << mode;
  }
  for (int level : {0, 3}) {
    grpc::ClientContext ctx;
    deadline(&ctx);
    v1::SleepRequest req;
    req.set_level(static_cast<v1::SleepLevel>(level));
    v1::SleepResponse resp;
    EXPECT_EQ(stub_->Sleep(&ctx, req, &resp).error_code(), C::INVALID_ARGUMENT) << level;
  }
  {
    // Resume and WakeUp of an engine that runs change nothing.
    grpc::ClientContext a, b;
    deadline(&a);
    deadline(&b);
    v1::ResumeResponse r;
    v1::WakeUpResponse w;
    ASSERT_TRUE(stub_->Resume(&a, v1::ResumeRequest(), &r).ok());
    EXPECT_FALSE(r.was_paused());
    ASSERT_TRUE(stub_->WakeUp(&b, v1::WakeUpRequest(), &w).ok());
    EXPECT_FALSE(w.was_asleep());
  }
  ExpectServing();
  // A real partial completion to break in different ways.
  v1::GenerateResponse first;
  ASSERT_TRUE(Generate(*stub_, MakeRequest({1, 2, 3}, 1, 5, 6), &first).ok());
  v1::Completion partial = first.completions(0);
  partial.set_finish_reason(v1::FINISH_REASON_ABORT);
  auto resume = [&](const std::function<void(v1::GenerateRequest*)>& edit) {
    v1::GenerateRequest req = MakeRequest({1, 2, 3}, 0, 5, 6);
    req.clear_n();
    *req.mutable_prompts(0)->mutable_resume() = partial;
    edit(&req);
    return req;
  };
  ExpectGenerateError(resume([](v1::GenerateRequest* r) { r->set_n(2); }), C::INVALID_ARGUMENT,
                      "continues one sample");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->mutable_resume()->set_finish_reason(
                            v1::FINISH_REASON_LENGTH);
                      }),
                      C::INVALID_ARGUMENT, "finished sample");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->mutable_resume()->mutable_logprobs()->RemoveLast();
                      }),
                      C::INVALID_ARGUMENT, "logprobs");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->mutable_resume()->clear_stream_key();
                      }),
                      C::INVALID_ARGUMENT, "stream_key");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->mutable_resume()->clear_sampling();
                      }),
                      C::INVALID_ARGUMENT, "no sampling");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->set_seed(3);
                      }),
                      C::INVALID_ARGUMENT, "must set neither");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->mutable_resume()->set_token_ids(0, 64);
                      }),
                      C::INVALID_ARGUMENT, "outside the vocabulary");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        auto* v = r->mutable_prompts(0)->mutable_resume()
                                      ->mutable_token_weight_versions();
                        v->Set(0, 9);
                      }),
                      C::INVALID_ARGUMENT, "decreasing");
  // All six tokens were generated: max_tokens 6 leaves nothing to do.
  ExpectGenerateError(resume([](v1::GenerateRequest*) {}), C::INVALID_ARGUMENT,
                      "nothing left to generate");
  ExpectGenerateError(resume([](v1::GenerateRequest* r) {
                        r->mutable_prompts(0)->mutable_resume()->clear_token_ids();
                        r->mutable_prompts(0)->mutable_resume()->clear_logprobs();
                        r->mutable_prompts(0)->mutable_resume()->clear_sampled_logprobs();
                        r->mutable_prompts(0)->mutable_resume()->clear_token_weight_versions();
                      }),
                      C::INVALID_ARGUMENT, "no tokens");
}

TEST_F(RolloutErrorsTest, BadComputeLogprobsRequests) {
  auto call = [&](const v1::ComputeLogprobsRequest& req) {
    v1::ComputeLogprobsResponse resp;
    grpc::ClientContext ctx;
    return stub_->ComputeLogprobs(&ctx, req, &resp);
  };
  v1::ComputeLogprobsRequest req;
  EXPECT_EQ(call(req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto* s = req.add_sequences();
  for (int t : {1, 2, 3}) s->add_token_ids(t);
  s->set_prompt_len(3);
  grpc::Status st = call(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("prompt_len 3 must be in [1, 3)"),
            std::string::npos)
      << st.error_message();
  s->set_prompt_len(1);
  s->set_token_ids(1, 1000);
  EXPECT_EQ(call(req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s->set_token_ids(1, 2);
  req.set_weight_version(41);
  st = call(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("version 41"), std::string::npos);
  req.clear_weight_version();
  EXPECT_TRUE(call(req).ok());
  // Bad sampling parameters, request-wide and per sequence.
  req.mutable_sampling()->set_top_p(2.0f);
  st = call(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("top_p"), std::string::npos) << st.error_message();
  req.clear_sampling();
  (*s->mutable_sampling()->mutable_logit_bias())[70] = 1.0f;
  st = call(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("sequence 0: logit_bias"), std::string::npos)
      << st.error_message();
  s->clear_sampling();
  ExpectServing();
}

TEST_F(RolloutErrorsTest, BadWeightUpdates) {
  const common::TensorMap good = LoadTensors(dir_->Sub("m"));
  using C = grpc::StatusCode;
  auto expect =
      [&](const common::TensorMap& tensors, uint64_t version,
          const std::function<void(std::vector<v1::WeightUpdate>&)>& mutate,
          C code, const std::string& needle) {
        v1::UpdateWeightsResponse resp;
        grpc::Status s = PushWeights(*stub_, tensors, version, &resp, mutate);
        EXPECT_EQ(s.error_code(), code) << s.error_message();
        EXPECT_NE(s.error_message().find(needle), std::string::npos)
            << "'" << s.error_message() << "' lacks '" << needle << "'";
        v1::ModelInfo info;
        grpc::ClientContext ctx;
        ASSERT_TRUE(
            stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
        EXPECT_EQ(info.weight_version(), 0u);
        ExpectServing();
      };
  // Version regression: the server holds version 0.
  expect(good, 0, nullptr, C::FAILED_PRECONDITION, "would not advance");
  // Unknown tensor name.
  common::TensorMap extra = good;
  extra["model.layers.7.self_attn.q_proj.weight"] = good.begin()->second;
  expect(extra, 1, nullptr, C::ABORTED,
         "unknown tensors: model.layers.7.self_attn.q_proj.weight");
  // Shape mismatch.
  common::TensorMap wrong = good;
  wrong.at("model.norm.weight").shape = {32, 2};
  expect(wrong, 1, nullptr, C::ABORTED,
         "model.norm.weight (expected shape [64]");
  // Missing tensor.
  common::TensorMap fewer = good;
  fewer.erase("lm_head.weight");
  expect(fewer, 1, nullptr, C::ABORTED, "missing tensors: lm_head.weight");
  // Truncated stream.
  expect(
      good, 1, [](std::vector<v1::WeightUpdate>& m) { m.pop_back(); },
      C::ABORTED, "ended before every tensor arrived");
  // Chunk before the header.
  expect(
      good, 1, [](std::vector<v1::WeightUpdate>& m) { std::swap(m[0], m[1]); },
      C::INVALID_ARGUMENT, "before its header");
  // A good update finally works.
  v1::UpdateWeightsResponse resp;
  grpc::Status s = PushWeights(*stub_, good, 1, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.weight_version(), 1u);
  // ... and the same version again is a regression.
  s = PushWeights(*stub_, good, 1, &resp);
  EXPECT_EQ(s.error_code(), C::FAILED_PRECONDITION);
}

TEST_F(RolloutErrorsTest, HealthReflectionAndModelInfo) {
  EXPECT_EQ(HealthStatus(server_->grpc_address(), "lockstep.v1.RolloutService"),
            1);
  EXPECT_EQ(HealthStatus(server_->grpc_address(), ""), 1);
  const std::string services = ReflectionListServices(server_->grpc_address());
  EXPECT_NE(services.find("lockstep.v1.RolloutService"), std::string::npos);
  EXPECT_NE(services.find("grpc.health.v1.Health"), std::string::npos);
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.config().vocab_size(), 64);
  EXPECT_EQ(info.config().max_position_embeddings(), 512);
  EXPECT_EQ(info.kernel_mode(), v1::KERNEL_MODE_INVARIANT);
  EXPECT_EQ(info.device(), v1::DEVICE_CPU);
  EXPECT_EQ(info.tp_size(), 1u);
  EXPECT_EQ(info.max_queue(), 8u);
  EXPECT_GT(info.kv_cache_pages(), 0u);
  EXPECT_FALSE(info.config().config_json().empty());
}

TEST(RolloutAuthTest, BearerTokenIsRequiredWhenConfigured) {
  TempDir dir("rollout-auth");
  MakeModel(common::TinyConfig(), 1, dir.Sub("m"));
  {
    // CRLF and a tab around the token are stripped like any whitespace.
    std::ofstream(dir.Sub("token")) << "\ts3cret\r\n";
  }
  auto server = StartRollout(dir.Sub("m"), {"--auth_token_file=" + dir.Sub("token")});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  const v1::GenerateRequest req = MakeRequest({1, 2, 3}, 1, 7, 4);
  for (const char* token : {"", "Bearer wrong", "Bearer s3cre", "Bearer s3cret!", "Bearers3cret",
                            "Bearer s3cret", "bearer s3cret", "BEARER s3cret"}) {
    grpc::ClientContext ctx;
    if (*token) ctx.AddMetadata("authorization", token);
    v1::GenerateResponse resp;
    grpc::Status s = stub->Generate(&ctx, req, &resp);
    // The scheme is case-insensitive (RFC 7235); the token is not.
    if (absl::EndsWithIgnoreCase(token, "Bearer s3cret") && std::strlen(token) == 13) {
      EXPECT_TRUE(s.ok()) << s.error_message();
    } else {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
    }
  }
  // Health stays open to probes.
  EXPECT_EQ(HealthStatus(server->grpc_address(), "lockstep.v1.RolloutService"), 1);
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace lockstep::rollout::itest

namespace lockstep::rollout::itest {
namespace {

// Issue 19 §3: --tp_backend=nccl puts rank r on GPU r; without enough GPUs
// (or without --device=cuda) the service refuses at start with a message
// that says what is missing, instead of running every rank on one device.
TEST(RolloutFlagsTest, TpBackendRefusesClearly) {
  TempDir dir("rollout-tp-flags");
  const std::string log = dir.Sub("stderr.txt");
  const auto run = [&](const std::string& flags) {
    const std::string cmd = RolloutBinary() + " --model_dir=" + dir.path() + " " + flags +
                            " > " + log + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    return std::make_pair(rc, text.str());
  };
  auto [rc, text] = run("--device=cpu --tp=2 --tp_backend=nccl");
  EXPECT_NE(rc, 0);
  EXPECT_NE(text.find("--tp_backend=nccl needs --device=cuda"), std::string::npos) << text;
  std::tie(rc, text) = run("--tp_backend=mpi");
  EXPECT_NE(rc, 0);
  EXPECT_NE(text.find("unknown --tp_backend=mpi"), std::string::npos) << text;
  if (lockstep::common::CudaDeviceCount() < 8) {
    std::tie(rc, text) = run("--device=cuda --tp=8 --tp_backend=nccl");
    EXPECT_NE(rc, 0);
    // Without CUDA kernels or NCCL in the build the message says that; else
    // it counts the GPUs.
    EXPECT_TRUE(text.find("8 GPUs are needed") != std::string::npos ||
                text.find("has no NCCL") != std::string::npos ||
                text.find("no CUDA kernels") != std::string::npos)
        << text;
  }
}

}  // namespace
}  // namespace lockstep::rollout::itest
