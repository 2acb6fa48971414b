// Issue 5 §3 on the GPU (and issue 20 §5 on a mixture-of-experts model):
// 1000 identical greedy requests of 256 tokens,
// submitted concurrently to the rollout service, give exactly one distinct
// output in invariant mode; the count in standard mode is reported (the
// batch a request lands in varies, and cuBLAS/SDPA round differently with
// it). Skips without a GPU.
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "common/model/cuda_check.h"
#include "lockstep/v1/rollout.grpc.pb.h"
#include "tests/testing/service_process.h"

namespace lockstep {
namespace {

constexpr int kRequests = 1000;
constexpr int kTokens = 256;

// A ~60M-parameter qwen3-shaped bf16 model: big enough that the GEMMs run on
// tensor cores with realistic shapes, small enough to generate in seconds.
constexpr char kDenseConfig[] = R"({"model_type":"qwen3","architectures":["Qwen3ForCausalLM"],
    "vocab_size":8192,"hidden_size":512,"intermediate_size":1536,"num_hidden_layers":8,
    "num_attention_heads":8,"num_key_value_heads":4,"head_dim":64,"rms_norm_eps":1e-6,
    "rope_theta":1000000,"tie_word_embeddings":true,"max_position_embeddings":4096,
    "torch_dtype":"bfloat16","eos_token_id":1})";

// Its mixture-of-experts sibling: 4 layers (layer 2 dense), 32 experts of
// width 256, top 4 renormalised: each step's tokens split over the experts
// differently, so an expert's group size varies with the traffic.
constexpr char kMoeConfig[] = R"({"model_type":"qwen3_moe",
    "architectures":["Qwen3MoeForCausalLM"],"vocab_size":8192,"hidden_size":512,
    "intermediate_size":1536,"num_hidden_layers":4,"num_attention_heads":8,
    "num_key_value_heads":4,"head_dim":64,"rms_norm_eps":1e-6,"rope_theta":1000000,
    "tie_word_embeddings":true,"max_position_embeddings":4096,"torch_dtype":"bfloat16",
    "eos_token_id":1,"num_experts":32,"num_experts_per_tok":4,"moe_intermediate_size":256,
    "norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[2]})";

std::string MakeModel(const std::string& dir, const char* config_json) {
  const std::string cfg = dir + ".json";
  std::ofstream(cfg) << config_json;
  const std::string cmd = std::string(LOCKSTEP_LOCKSTEP_MAKE_MODEL_BINARY) + " --config " + cfg +
                          " --seed 3 --out " + dir + " > /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return dir;
}

int DistinctOutputs(const std::string& model_dir, const std::string& kernels) {
  testing::ServiceProcessOptions o;
  o.binary = LOCKSTEP_ROLLOUT_SERVICE_BINARY;
  o.args = {"--model_dir=" + model_dir, "--device=cuda", "--kernels=" + kernels,
            "--kv_cache_bytes=12000000000", "--max_batch_tokens=8192", "--max_running=1024",
            "--max_queue=4096"};
  auto proc = testing::ServiceProcess::Start(o);
  EXPECT_TRUE(proc.ok()) << proc.status();
  if (!proc.ok()) return -1;
  auto channel = grpc::CreateChannel((*proc)->grpc_address(), grpc::InsecureChannelCredentials());
  auto stub = v1::RolloutService::NewStub(channel);
  v1::GenerateRequest req;
  auto* p = req.add_prompts();
  for (int t : {5, 17, 250, 3000, 42, 7}) p->add_token_ids(t);
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_sampling()->set_max_tokens(kTokens);
  req.mutable_sampling()->set_ignore_eos(true);
  grpc::CompletionQueue cq;
  std::vector<grpc::ClientContext> ctx(kRequests);
  std::vector<v1::GenerateResponse> resp(kRequests);
  std::vector<grpc::Status> status(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    ctx[i].set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(8));
    auto rpc = stub->AsyncGenerate(&ctx[i], req, &cq);
    rpc->Finish(&resp[i], &status[i], reinterpret_cast<void*>(static_cast<intptr_t>(i)));
  }
  std::set<std::string> distinct;
  for (int done = 0; done < kRequests; ++done) {
    void* tag;
    bool ok;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    const int i = static_cast<int>(reinterpret_cast<intptr_t>(tag));
    EXPECT_TRUE(status[i].ok()) << status[i].error_message();
    if (!status[i].ok() || resp[i].completions_size() != 1) continue;
    const auto& c = resp[i].completions(0);
    EXPECT_EQ(c.token_ids_size(), kTokens);
    std::string key(reinterpret_cast<const char*>(c.token_ids().data()), c.token_ids_size() * 4);
    key.append(reinterpret_cast<const char*>(c.logprobs().data()), c.logprobs_size() * 4);
    distinct.insert(key);
  }
  cq.Shutdown();
  (*proc)->Stop();
  return distinct.size();
}

// The model of `config_json`: 1 distinct output in invariant mode; the
// standard count is reported (LOCKSTEP_GREEDY_SKIP_STANDARD=1 leaves out the
// much slower standard run).
void ExpectOneOutput(const std::string& name, const char* config_json) {
  const std::string dir = MakeModel(::testing::TempDir() + "/" + name, config_json);
  const int invariant = DistinctOutputs(dir, "invariant");
  std::printf("[%s] distinct outputs of %d greedy requests x %d tokens, invariant: %d\n",
              name.c_str(), kRequests, kTokens, invariant);
  std::fflush(stdout);
  EXPECT_EQ(invariant, 1);
  const char* skip = std::getenv("LOCKSTEP_GREEDY_SKIP_STANDARD");
  if (skip == nullptr || std::string(skip) != "1") {
    std::printf("[%s] distinct outputs, standard: %d\n", name.c_str(),
                DistinctOutputs(dir, "standard"));
  }
}

TEST(RolloutGreedyCudaTest, ThousandIdenticalGreedyRequestsGiveOneOutput) {
  if (common::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpectOneOutput("greedy_model", kDenseConfig);
}

TEST(RolloutGreedyCudaTest, ThousandIdenticalGreedyRequestsGiveOneOutputOnMoe) {
  if (common::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpectOneOutput("greedy_moe_model", kMoeConfig);
}

}  // namespace
}  // namespace lockstep
