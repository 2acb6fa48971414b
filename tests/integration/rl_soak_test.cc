// Issue 19 §8: a bounded soak on loopback (label `soak`, `make soak`; not in
// `make test`). Three rollouts and a learner driving GRPO; for
// LOCKSTEP_SOAK_SECONDS (default 600): a random rollout is SIGKILLed every
// ~20 s and restarted on its port 2 s later; clients send random Generate
// calls (some cancelled, some past short deadlines) and bad requests to
// random members. Checks: no process dies on its own; every bad request is
// INVALID_ARGUMENT; every client completion is bitwise the learner's score
// of it at its reported version (the learner's ComputeLogprobs pinned to that
// version, raw and sampled kinds; a version the learner has moved past is
// counted, not compared); the learner's steps continue with 0 mismatched
// tokens; at the end every rollout is idle with 0 KV in use and 0 waiting.
// Prints its figures (recorded in docs/benchmarks.md).
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

bool SameBits(const google::protobuf::RepeatedField<float>& a,
              const google::protobuf::RepeatedField<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

struct Counts {
  int64_t kills = 0, generates_ok = 0, generates_failed = 0, cancelled = 0, deadline = 0;
  int64_t bad_requests = 0, bad_wrong_code = 0;
  int64_t tokens_checked = 0, tokens_mismatched = 0, completions_version_moved = 0;
  int64_t unexpected_codes = 0;
};

TEST(RlSoakTest, MembersDieAndComeBackUnderLoad) {
  const char* env = std::getenv("LOCKSTEP_SOAK_SECONDS");
  const int seconds = env != nullptr ? std::atoi(env) : 600;
  TempDir dir("rl-soak");
  MakeTinyModel(dir.Sub("tiny"));
  constexpr int kRollouts = 3;
  std::vector<int> ports;
  std::vector<std::unique_ptr<ServiceProcess>> rollouts;
  std::mutex rollouts_mu;  // guards rollouts[] (the chaos loop replaces entries)
  std::string endpoints;
  for (int i = 0; i < kRollouts; ++i) {
    ports.push_back(FreePort());
    rollouts.push_back(StartRolloutOnPort(dir.Sub("tiny"), ports.back(), 1));
    ASSERT_NE(rollouts.back(), nullptr);
    endpoints += (i ? "," : "") + rollouts.back()->grpc_address();
  }
  auto learner = StartLearner(dir.Sub("tiny"), "invariant", endpoints,
                              {"--drive", "--steps=0", "--prompts_per_step=6",
                               "--samples_per_prompt=4", "--keep_serving", "--fail_on_mismatch",
                               "--temperature=0.9", "--top_p=0.95",
                               "--checkpoint_dir=" + dir.Sub("ckpt"), "--checkpoint_every=5",
                               "--generate_retry_seconds=60", "--push_retry_seconds=60"});
  ASSERT_NE(learner, nullptr);
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));

  Counts c;
  std::mutex counts_mu;
  std::atomic<bool> done{false};  // set when the clients are done
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);

  // Clients: random Generate (some cancelled or past a short deadline),
  // bad requests, and the check of every completion against the learner.
  std::vector<std::thread> clients;
  for (int k = 0; k < 2; ++k) {
    clients.emplace_back([&, k] {
      std::mt19937 rng(100 + k);
      while (std::chrono::steady_clock::now() < end) {
        const int target = static_cast<int>(rng() % kRollouts);
        auto stub = v1::RolloutService::NewStub(
            Channel(absl::StrCat("127.0.0.1:", ports[target])));
        v1::GenerateRequest req;
        auto* p = req.add_prompts();
        for (int t = 0; t < 3 + static_cast<int>(rng() % 8); ++t) p->add_token_ids(4 + rng() % 50);
        req.set_n(1 + rng() % 3);
        req.mutable_sampling()->set_temperature(rng() % 4 == 0 ? 0.0f : 0.7f + 0.1f * (rng() % 6));
        if (rng() % 3 == 0) req.mutable_sampling()->set_top_p(0.9f);
        if (rng() % 4 == 0) req.mutable_sampling()->set_repetition_penalty(1.1f);
        req.mutable_sampling()->set_max_tokens(4 + rng() % 12);
        req.mutable_sampling()->set_seed(rng());
        const int kind = static_cast<int>(rng() % 10);
        if (kind == 0) {  // a bad request: must be INVALID_ARGUMENT, and lose nothing
          req.mutable_sampling()->set_top_p(1.5f + (rng() % 3));
          grpc::ClientContext ctx;
          Deadline(&ctx, 10);
          v1::GenerateResponse resp;
          const grpc::Status s = stub->Generate(&ctx, req, &resp);
          std::lock_guard<std::mutex> lock(counts_mu);
          if (s.error_code() == grpc::StatusCode::UNAVAILABLE) continue;  // a killed member
          ++c.bad_requests;
          if (s.error_code() != grpc::StatusCode::INVALID_ARGUMENT) ++c.bad_wrong_code;
          continue;
        }
        grpc::ClientContext ctx;
        if (kind == 1) {
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(5));
        } else {
          Deadline(&ctx, 60);
        }
        std::thread canceller;
        if (kind == 2) {
          canceller = std::thread([&ctx, ms = 1 + rng() % 20] {
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            ctx.TryCancel();
          });
        }
        v1::GenerateResponse resp;
        const grpc::Status s = stub->Generate(&ctx, req, &resp);
        if (canceller.joinable()) canceller.join();
        std::lock_guard<std::mutex> lock(counts_mu);
        switch (s.error_code()) {
          case grpc::StatusCode::OK: ++c.generates_ok; break;
          case grpc::StatusCode::CANCELLED: ++c.cancelled; continue;
          case grpc::StatusCode::DEADLINE_EXCEEDED: ++c.deadline; continue;
          case grpc::StatusCode::UNAVAILABLE: ++c.generates_failed; continue;
          default:
            ++c.unexpected_codes;
            ADD_FAILURE() << "Generate: " << s.error_code() << " " << s.error_message();
            continue;
        }
        // Score every completion with the learner at the completion's version.
        for (const v1::Completion& comp : resp.completions()) {
          bool one_version = true;
          for (uint64_t v : comp.token_weight_versions()) one_version &= v == comp.weight_version();
          if (!one_version || comp.token_ids_size() == 0) continue;
          v1::ComputeLogprobsRequest score;
          auto* seq = score.add_sequences();
          *seq->mutable_token_ids() = req.prompts(0).token_ids();
          seq->mutable_token_ids()->MergeFrom(comp.token_ids());
          seq->set_prompt_len(req.prompts(0).token_ids_size());
          *seq->mutable_sampling() = comp.sampling();
          score.set_weight_version(comp.weight_version());
          grpc::ClientContext lctx;
          Deadline(&lctx, 60);
          v1::ComputeLogprobsResponse lr;
          const grpc::Status ls = lstub->ComputeLogprobs(&lctx, score, &lr);
          if (ls.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
            ++c.completions_version_moved;  // the learner stepped on meanwhile
            continue;
          }
          if (!ls.ok()) {
            ADD_FAILURE() << "learner ComputeLogprobs: " << ls.error_message();
            continue;
          }
          if (lr.weight_version() != comp.weight_version()) {
            ++c.completions_version_moved;  // a step landed during the call
            continue;
          }
          c.tokens_checked += comp.token_ids_size();
          if (!SameBits(lr.results(0).logprobs(), comp.logprobs()) ||
              !SameBits(lr.results(0).sampled_logprobs(), comp.sampled_logprobs())) {
            c.tokens_mismatched += comp.token_ids_size();
          }
        }
      }
    });
  }
  // Chaos, on this thread (a child started by a thread dies with that
  // thread: the harness sets PR_SET_PDEATHSIG): SIGKILL a random member
  // every ~20 s, restart it on its port 2 s later.
  {
    std::mt19937 rng(7);
    while (std::chrono::steady_clock::now() + std::chrono::seconds(25) < end) {
      std::this_thread::sleep_for(std::chrono::seconds(20));
      const int victim = static_cast<int>(rng() % kRollouts);
      {
        std::lock_guard<std::mutex> lock(rollouts_mu);
        EXPECT_TRUE(rollouts[victim]->Running()) << "rollout " << victim << " died on its own";
        rollouts[victim]->Kill();
        rollouts[victim].reset();
      }
      std::this_thread::sleep_for(std::chrono::seconds(2));
      auto fresh = StartRolloutOnPort(dir.Sub("tiny"), ports[victim], 1);
      ASSERT_NE(fresh, nullptr);
      std::lock_guard<std::mutex> lock(rollouts_mu);
      rollouts[victim] = std::move(fresh);
      std::lock_guard<std::mutex> lock2(counts_mu);
      ++c.kills;
    }
  }
  for (auto& t : clients) t.join();
  done.store(true);

  // The learner kept stepping, on-policy, and is alive.
  ASSERT_TRUE(learner->Running()) << "the learner died";
  const v1::LearnerStats stats = Stats(*lstub);
  const std::string lscrape = HttpGet(learner->metrics_port());
  // Stop driving, then every member drains to idle: no leaked KV.
  EXPECT_EQ(learner->Stop().value_or(-1), 0);
  int64_t busy = 0;
  for (int i = 0; i < kRollouts; ++i) {
    std::lock_guard<std::mutex> lock(rollouts_mu);
    ASSERT_NE(rollouts[i], nullptr);
    EXPECT_TRUE(rollouts[i]->Running()) << "rollout " << i << " died on its own";
    std::string rs;
    for (int k = 0; k < 300; ++k) {
      rs = HttpGet(rollouts[i]->metrics_port());
      if (MetricValue(rs, "lockstep_rollout_kv_cache_usage_ratio") == 0 &&
          MetricValue(rs, "lockstep_rollout_queue_depth") == 0) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    busy += MetricValue(rs, "lockstep_rollout_kv_cache_usage_ratio") != 0 ||
            MetricValue(rs, "lockstep_rollout_queue_depth") != 0;
  }
  EXPECT_EQ(busy, 0) << "KV pages or queued samples left after the load stopped";
  std::printf(
      "soak %d s: %lld kills; learner %llu steps, %llu tokens compared, %llu mismatched "
      "(raw), %llu / %llu (sampled), generate retries %.0f, push retries %.0f; clients: %lld "
      "Generate OK, %lld unavailable (killed member), %lld cancelled, %lld deadline, %lld bad "
      "requests (%lld wrong code), %lld tokens checked against the learner, %lld mismatched, "
      "%lld completions whose version the learner had left\n",
      seconds, static_cast<long long>(c.kills), static_cast<unsigned long long>(stats.step()),
      static_cast<unsigned long long>(stats.mismatch_total().tokens_compared()),
      static_cast<unsigned long long>(stats.mismatch_total().tokens_mismatched()),
      static_cast<unsigned long long>(stats.sampled_mismatch_total().tokens_compared()),
      static_cast<unsigned long long>(stats.sampled_mismatch_total().tokens_mismatched()),
      MetricValue(lscrape, "lockstep_learner_generate_retries_total"),
      MetricValue(lscrape, "lockstep_weight_push_retries_total"),
      static_cast<long long>(c.generates_ok), static_cast<long long>(c.generates_failed),
      static_cast<long long>(c.cancelled), static_cast<long long>(c.deadline),
      static_cast<long long>(c.bad_requests), static_cast<long long>(c.bad_wrong_code),
      static_cast<long long>(c.tokens_checked), static_cast<long long>(c.tokens_mismatched),
      static_cast<long long>(c.completions_version_moved));
  EXPECT_GT(stats.step(), 0u);
  EXPECT_EQ(stats.mismatch_total().tokens_mismatched(), 0u);
  EXPECT_EQ(stats.sampled_mismatch_total().tokens_mismatched(), 0u);
  EXPECT_EQ(c.bad_wrong_code, 0);
  EXPECT_EQ(c.unexpected_codes, 0);
  EXPECT_GT(c.tokens_checked, 0);
  EXPECT_EQ(c.tokens_mismatched, 0);
  if (seconds >= 60) EXPECT_GT(c.kills, 0);
}

}  // namespace
}  // namespace lockstep::learner::itest
