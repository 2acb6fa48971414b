// Weight updates through the real server (issue 3 §5): an update during
// heavy load — every token of every response is consistent with the weight
// version it reports (re-scored in-process with that version's weights) —
// and a corrupted chunk leaves the old version serving.
#include <atomic>
#include <map>
#include <random>
#include <thread>

#include "common/model/model.h"
#include "gtest/gtest.h"
#include "tests/rollout_service/integration_util.h"

namespace lockstep::rollout::itest {
namespace {

class RolloutWeightsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("rollout-weights");
    for (int seed : {1, 2, 3}) {
      MakeModel(common::TinyConfig(), seed, dir_->Sub(absl::StrCat("v", seed)));
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static TempDir* dir_;
};
TempDir* RolloutWeightsTest::dir_ = nullptr;

std::shared_ptr<const common::Model> LoadModel(const std::string& dir) {
  auto m = common::Model::Load(dir, common::ModelOptions());
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

// Checks that every token's logprob equals, bitwise, its re-score under the
// weights of the version it reports. Returns the versions seen.
std::set<uint64_t> CheckConsistent(
    const v1::GenerateRequest& req, const v1::GenerateResponse& resp,
    const std::map<uint64_t, std::shared_ptr<const common::Model>>& models) {
  std::set<uint64_t> seen;
  for (const v1::Completion& c : resp.completions()) {
    const auto& prompt = req.prompts(c.prompt_index()).token_ids();
    std::vector<int32_t> seq(prompt.begin(), prompt.end());
    seq.insert(seq.end(), c.token_ids().begin(), c.token_ids().end());
    EXPECT_EQ(c.token_weight_versions_size(), c.token_ids_size());
    EXPECT_TRUE(std::is_sorted(c.token_weight_versions().begin(),
                               c.token_weight_versions().end()));
    if (c.token_weight_versions_size() > 0) {
      EXPECT_EQ(c.weight_version(), *c.token_weight_versions().rbegin());
    }
    std::map<uint64_t, std::vector<float>> scores;
    for (int k = 0; k < c.token_ids_size(); ++k) {
      const uint64_t v = c.token_weight_versions(k);
      seen.insert(v);
      if (!scores.count(v)) {
        auto it = models.find(v);
        if (it == models.end()) {
          ADD_FAILURE() << "unknown version " << v;
          return seen;
        }
        auto s = it->second->Score({seq}, {prompt.size()});
        EXPECT_TRUE(s.ok()) << s.status();
        scores[v] = s.ok() ? (*s)[0] : std::vector<float>();
      }
      const float want = scores[v].at(k);
      const float got = c.logprobs(k);
      EXPECT_EQ(std::memcmp(&want, &got, 4), 0)
          << "token " << k << " of a sample: version " << v << " scores "
          << want << ", the server returned " << got;
    }
  }
  return seen;
}

TEST_F(RolloutWeightsTest, UpdateDuringHeavyLoadAndCorruptedChunk) {
  auto server = StartRollout(dir_->Sub("v1"),
                             {"--initial_version=1", "--max_batch_tokens=96"});
  ASSERT_NE(server, nullptr);
  std::map<uint64_t, std::shared_ptr<const common::Model>> models = {
      {1, LoadModel(dir_->Sub("v1"))}, {2, LoadModel(dir_->Sub("v2"))}};
  auto stub = Stub(server->grpc_address());

  // Heavy load: 24 clients, each sending requests back to back.
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<std::pair<v1::GenerateRequest, v1::GenerateResponse>> results;
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 24; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937_64 rng(c);
      for (int round = 0; round < 3 || !stop.load(); ++round) {
        if (round >= 12) break;
        std::vector<int32_t> prompt(2 + rng() % 30);
        for (auto& t : prompt) t = static_cast<int32_t>(rng() % 64);
        v1::GenerateRequest req =
            MakeRequest(prompt, 1 + rng() % 2, rng(), 16 + rng() % 48);
        v1::GenerateResponse resp;
        grpc::Status s = Generate(*stub, req, &resp);
        if (!s.ok()) {
          ADD_FAILURE() << s.error_message();
          failures++;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        results.emplace_back(req, resp);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  v1::UpdateWeightsResponse up;
  grpc::Status us = PushWeights(*stub, LoadTensors(dir_->Sub("v2")), 2, &up);
  ASSERT_TRUE(us.ok()) << us.error_message();
  EXPECT_EQ(up.weight_version(), 2u);
  EXPECT_EQ(up.previous_version(), 1u);
  EXPECT_GT(up.bytes(), 0u);
  std::fprintf(stderr,
               "update: %.3f s, swap %.3f s, %llu running samples moved\n",
               up.duration_seconds(), up.swap_seconds(),
               static_cast<unsigned long long>(up.preempted_sequences()));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0);

  std::set<uint64_t> all;
  int mixed = 0;
  for (const auto& [req, resp] : results) {
    std::set<uint64_t> seen = CheckConsistent(req, resp, models);
    all.insert(seen.begin(), seen.end());
    for (const auto& c : resp.completions()) {
      if (c.token_weight_versions_size() > 0 &&
          c.token_weight_versions(0) != c.weight_version()) {
        ++mixed;
      }
    }
  }
  std::fprintf(stderr, "%zu responses, %d samples straddled the swap\n",
               results.size(), mixed);
  EXPECT_TRUE(all.count(1));
  EXPECT_TRUE(all.count(2));

  // A corrupted chunk: ABORTED, version 2 keeps serving.
  v1::UpdateWeightsResponse bad;
  grpc::Status cs = PushWeights(*stub, LoadTensors(dir_->Sub("v3")), 3, &bad,
                                [](std::vector<v1::WeightUpdate>& m) {
                                  (*m[5].mutable_chunk()->mutable_data())[7] ^=
                                      0x10;
                                });
  EXPECT_EQ(cs.error_code(), grpc::StatusCode::ABORTED) << cs.error_message();
  EXPECT_NE(cs.error_message().find("CRC-32C"), std::string::npos)
      << cs.error_message();
  v1::ModelInfo info;
  grpc::ClientContext ictx;
  ASSERT_TRUE(stub->GetModelInfo(&ictx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.weight_version(), 2u);
  v1::GenerateRequest req = MakeRequest({1, 2, 3, 4}, 2, 5, 20);
  v1::GenerateResponse resp;
  ASSERT_TRUE(Generate(*stub, req, &resp).ok());
  EXPECT_EQ(CheckConsistent(req, resp, models), std::set<uint64_t>{2});

  // The metrics saw the update.
  const std::string text = HttpGet(server->metrics_port());
  EXPECT_EQ(MetricValue(text, "lockstep_weight_version"), 2.0) << text;
  EXPECT_GE(MetricValue(text, "lockstep_weight_update_duration_seconds_count"),
            1.0);
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace lockstep::rollout::itest
