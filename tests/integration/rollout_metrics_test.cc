// Metrics and lifecycle through the real server (issue 3 §5):
//  - a scrape of /metrics holds every DESIGN.md §5 rollout metric and passes
//    `promtool check metrics`; the self-check finds zero mismatches in
//    invariant mode;
//  - GenerateStream streams the same tokens as Generate;
//  - SIGTERM drains: health NOT_SERVING, new requests UNAVAILABLE, the
//    in-flight stream completes, exit status 0.
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <thread>

#include "gtest/gtest.h"
#include "tests/rollout_service/integration_util.h"

namespace lockstep::rollout::itest {
namespace {

std::string FindPromtool() {
  for (const char* p : {"/usr/bin/promtool", "/usr/local/bin/promtool"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return "";
}

TEST(RolloutMetricsTest, ScrapePassesPromtoolAndSelfCheckIsClean) {
  TempDir dir("rollout-metrics");
  MakeModel(common::TinyConfig(), 1, dir.Sub("m"));
  auto server = StartRollout(dir.Sub("m"), {"--selfcheck_rate=1"});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateResponse resp;
      grpc::Status s =
          Generate(*stub, MakeRequest({1, 2, 3, i}, 2, i, 24), &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
    });
  }
  for (auto& t : threads) t.join();
  v1::GenerateResponse resp;
  EXPECT_EQ(Generate(*stub, MakeRequest({99}, 1, 1, 4), &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // Self-checks run after the responses: wait for all 12.
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text = HttpGet(server->metrics_port());
    if (MetricValue(text, "lockstep_rollout_selfcheck_sequences_total") >= 12)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (const char* name :
       {"lockstep_rollout_requests_total",
        "lockstep_rollout_generated_tokens_total",
        "lockstep_rollout_batch_size_bucket",
        "lockstep_rollout_time_to_first_token_seconds_bucket",
        "lockstep_rollout_inter_token_latency_seconds_bucket",
        "lockstep_rollout_request_duration_seconds_bucket",
        "lockstep_rollout_kv_cache_usage_ratio", "lockstep_rollout_queue_depth",
        "lockstep_weight_update_duration_seconds_count",
        "lockstep_weight_version", "lockstep_build_info",
        "lockstep_rollout_selfcheck_sequences_total",
        "lockstep_rollout_selfcheck_mismatch_total"}) {
    EXPECT_GE(MetricValue(text, name), 0.0) << name << " missing in\n" << text;
  }
  EXPECT_EQ(MetricValue(text, "lockstep_rollout_generated_tokens_total"),
            12 * 24.0);
  EXPECT_EQ(MetricValue(text, "lockstep_rollout_selfcheck_sequences_total"),
            12.0);
  EXPECT_EQ(MetricValue(text, "lockstep_rollout_selfcheck_mismatch_total"),
            0.0);
  EXPECT_NE(text.find("lockstep_rollout_requests_total{code=\"INVALID_"
                      "ARGUMENT\",method=\"Generate\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("lockstep_build_info{device=\"cpu\",kernels="
                      "\"invariant\",role=\"rollout\""),
            std::string::npos)
      << text;

  const std::string promtool = FindPromtool();
  if (promtool.empty()) {
    FAIL() << "promtool not installed (Debian package `prometheus`, installed by "
              "scripts/install-deps.sh)";
  }
  const std::string file = dir.Sub("scrape.txt");
  std::ofstream(file) << text;
  const std::string cmd = promtool + " check metrics < " + file + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int rc = pclose(p);
  EXPECT_EQ(rc, 0) << "promtool check metrics:\n" << out;
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

// Issue 19 §6: deadline expiries are counted as DEADLINE_EXCEEDED, client
// cancellations as CANCELLED -- never one for the other.
TEST(RolloutMetricsTest, DeadlinesAndCancellationsAreCountedApart) {
  TempDir dir("rollout-deadlines");
  MakeModel(common::TinyConfig(), 1, dir.Sub("m"));
  auto server = StartRollout(dir.Sub("m"), {});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  constexpr int kCalls = 50;
  int deadline = 0, cancelled = 0;
  std::vector<std::thread> threads;
  std::mutex mu;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      // Far more tokens than fit in the time: every call ends on its clock.
      v1::GenerateResponse resp;
      grpc::Status s =
          Generate(*stub, MakeRequest({1, 2, 3, i % 60}, 4, i, 400), &resp, 0.05 + 0.01 * (i % 5));
      std::lock_guard<std::mutex> lock(mu);
      deadline += s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    });
  }
  for (int i = 0; i < 10; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      std::thread canceller([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(40 + 5 * i));
        ctx.TryCancel();
      });
      v1::GenerateResponse resp;
      grpc::Status s = stub->Generate(&ctx, MakeRequest({4, 5, i}, 4, i, 400), &resp);
      canceller.join();
      std::lock_guard<std::mutex> lock(mu);
      cancelled += s.error_code() == grpc::StatusCode::CANCELLED;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(deadline, kCalls);
  EXPECT_EQ(cancelled, 10);
  // The server's count, once every call has been recorded.
  std::string text;
  for (int i = 0; i < 100; ++i) {
    text = HttpGet(server->metrics_port());
    if (MetricValue(text, "lockstep_rollout_requests_total{code=\"DEADLINE_EXCEEDED\",method=\"Generate\"}") +
            MetricValue(text, "lockstep_rollout_requests_total{code=\"CANCELLED\",method=\"Generate\"}") >=
        kCalls + 10) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(MetricValue(text, "lockstep_rollout_requests_total{code=\"DEADLINE_EXCEEDED\",method=\"Generate\"}"),
            kCalls) << text;
  EXPECT_EQ(MetricValue(text, "lockstep_rollout_requests_total{code=\"CANCELLED\",method=\"Generate\"}"), 10)
      << text;
}

TEST(RolloutMetricsTest, StreamMatchesUnaryAndSigtermDrains) {
  TempDir dir("rollout-drain");
  MakeModel(common::TinyConfig(), 1, dir.Sub("m"));
  auto server = StartRollout(dir.Sub("m"), {"--drain_grace_seconds=60"});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  const v1::GenerateRequest req = MakeRequest({5, 4, 3, 2, 1}, 2, 17, 300);
  v1::GenerateResponse unary;
  ASSERT_TRUE(Generate(*stub, req, &unary).ok());

  // Start a stream, SIGTERM once its first tokens arrived.
  grpc::ClientContext ctx;
  auto reader = stub->GenerateStream(&ctx, req);
  std::vector<std::vector<int32_t>> tokens(2);
  std::vector<std::vector<float>> logprobs(2);
  std::vector<int> finish(2, 0);
  v1::GenerateStreamResponse m;
  bool signalled = false;
  int messages = 0;
  while (reader->Read(&m)) {
    ++messages;
    const int j = m.sample_index();
    tokens[j].insert(tokens[j].end(), m.token_ids().begin(),
                     m.token_ids().end());
    logprobs[j].insert(logprobs[j].end(), m.logprobs().begin(),
                       m.logprobs().end());
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)
      finish[j] = m.finish_reason();
    if (!signalled && tokens[0].size() >= 3) {
      signalled = true;
      ASSERT_EQ(kill(server->pid(), SIGTERM), 0);
      // Health flips and new work is refused while the stream finishes.
      int health = 1;
      for (int i = 0; i < 100 && health == 1; ++i) {
        health =
            HealthStatus(server->grpc_address(), "lockstep.v1.RolloutService");
        if (health == 1)
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      EXPECT_EQ(health, 2);
      v1::GenerateResponse refused;
      grpc::Status rs = Generate(*stub, MakeRequest({1}, 1, 1, 2), &refused);
      EXPECT_EQ(rs.error_code(), grpc::StatusCode::UNAVAILABLE)
          << rs.error_message();
    }
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(signalled);
  EXPECT_GT(messages, 2);
  for (int j = 0; j < 2; ++j) {
    const v1::Completion& c = unary.completions(j);
    EXPECT_EQ(tokens[j],
              std::vector<int32_t>(c.token_ids().begin(), c.token_ids().end()));
    EXPECT_EQ(std::memcmp(logprobs[j].data(), c.logprobs().data(),
                          4 * logprobs[j].size()),
              0);
    EXPECT_EQ(finish[j], v1::FINISH_REASON_LENGTH);
  }
  auto rc = server->Stop(60);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, 0);
}

}  // namespace
}  // namespace lockstep::rollout::itest
