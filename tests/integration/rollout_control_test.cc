// Issue 18 through the real server: Pause (abort) under load loses and
// duplicates nothing and returns the KV cache; every aborted sample resumed
// as a partial rollout ends bit-identical to the uninterrupted sample
// (invariant kernels; the standard twin shows mismatches); Sleep / WakeUp
// keep the logprob bits, at both levels; weights through shared memory
// serve the same bits as through the stream, and bad shared buffers are
// refused with the old weights serving.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/wire/shared_weights.h"
#include "common/wire/weight_stream.h"
#include "gtest/gtest.h"
#include "tests/rollout_service/integration_util.h"

namespace lockstep::rollout::itest {
namespace {

using C = grpc::StatusCode;

bool SameFloat(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

v1::RolloutLoad Load(v1::RolloutService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10));
  v1::RolloutLoad load;
  EXPECT_TRUE(stub.GetLoad(&ctx, v1::GetLoadRequest(), &load).ok());
  return load;
}

grpc::Status Pause(v1::RolloutService::Stub& stub, v1::PauseMode mode, v1::PauseResponse* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(30));
  v1::PauseRequest req;
  req.set_mode(mode);
  return stub.Pause(&ctx, req, out);
}

grpc::Status Resume(v1::RolloutService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(30));
  v1::ResumeResponse resp;
  return stub.Resume(&ctx, v1::ResumeRequest(), &resp);
}

grpc::Status Sleep(v1::RolloutService::Stub& stub, v1::SleepLevel level, v1::SleepResponse* out) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(60));
  v1::SleepRequest req;
  req.set_level(level);
  return stub.Sleep(&ctx, req, out);
}

grpc::Status WakeUp(v1::RolloutService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(60));
  v1::WakeUpResponse resp;
  return stub.WakeUp(&ctx, v1::WakeUpRequest(), &resp);
}

// Sends `messages` as one UpdateWeights call.
grpc::Status Push(v1::RolloutService::Stub& stub, const std::vector<v1::WeightUpdate>& messages,
                  v1::UpdateWeightsResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(120));
  auto writer = stub.UpdateWeights(&ctx, resp);
  for (const v1::WeightUpdate& m : messages) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

// A seeded request with the RL settings of issue 16 and long samples.
v1::GenerateRequest Request(std::mt19937& rng, int index) {
  std::vector<int32_t> prompt(1 + rng() % 12);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 64);
  v1::GenerateRequest req = MakeRequest(prompt, 2, 1000 + index, 300, 0.8f);
  req.mutable_sampling()->set_top_p(0.95f);
  req.mutable_sampling()->set_repetition_penalty(1.05f);
  req.set_request_id("load-" + std::to_string(index));
  return req;
}

// The aborted completion continued as a partial rollout.
v1::GenerateRequest ResumeOf(const v1::GenerateRequest& original, const v1::Completion& c) {
  v1::GenerateRequest req;
  v1::Prompt* p = req.add_prompts();
  *p->mutable_token_ids() = original.prompts(0).token_ids();
  *p->mutable_resume() = c;
  return req;
}

// Pause(ABORT) amid 16 concurrent calls, then every aborted sample resumed:
// returns the tokens whose logprobs differ from the uninterrupted reference.
int64_t AbortAndResumeUnderLoad(const std::string& kernels, int64_t* compared) {
  TempDir dir("rollout-control-" + kernels);
  MakeModel(common::TinyConfig(), 3, dir.Sub("m"));
  auto server = StartRollout(dir.Sub("m"), {"--kernels=" + kernels, "--num_threads=2"});
  EXPECT_NE(server, nullptr);
  if (server == nullptr) return -1;
  auto stub = Stub(server->grpc_address());
  std::mt19937 rng(7);
  constexpr int kCalls = 16;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kCalls; ++i) requests.push_back(Request(rng, i));
  // References: each request alone, uninterrupted.
  std::vector<v1::GenerateResponse> reference(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_TRUE(Generate(*stub, requests[i], &reference[i]).ok());
  }
  std::vector<v1::GenerateResponse> got(kCalls);
  std::vector<grpc::Status> status(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] { status[i] = Generate(*stub, requests[i], &got[i]); });
  }
  for (int i = 0; i < 2000 && Load(*stub).running_sequences() < 8; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  v1::PauseResponse paused;
  EXPECT_TRUE(Pause(*stub, v1::PAUSE_MODE_ABORT, &paused).ok());
  for (std::thread& t : threads) t.join();
  EXPECT_GT(paused.aborted_requests(), 0u);
  // Nothing lost or duplicated; the KV cache is back to empty.
  int aborted = 0;
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_TRUE(status[i].ok()) << status[i].error_message();
    EXPECT_EQ(got[i].completions_size(), 2);
    EXPECT_EQ(got[i].request_id(), requests[i].request_id());
    for (int j = 0; j < got[i].completions_size(); ++j) {
      const v1::Completion& c = got[i].completions(j);
      EXPECT_EQ(c.sample_index(), static_cast<uint32_t>(j));
      aborted += c.finish_reason() == v1::FINISH_REASON_ABORT;
    }
  }
  EXPECT_GT(aborted, 0);
  v1::RolloutLoad load;
  for (int i = 0; i < 200; ++i) {
    load = Load(*stub);
    if (load.running_sequences() == 0 && load.kv_cache_usage() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(load.paused());
  EXPECT_EQ(load.running_sequences(), 0u);
  EXPECT_EQ(load.kv_cache_usage(), 0.0);
  EXPECT_EQ(load.in_flight_requests(), 0u);
  EXPECT_TRUE(Resume(*stub).ok());
  EXPECT_FALSE(Load(*stub).paused());
  // Resume every aborted sample (one with no token yet starts anew).
  int64_t mismatched = 0;
  for (int i = 0; i < kCalls; ++i) {
    for (int j = 0; j < got[i].completions_size(); ++j) {
      const v1::Completion& c = got[i].completions(j);
      const v1::Completion& ref = reference[i].completions(j);
      if (c.finish_reason() != v1::FINISH_REASON_ABORT || c.token_ids_size() == 0) continue;
      v1::GenerateResponse resumed;
      grpc::Status s = Generate(*stub, ResumeOf(requests[i], c), &resumed);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (!s.ok()) continue;
      const v1::Completion& r = resumed.completions(0);
      EXPECT_EQ(r.resumed_tokens(), static_cast<uint32_t>(c.token_ids_size()));
      EXPECT_EQ(r.sample_index(), c.sample_index());
      EXPECT_EQ(r.stream_key(), c.stream_key());
      EXPECT_NE(r.finish_reason(), v1::FINISH_REASON_ABORT);
      // The earlier tokens come back as they were sent.
      for (int k = 0; k < c.token_ids_size(); ++k) {
        EXPECT_EQ(r.token_ids(k), c.token_ids(k));
        EXPECT_TRUE(SameFloat(r.logprobs(k), c.logprobs(k)));
      }
      // The whole sample against the uninterrupted one.
      const int n = std::min(r.token_ids_size(), ref.token_ids_size());
      if (kernels == "invariant") {
        EXPECT_EQ(r.token_ids_size(), ref.token_ids_size());
        EXPECT_EQ(r.finish_reason(), ref.finish_reason());
      }
      for (int k = 0; k < n; ++k) {
        if (r.token_ids(k) != ref.token_ids(k)) break;  // diverged: stop comparing
        ++*compared;
        mismatched += !SameFloat(r.logprobs(k), ref.logprobs(k)) ||
                      !SameFloat(r.sampled_logprobs(k), ref.sampled_logprobs(k));
      }
    }
  }
  EXPECT_EQ(server->Stop().value_or(-1), 0);
  return mismatched;
}

TEST(RolloutControlTest, PauseAbortUnderLoadThenResumedPartialRolloutsAreBitIdentical) {
  int64_t compared = 0;
  EXPECT_EQ(AbortAndResumeUnderLoad("invariant", &compared), 0);
  EXPECT_GT(compared, 500);
}

// The twin: the resumed prefix is one prefill chunk where the original
// decoded token by token, which the standard kernels do not compute alike.
TEST(RolloutControlTest, StandardKernelsResumeWithMismatches) {
  int64_t compared = 0;
  EXPECT_GT(AbortAndResumeUnderLoad("standard", &compared), 0);
  EXPECT_GT(compared, 0);
}

class RolloutSleepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>("rollout-sleep");
    MakeModel(common::TinyConfig(), 4, dir_->Sub("m"));
    MakeModel(common::TinyConfig(), 5, dir_->Sub("other"));
    server_ = StartRollout(dir_->Sub("m"), {"--num_threads=2"});
    ASSERT_NE(server_, nullptr);
    stub_ = Stub(server_->grpc_address());
  }
  void TearDown() override {
    if (server_ != nullptr) {
      EXPECT_EQ(server_->Stop().value_or(-1), 0);
    }
  }

  v1::GenerateResponse Run(const v1::GenerateRequest& req) {
    v1::GenerateResponse resp;
    grpc::Status s = Generate(*stub_, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<lockstep::testing::ServiceProcess> server_;
  std::unique_ptr<v1::RolloutService::Stub> stub_;
};

TEST_F(RolloutSleepTest, SleepAndWakeUpKeepTheLogprobBitsAtBothLevels) {
  v1::GenerateRequest req = MakeRequest({3, 1, 4, 1, 5}, 3, 99, 40, 0.8f);
  const v1::GenerateResponse before = Run(req);
  v1::SleepResponse slept;
  ASSERT_TRUE(Sleep(*stub_, v1::SLEEP_LEVEL_KV_CACHE, &slept).ok());
  EXPECT_EQ(slept.level(), v1::SLEEP_LEVEL_KV_CACHE);
  EXPECT_GT(slept.kv_cache_bytes(), 0u);
  EXPECT_EQ(slept.weight_bytes(), 0u);
  EXPECT_EQ(Load(*stub_).sleep_level(), v1::SLEEP_LEVEL_KV_CACHE);
  EXPECT_EQ(MetricValue(HttpGet(server_->metrics_port()), "lockstep_rollout_sleep_level"), 1);
  // A call made while asleep waits for WakeUp.
  v1::GenerateResponse during;
  std::atomic<bool> returned{false};
  std::thread t([&] {
    during = Run(req);
    returned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(returned.load());
  ASSERT_TRUE(WakeUp(*stub_).ok());
  t.join();
  for (int j = 0; j < 3; ++j) {
    EXPECT_TRUE(SameCompletion(during.completions(j), before.completions(j))) << j;
  }
  // Level 2: the weights go too; nothing scores until weights come back.
  ASSERT_TRUE(Sleep(*stub_, v1::SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS, &slept).ok());
  EXPECT_GT(slept.weight_bytes(), 0u);
  {
    grpc::ClientContext ctx;
    v1::ComputeLogprobsRequest cl;
    auto* s = cl.add_sequences();
    for (int tok : {1, 2, 3}) s->add_token_ids(tok);
    s->set_prompt_len(1);
    v1::ComputeLogprobsResponse out;
    EXPECT_EQ(stub_->ComputeLogprobs(&ctx, cl, &out).error_code(), C::FAILED_PRECONDITION);
  }
  EXPECT_EQ(WakeUp(*stub_).error_code(), C::FAILED_PRECONDITION);
  // The same weights pushed back as version 1 (a colocated learner's push).
  auto messages = common::SplitWeights(LoadTensors(dir_->Sub("m")), 1);
  ASSERT_TRUE(messages.ok());
  v1::UpdateWeightsResponse pushed;
  ASSERT_TRUE(Push(*stub_, *messages, &pushed).ok());
  ASSERT_TRUE(WakeUp(*stub_).ok());
  const v1::GenerateResponse after = Run(req);
  for (int j = 0; j < 3; ++j) {
    EXPECT_TRUE(SameCompletion(after.completions(j), before.completions(j))) << j;
    EXPECT_EQ(after.completions(j).weight_version(), 1u);
  }
}

TEST_F(RolloutSleepTest, SharedMemoryWeightsServeTheStreamsBits) {
  auto second = StartRollout(dir_->Sub("m"), {"--num_threads=2"});
  ASSERT_NE(second, nullptr);
  auto stub2 = Stub(second->grpc_address());
  const common::TensorMap other = LoadTensors(dir_->Sub("other"));
  // Version 1 by shared memory to the first, by the stream to the second.
  auto file = common::SharedWeightsFile::Write(common::ToWireTensors(other), 1, "test");
  ASSERT_TRUE(file.ok()) << file.status();
  v1::WeightUpdate header;
  *header.mutable_header() = (*file)->header();
  v1::UpdateWeightsResponse a, b;
  ASSERT_TRUE(Push(*stub_, {header}, &a).ok());
  EXPECT_EQ(a.path(), v1::WEIGHT_PATH_SHARED_MEMORY);
  auto messages = common::SplitWeights(other, 1);
  ASSERT_TRUE(messages.ok());
  ASSERT_TRUE(Push(*stub2, *messages, &b).ok());
  EXPECT_EQ(b.path(), v1::WEIGHT_PATH_STREAM);
  EXPECT_EQ(a.bytes(), b.bytes());
  v1::GenerateRequest req = MakeRequest({2, 7, 1, 8}, 4, 5, 32, 0.8f);
  const v1::GenerateResponse ra = Run(req);
  v1::GenerateResponse rb;
  ASSERT_TRUE(Generate(*stub2, req, &rb).ok());
  for (int j = 0; j < 4; ++j) {
    EXPECT_TRUE(SameCompletion(ra.completions(j), rb.completions(j))) << j;
    EXPECT_EQ(ra.completions(j).weight_version(), 1u);
  }
  EXPECT_EQ(MetricValue(HttpGet(server_->metrics_port()),
                        "lockstep_weight_updates_total{path=\"shared_memory\",role=\"rollout\"}"),
            1);

  // Refusals; version 1 keeps serving after each.
  auto refused = [&](const std::function<void(v1::WeightUpdateHeader*)>& edit, C code) {
    v1::WeightUpdate m = header;
    m.mutable_header()->set_target_version(2);
    edit(m.mutable_header());
    v1::UpdateWeightsResponse r;
    grpc::Status s = Push(*stub_, {m}, &r);
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_EQ(Load(*stub_).weight_version(), 1u);
  };
  refused([](v1::WeightUpdateHeader* h) { h->mutable_shared()->set_path("/etc/passwd"); },
          C::INVALID_ARGUMENT);
  refused([](v1::WeightUpdateHeader* h) {
    h->mutable_shared()->set_path("/dev/shm/lockstep-weights-../x");
  }, C::INVALID_ARGUMENT);
  refused([](v1::WeightUpdateHeader* h) { h->mutable_shared()->set_host_id("elsewhere"); },
          C::FAILED_PRECONDITION);
  refused([](v1::WeightUpdateHeader* h) {
    h->mutable_shared()->set_size(h->shared().size() + 64);
  }, C::FAILED_PRECONDITION);
  refused([](v1::WeightUpdateHeader* h) {
    h->mutable_tensors(1)->set_offset(h->tensors(0).offset());
  }, C::INVALID_ARGUMENT);
  refused([](v1::WeightUpdateHeader* h) { h->mutable_tensors(0)->set_crc32c(h->tensors(0).crc32c() ^ 1); },
          C::ABORTED);
  {
    // A chunk after a shared header.
    v1::WeightUpdate m = header;
    m.mutable_header()->set_target_version(2);
    v1::WeightUpdate chunk;
    chunk.mutable_chunk()->set_name(m.header().tensors(0).name());
    chunk.mutable_chunk()->set_data("x");
    v1::UpdateWeightsResponse r;
    EXPECT_EQ(Push(*stub_, {m, chunk}, &r).error_code(), C::INVALID_ARGUMENT);
  }
  {
    // The sender's file changed under it: truncated.
    ASSERT_EQ(truncate((*file)->path().c_str(), 128), 0);
    v1::WeightUpdate m = header;
    m.mutable_header()->set_target_version(2);
    v1::UpdateWeightsResponse r;
    EXPECT_EQ(Push(*stub_, {m}, &r).error_code(), C::FAILED_PRECONDITION);
  }
  EXPECT_TRUE(SameCompletion(Run(req).completions(0), ra.completions(0)));
  EXPECT_EQ(second->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace lockstep::rollout::itest
