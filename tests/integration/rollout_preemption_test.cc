// Preemption under a tiny KV budget (issue 3 §5): with a cache of a few
// pages the engine preempts and recomputes sequences, and every output is
// still bit-identical to a server with a large cache (and no prefix sharing).
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "tests/rollout_service/integration_util.h"

namespace lockstep::rollout::itest {
namespace {

std::vector<v1::GenerateResponse> RunAll(
    const std::string& address, const std::vector<v1::GenerateRequest>& reqs) {
  auto stub = Stub(address);
  std::vector<v1::GenerateResponse> out(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::Status s = Generate(*stub, reqs[i], &out[i]);
      EXPECT_TRUE(s.ok()) << s.error_message();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST(RolloutPreemptionTest, TinyKvBudgetIsBitIdentical) {
  TempDir dir("rollout-preemption");
  MakeModel(common::TinyConfig(), 4, dir.Sub("m"));
  std::mt19937_64 rng(11);
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    std::vector<int32_t> prompt(8 + rng() % 20);
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % 64);
    // At most 27 + 59 = 86 tokens = 22 pages: every sample fits the small
    // cache.
    reqs.push_back(MakeRequest(prompt, 1 + rng() % 3, rng(), 30 + rng() % 30));
  }

  auto big =
      StartRollout(dir.Sub("m"), {"--page_size=4", "--prefix_sharing=false"});
  ASSERT_NE(big, nullptr);
  auto reference = RunAll(big->grpc_address(), reqs);
  const std::string big_metrics = HttpGet(big->metrics_port());
  EXPECT_EQ(MetricValue(big_metrics, "lockstep_rollout_preemptions_total"),
            0.0);
  EXPECT_EQ(big->Stop().value_or(-1), 0);

  // Room for ~2 long samples at a time: 24 pages of 4 tokens.
  {
    // 1 byte holds no page: the server must refuse to start.
    lockstep::testing::ServiceProcessOptions o;
    o.binary = RolloutBinary();
    o.args = {"--model_dir=" + dir.Sub("m"), "--kv_cache_bytes=1"};
    auto refused = lockstep::testing::ServiceProcess::Start(o);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  auto probe =
      StartRollout(dir.Sub("m"), {"--page_size=4", "--kv_cache_bytes=1048576"});
  ASSERT_NE(probe, nullptr);
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(Stub(probe->grpc_address())
                    ->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info)
                    .ok());
  }
  probe->Stop().IgnoreError();
  const int64_t bytes_per_page = 1048576 / info.kv_cache_pages();
  auto small = StartRollout(
      dir.Sub("m"),
      {"--page_size=4", "--max_batch_tokens=48",
       absl::StrCat("--kv_cache_bytes=", bytes_per_page * 24 + 1)});
  ASSERT_NE(small, nullptr);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(Stub(small->grpc_address())
                    ->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info)
                    .ok());
    EXPECT_EQ(info.kv_cache_pages(), 24u);
  }
  auto preempted = RunAll(small->grpc_address(), reqs);
  const std::string metrics = HttpGet(small->metrics_port());
  EXPECT_GT(MetricValue(metrics, "lockstep_rollout_preemptions_total"), 0.0)
      << metrics;
  EXPECT_EQ(small->Stop().value_or(-1), 0);

  int preemptions = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(reference[i].completions_size(), preempted[i].completions_size());
    for (int c = 0; c < reference[i].completions_size(); ++c) {
      EXPECT_TRUE(SameCompletion(reference[i].completions(c),
                                 preempted[i].completions(c)))
          << "request " << i << " sample " << c;
      EXPECT_EQ(reference[i].completions(c).preemptions(), 0u);
      preemptions += preempted[i].completions(c).preemptions();
    }
  }
  EXPECT_GT(preemptions, 0);
}

}  // namespace
}  // namespace lockstep::rollout::itest
