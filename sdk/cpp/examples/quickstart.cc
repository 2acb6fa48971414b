// Quickstart of the lockstep C++ SDK: generate on the rollout, reward each
// completion, train one step on the learner (which pushes the new weights
// back to the rollout), and check that the logprobs matched bit for bit.
//   lockstep_cpp_quickstart [ROLLOUT_ADDR] [LEARNER_ADDR]
#include <iostream>
#include <vector>

#include "sdk/cpp/lockstep_client.h"

namespace lc = lockstep::client;
namespace v1 = lockstep::v1;

// The user's reward: here, the fraction of even token ids.
float Reward(const v1::Completion& c) {
  int even = 0;
  for (int32_t t : c.token_ids()) even += t % 2 == 0;
  return c.token_ids_size() == 0
             ? 0.0f
             : static_cast<float>(even) / c.token_ids_size();
}

int main(int argc, char** argv) {
  lc::ClientOptions options;
  options.target = argc > 1 ? argv[1] : "127.0.0.1:50051";
  options.default_timeout = absl::Seconds(30);  // per call, retries included
  // options.tls.ca_file = "ca.pem";              // TLS
  // options.tls.cert_file = "client.pem";        // mTLS
  // options.tls.key_file = "client.key";
  // options.auth_token_file = "token";           // authorization: Bearer ...
  auto rollout = lc::RolloutClient::Create(options);
  options.target = argc > 2 ? argv[2] : "127.0.0.1:50052";
  auto learner = lc::LearnerClient::Create(options);
  if (!rollout.ok() || !learner.ok()) {
    std::cerr << "cannot create the clients\n";
    return 1;
  }

  const std::vector<int32_t> prompt = {1, 4, 5, 6};
  v1::GenerateRequest request;
  request.add_prompts()->mutable_token_ids()->Add(prompt.begin(), prompt.end());
  request.set_n(4);
  request.mutable_sampling()->set_max_tokens(8);
  request.mutable_sampling()->set_seed(7);
  absl::StatusOr<v1::GenerateResponse> generated = (*rollout)->Generate(
      request, lc::CallOptions::Timeout(absl::Seconds(10)));
  if (!generated.ok()) {
    std::cerr << "Generate: " << generated.status() << "\n";
    return 1;
  }

  std::vector<v1::Trajectory> batch;
  for (const v1::Completion& c : generated->completions()) {
    batch.push_back(
        lc::MakeTrajectory(prompt, c, Reward(c), /*group_id=*/"prompt-0"));
  }
  absl::StatusOr<v1::SubmitTrajectoriesResponse> submitted =
      (*learner)->SubmitTrajectories(batch);
  if (!submitted.ok()) {
    std::cerr << "SubmitTrajectories: " << submitted.status() << "\n";
    return 1;
  }
  absl::StatusOr<v1::TrainStepResponse> step = (*learner)->TrainStep();
  if (!step.ok()) {
    std::cerr << "TrainStep: " << step.status() << "\n";
    return 1;
  }
  std::cout << "weight version " << step->weight_version() << ", loss "
            << step->loss() << ", tokens compared "
            << step->mismatch().tokens_compared() << ", mismatched "
            << step->mismatch().tokens_mismatched() << "\n";
  return step->mismatch().tokens_mismatched() == 0 ? 0 : 2;
}
