// Learner benchmarks (issue 4):
//  - BM_TrainStep: one full training step (forward + backward through the
//    learner's kernels, GRPO/PPO loss, gradient clipping, AdamW, refresh of
//    the pushed compute copy) on a seeded model, invariant vs standard
//    kernels in the same run; counters tokens/s (every token of every
//    sequence goes through forward and backward) and the ratio is computed
//    from the two rows.
// Both report real time and the CPU time of the whole process (all threads;
// for the push that includes the receiving server's threads).
//  - BM_WeightPush: the compute copy streamed as an UpdateWeights call over
//    loopback gRPC into a receiver that stages and CRC-checks it exactly as a
//    rollout does (common::WeightStager); counter MB/s. Arguments: chunk
//    KiB and parallel streams (PushOptions::streams; parts assembled by
//    common::WeightAssembly as the rollout does). BM_WeightPushChannels:
//    the same parts over one channel or one channel per part.
// Models: LOCKSTEP_BENCH_PRESET (default "100m"; "tiny" for a quick run).
//   learner_bench --benchmark_filter=TrainStep
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "common/formats/model_generator.h"
#include "common/wire/weight_assembly.h"
#include "common/wire/weight_stream.h"
#include "learner_service/trainer.h"
#include "learner_service/weight_push.h"
#include "lockstep/v1/rollout.grpc.pb.h"

namespace lockstep::learner {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::lockstep::v1;

std::string Preset() {
  const char* p = std::getenv("LOCKSTEP_BENCH_PRESET");
  return p != nullptr ? p : "100m";
}

// The seeded model of the preset, generated once per process.
const std::string& ModelDir() {
  static const std::string* dir = [] {
    auto config = common::PresetConfig(Preset());
    if (!config.ok()) {
      std::cerr << config.status() << std::endl;
      std::exit(1);
    }
    auto* d = new std::string((fs::temp_directory_path() /
                               absl::StrCat("lockstep_learner_bench_",
                                            ::getpid(), "_", Preset()))
                                  .string());
    absl::Status s = common::GenerateModel(*config, 1, *d);
    if (!s.ok()) {
      std::cerr << s << std::endl;
      std::exit(1);
    }
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(*dir, ec);
    });
    return d;
  }();
  return *dir;
}

// `groups` x `group_size` trajectories of prompt_len + completion_len tokens.
std::vector<Trajectory> Batch(int64_t vocab, int groups, int group_size,
                              int prompt_len, int completion_len) {
  std::mt19937_64 rng(7);
  std::vector<Trajectory> out;
  for (int g = 0; g < groups; ++g) {
    std::vector<int32_t> prompt(prompt_len);
    for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % vocab);
    for (int i = 0; i < group_size; ++i) {
      Trajectory t;
      t.prompt_tokens = prompt;
      t.completion_tokens.resize(completion_len);
      for (int32_t& id : t.completion_tokens) {
        id = static_cast<int32_t>(rng() % vocab);
      }
      // Behaviour logprobs near the model's (uniform-ish at init): the
      // ratio stays near 1 as in real on-policy training.
      t.rollout_logprobs.assign(completion_len,
                                -static_cast<float>(std::log(vocab)));
      t.reward = static_cast<float>(rng() % 100) / 100.0f;
      t.group_id = absl::StrCat("g", g);
      out.push_back(std::move(t));
    }
  }
  return out;
}

void BM_TrainStep(benchmark::State& state, common::KernelMode mode) {
  TrainerOptions o;
  o.model_dir = ModelDir();
  o.mode = mode;
  o.micro_batch_size = 4;
  auto trainer = Trainer::Create(o);
  if (!trainer.ok()) {
    state.SkipWithError(std::string(trainer.status().message()).c_str());
    return;
  }
  const int prompt_len = 64, completion_len = 64;
  const std::vector<Trajectory> batch =
      Batch((*trainer)->config().vocab_size, 2, 4, prompt_len, completion_len);
  int64_t tokens = 0;
  for (auto _ : state) {
    auto r = (*trainer)->Step(batch);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    tokens += static_cast<int64_t>(batch.size()) * (prompt_len + completion_len);
  }
  state.SetLabel(absl::StrCat(Preset(), " ", o.mode == common::KernelMode::kInvariant
                                              ? "invariant"
                                              : "standard"));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
  state.counters["params_M"] =
      static_cast<double>((*trainer)->config().NumParameters()) / 1e6;
}
BENCHMARK_CAPTURE(BM_TrainStep, invariant, common::KernelMode::kInvariant)
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(3);
BENCHMARK_CAPTURE(BM_TrainStep, standard, common::KernelMode::kStandard)
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(3);

// Receives UpdateWeights like a rollout (stage + verify), then discards.
// Parts of a parallel update (stream_count > 1) are assembled as the
// rollout does (common::WeightAssembly): every part answers once all are in.
class Receiver final : public v1::RolloutService::Service {
 public:
  explicit Receiver(common::ModelConfig config)
      : config_(std::move(config)), assembly_(common::WeightAssembly::Options{}) {}
  grpc::Status UpdateWeights(grpc::ServerContext* ctx,
                             grpc::ServerReader<v1::WeightUpdate>* reader,
                             v1::UpdateWeightsResponse* resp) override {
    v1::WeightUpdate m;
    bool pending = reader->Read(&m);
    if (pending && m.has_header() && m.header().stream_count() > 1) {
      absl::StatusOr<v1::UpdateWeightsResponse> r = assembly_.ReceivePart(
          config_, m,
          [reader](v1::WeightUpdate* next) -> absl::StatusOr<bool> { return reader->Read(next); },
          [](const v1::WeightUpdateHeader& h) {
            return absl::StatusOr<common::AssemblyCommit>(
                [v = h.target_version()](common::TensorMap, const common::AssembledWeights& info) {
                  v1::UpdateWeightsResponse r;
                  r.set_weight_version(v);
                  r.set_bytes(info.bytes);
                  return absl::StatusOr<v1::UpdateWeightsResponse>(r);
                });
          },
          [ctx] { return ctx->IsCancelled(); }, absl::InfiniteFuture());
      if (!r.ok()) {
        return grpc::Status(grpc::StatusCode::ABORTED, std::string(r.status().message()));
      }
      *resp = *r;
      return grpc::Status::OK;
    }
    common::WeightStager stager(config_);
    absl::Status s;
    while (pending || reader->Read(&m)) {
      pending = false;
      if (s.ok()) s = stager.Add(m);
    }
    absl::StatusOr<common::TensorMap> tensors = s.ok() ? stager.Finish() : s;
    if (!tensors.ok()) {
      return grpc::Status(grpc::StatusCode::ABORTED, std::string(tensors.status().message()));
    }
    resp->set_weight_version(stager.target_version());
    resp->set_bytes(stager.bytes_received());
    return grpc::Status::OK;
  }

 private:
  common::ModelConfig config_;
  common::WeightAssembly assembly_;
};

// A Receiver on a loopback port, shut down with the object.
struct ReceiverServer {
  explicit ReceiverServer(common::ModelConfig config) : receiver(std::move(config)) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.SetMaxReceiveMessageSize(16 << 20);
    b.RegisterService(&receiver);
    server = b.BuildAndStart();
  }
  ~ReceiverServer() { server->Shutdown(); }

  Receiver receiver;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

void BM_WeightPush(benchmark::State& state) {
  TrainerOptions o;
  o.model_dir = ModelDir();
  auto trainer = Trainer::Create(o);
  if (!trainer.ok()) {
    state.SkipWithError(std::string(trainer.status().message()).c_str());
    return;
  }
  ReceiverServer receiving((*trainer)->config());
  const int port = receiving.port;
  auto client = ConnectRollout(absl::StrCat("127.0.0.1:", port));
  if (!client.ok()) {
    state.SkipWithError(std::string(client.status().message()).c_str());
    return;
  }
  PushOptions po;
  po.chunk_bytes = static_cast<size_t>(state.range(0)) << 10;
  po.streams = static_cast<int>(state.range(1));
  const auto weights = (*trainer)->compute_weights();
  uint64_t version = 1;
  double bytes = 0;
  for (auto _ : state) {
    PushResult r = PushWeights(**client, *weights, version++, "bench", po);
    if (!r.status.ok()) {
      state.SkipWithError(std::string(r.status.message()).c_str());
      break;
    }
    bytes += static_cast<double>(r.bytes);
  }
  state.SetLabel(absl::StrCat(Preset(), " chunk ", state.range(0), " KiB, ", state.range(1),
                              " streams"));
  state.counters["MB/s"] =
      benchmark::Counter(bytes / 1e6, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_WeightPush)
    ->Args({1024, 1})
    ->Args({4096, 1})
    ->Args({4096, 4})
    ->ArgNames({"chunk_KiB", "streams"})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->MinTime(2.0);

// The parts of BM_WeightPush/streams sent directly (PlanWeightStream +
// StreamWeightPart, one thread each) over one channel (separate = 0) or one
// channel per part (separate = 1): which transport the parts want.
void BM_WeightPushChannels(benchmark::State& state) {
  TrainerOptions o;
  o.model_dir = ModelDir();
  auto trainer = Trainer::Create(o);
  if (!trainer.ok()) {
    state.SkipWithError(std::string(trainer.status().message()).c_str());
    return;
  }
  ReceiverServer receiving((*trainer)->config());
  const int port = receiving.port;
  const int n = static_cast<int>(state.range(0));
  const bool separate = state.range(1) != 0;
  std::vector<std::shared_ptr<client::RolloutClient>> clients;
  for (int p = 0; p < (separate ? n : 1); ++p) {
    auto client = ConnectRollout(absl::StrCat("127.0.0.1:", port));
    if (!client.ok()) {
      state.SkipWithError(std::string(client.status().message()).c_str());
      return;
    }
    clients.push_back(*client);
  }
  const auto weights = (*trainer)->compute_weights();
  const std::vector<common::WireTensor> wire = common::ToWireTensors(*weights);
  common::WeightStreamOptions so;
  so.chunk_bytes = size_t{4} << 20;
  uint64_t version = 1;
  double bytes = 0;
  for (auto _ : state) {
    auto plan = common::PlanWeightStream(wire, version++, so);
    std::vector<absl::StatusOr<v1::UpdateWeightsResponse>> parts(n);
    std::vector<std::thread> threads;
    for (int p = 0; p < n; ++p) {
      threads.emplace_back([&, p] {
        client::RolloutClient& c = *clients[separate ? p : 0];
        parts[p] = c.UpdateWeights([&, p](const client::WeightSink& sink) {
          return common::StreamWeightPart(wire, *plan, p, n, sink);
        });
      });
    }
    for (std::thread& t : threads) t.join();
    for (const auto& r : parts) {
      if (!r.ok()) {
        state.SkipWithError(std::string(r.status().message()).c_str());
        return;
      }
    }
    bytes += static_cast<double>(parts[0]->bytes());
  }
  state.SetLabel(absl::StrCat(Preset(), " chunk 4096 KiB, ", n, " streams on ",
                              separate ? n : 1, " channel(s)"));
  state.counters["MB/s"] = benchmark::Counter(bytes / 1e6, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_WeightPushChannels)
    ->Args({4, 0})
    ->Args({4, 1})
    ->ArgNames({"streams", "separate"})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->MinTime(2.0);

}  // namespace
}  // namespace lockstep::learner

BENCHMARK_MAIN();
