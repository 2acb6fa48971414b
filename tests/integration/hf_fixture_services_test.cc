// The real services on transformers' checkpoints (tests/fixtures/hf/, from
// tests/fixtures/hf/generate.py): rollout_service serves a float32 fixture
// (Qwen2 with q/k/v biases; Llama 3.1 RoPE) straight from the directory
// save_pretrained wrote, and
//  - greedy Generate (temperature 0) of the fixture's prompts returns
//    exactly transformers' greedy tokens, with logprobs within 1e-4 of
//    transformers' logprobs of those tokens;
//  - learner_service, started on the same directory, scores the generated
//    sequences (ComputeLogprobs) bit-identically to what the rollout
//    returned (invariant kernels on both sides).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"
#include "tests/testing/hf_fixture.h"

namespace lockstep::learner::itest {
namespace {

// Float32 lockstep vs float32 transformers differ by rounding order only
// (~1e-6 per logprob).
constexpr double kF32Tolerance = 1e-4;

bool SameBits(const google::protobuf::RepeatedField<float>& a,
              const google::protobuf::RepeatedField<float>& b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

class HfFixtureServicesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixtureServicesTest, GreedyGenerateMatchesTransformersAndLearner) {
  auto fixture = ::lockstep::testing::LoadHfFixture(GetParam());
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  ASSERT_TRUE(fixture->is_f32())
      << "greedy tokens are asserted for float32 only";
  ASSERT_FALSE(fixture->greedy.empty());

  auto rollout =
      StartRollout(fixture->dir, "invariant", {"--kv_cache_bytes=33554432"});
  ASSERT_NE(rollout, nullptr);
  auto learner = StartLearner(fixture->dir, "invariant", /*rollout=*/"");
  ASSERT_NE(learner, nullptr);
  auto rstub = v1::RolloutService::NewStub(Channel(rollout->grpc_address()));
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));

  // GetModelInfo reports the RoPE the model really runs, read from the
  // transformers-5 rope_parameters (the keys the defect ignored).
  {
    auto config = ::lockstep::testing::ReadJsonFile(fixture->dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    const auto& rp = (*config)["rope_parameters"];
    v1::GetModelInfoRequest info_req;
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    Deadline(&ctx, 30);
    grpc::Status s = rstub->GetModelInfo(&ctx, info_req, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const v1::RopeParameters& rope = info.config().rope();
    EXPECT_EQ(rope.rope_type(), rp["rope_type"].get<std::string>());
    EXPECT_EQ(rope.rope_theta(), rp["rope_theta"].get<double>());
    EXPECT_EQ(info.config().rope_theta(), rp["rope_theta"].get<double>());
    if (rp.contains("factor")) EXPECT_EQ(rope.factor(), rp["factor"].get<double>());
    // YaRN scales cos/sin (0.1 ln(factor) + 1); the other types do not.
    const double factor = rp.contains("factor") ? rp["factor"].get<double>() : 1.0;
    EXPECT_DOUBLE_EQ(rope.attention_factor(),
                     rp["rope_type"] == "yarn" ? 0.1 * std::log(factor) + 1.0 : 1.0);
    EXPECT_EQ(info.config().qkv_bias(), (*config)["model_type"] == "qwen2");
    EXPECT_EQ(info.config().ignored_config_keys_size(), 0)
        << info.config().ignored_config_keys(0);
  }

  // Every prompt in one request: the rollout batches them.
  v1::GenerateRequest req;
  for (const auto& path : fixture->greedy) {
    req.add_prompts()->mutable_token_ids()->Add(path.prompt.begin(),
                                                path.prompt.end());
  }
  req.set_n(1);
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_sampling()->set_max_tokens(
      static_cast<int>(fixture->greedy[0].tokens.size()));
  req.mutable_sampling()->set_ignore_eos(true);
  v1::GenerateResponse resp;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 300);
    grpc::Status s = rstub->Generate(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(resp.completions_size(), static_cast<int>(fixture->greedy.size()));

  v1::ComputeLogprobsRequest score;
  std::vector<const v1::Completion*> by_prompt(fixture->greedy.size(), nullptr);
  for (const v1::Completion& c : resp.completions()) {
    ASSERT_LT(c.prompt_index(), by_prompt.size());
    by_prompt[c.prompt_index()] = &c;
  }
  for (size_t i = 0; i < fixture->greedy.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    const auto& path = fixture->greedy[i];
    const v1::Completion* c = by_prompt[i];
    ASSERT_NE(c, nullptr);
    const std::vector<int32_t> tokens(c->token_ids().begin(),
                                      c->token_ids().end());
    EXPECT_EQ(tokens, path.tokens);
    ASSERT_EQ(c->logprobs_size(), static_cast<int>(path.logprobs.size()));
    double max_diff = 0;
    for (int k = 0; k < c->logprobs_size(); ++k) {
      max_diff =
          std::max(max_diff, std::fabs(c->logprobs(k) - path.logprobs[k]));
    }
    std::printf(
        "fixture %s prompt %zu: rollout greedy logprobs vs transformers max "
        "%.6g\n",
        fixture->name.c_str(), i, max_diff);
    std::fflush(stdout);
    EXPECT_LE(max_diff, kF32Tolerance);

    v1::ScoredSequence* seq = score.add_sequences();
    seq->mutable_token_ids()->Add(path.prompt.begin(), path.prompt.end());
    seq->mutable_token_ids()->MergeFrom(c->token_ids());
    seq->set_prompt_len(static_cast<uint32_t>(path.prompt.size()));
  }

  // The learner's own logprobs of the generated sequences: the same bits.
  v1::ComputeLogprobsResponse scored;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 300);
    grpc::Status s = lstub->ComputeLogprobs(&ctx, score, &scored);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(scored.results_size(), static_cast<int>(fixture->greedy.size()));
  for (int i = 0; i < scored.results_size(); ++i) {
    EXPECT_TRUE(
        SameBits(scored.results(i).logprobs(), by_prompt[i]->logprobs()))
        << "prompt " << i;
  }
  EXPECT_EQ(learner->Stop().value_or(-1), 0);
  EXPECT_EQ(rollout->Stop().value_or(-1), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfFixtureServicesTest,
                         ::testing::Values("qwen3_tied_f32", "qwen2_bias_f32", "qwen3_moe_f32",
                                           "llama31_f32", "llama_yarn_f32",
                                           "llama_linear_f32"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace lockstep::learner::itest
