// Issue 19 §1: the learner's members come from names re-resolved
// periodically (--rollout_dns; the chart's headless Service). Every member
// gets Generate traffic (prompts spread by load) and every push; a member
// that joins later is brought to the current version before it is used;
// `lockstep stats` lists the members with their versions.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

double Generates(const std::string& scrape) {
  return MetricValue(scrape, "lockstep_rollout_requests_total{code=\"OK\",method=\"Generate\"}");
}

TEST(LearnerMembershipTest, EveryResolvedMemberServesAndIsCurrent) {
  TempDir dir("learner-membership");
  MakeTinyModel(dir.Sub("tiny"));
  auto a = StartRollout(dir.Sub("tiny"), "invariant");
  auto b = StartRollout(dir.Sub("tiny"), "invariant");
  ASSERT_TRUE(a && b);
  // Two names (IP literals resolve to themselves), re-resolved every 0.5 s.
  auto learner = StartLearner(
      dir.Sub("tiny"), "invariant", "",
      {"--rollout_dns=" + a->grpc_address() + "," + b->grpc_address(),
       "--rollout_resolve_seconds=0.5", "--drive", "--steps=4", "--prompts_per_step=6",
       "--samples_per_prompt=2", "--keep_serving", "--fail_on_mismatch"});
  ASSERT_NE(learner, nullptr);
  // The learner's version moves to 4 when step 4 trains; the members reach 4
  // when that step's push completes, a moment later: wait for all three.
  auto rollout_version = [](const ServiceProcess& r) {
    return MetricValue(HttpGet(r.metrics_port()), "lockstep_weight_version{role=\"rollout\"}");
  };
  std::string text;
  for (int i = 0; i < 1200; ++i) {
    text = HttpGet(learner->metrics_port());
    if (!learner->Running() ||
        (MetricValue(text, "lockstep_weight_version{role=\"learner\"}") >= 4 &&
         rollout_version(*a) >= 4 && rollout_version(*b) >= 4)) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(learner->Running());
  EXPECT_EQ(MetricValue(text, "lockstep_tokens_mismatched_total"), 0);
  // Both members generated (the prompts were spread) and serve version 4.
  for (auto* r : {a.get(), b.get()}) {
    const std::string rs = HttpGet(r->metrics_port());
    EXPECT_GE(Generates(rs), 4) << r->grpc_address();
    EXPECT_EQ(MetricValue(rs, "lockstep_weight_version{role=\"rollout\"}"), 4) << r->grpc_address();
  }
  // `lockstep stats` lists both with their versions.
  const std::string out = dir.Sub("stats.txt");
  const std::string cmd = std::string(LOCKSTEP_LOCKSTEP_BINARY) + " stats --learner=" +
                          learner->grpc_address() + " > " + out + " 2>&1";
  // The learner records a member's version when its push returns, just after
  // the member swapped: allow it a moment.
  std::string listing;
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::ifstream in(out);
    std::stringstream s;
    s << in.rdbuf();
    listing = s.str();
    if (listing.find("rollout " + a->grpc_address() + ": version 4") != std::string::npos &&
        listing.find("rollout " + b->grpc_address() + ": version 4") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto* r : {a.get(), b.get()}) {
    EXPECT_NE(listing.find("rollout " + r->grpc_address() + ": version 4"), std::string::npos)
        << listing;
  }
  EXPECT_EQ(learner->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace lockstep::learner::itest
