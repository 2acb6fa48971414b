// Helpers of the rollout integration tests (tests/integration/rollout_*):
// model directories, starting rollout_service, gRPC stubs, raw calls to the
// health and reflection services, and /metrics scrapes. Header-only so that
// the integration binaries need no extra library.
#ifndef LOCKSTEP_TESTS_ROLLOUT_SERVICE_INTEGRATION_UTIL_H_
#define LOCKSTEP_TESTS_ROLLOUT_SERVICE_INTEGRATION_UTIL_H_

#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/formats/model_config.h"
#include "common/formats/model_generator.h"
#include "common/formats/safetensors.h"
#include "common/wire/weight_stream.h"
#include "gtest/gtest.h"
#include "tests/testing/loopback_http.h"
#include "lockstep/v1/rollout.grpc.pb.h"
#include "tests/testing/service_process.h"

namespace lockstep::rollout::itest {

inline std::string RolloutBinary() {
#ifdef LOCKSTEP_ROLLOUT_SERVICE_BINARY
  return LOCKSTEP_ROLLOUT_SERVICE_BINARY;
#else
  return lockstep::testing::BuildDir() + "/rollout_service/rollout_service";
#endif
}

// A temporary directory removed at destruction.
using TempDir = ::lockstep::testing::ScopedTempDir;

// Writes a seeded random checkpoint of `config` into `dir`.
inline void MakeModel(const common::ModelConfig& config, uint64_t seed,
                      const std::string& dir) {
  absl::Status s = common::GenerateModel(config, seed, dir);
  ASSERT_TRUE(s.ok()) << s;
}

// The tensors of dir/model.safetensors.
inline common::TensorMap LoadTensors(const std::string& dir) {
  common::TensorMap out;
  auto file = common::SafetensorsFile::Open(dir + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const common::TensorInfo& t : (*file)->tensors()) {
    common::HostTensor h;
    h.dtype = t.dtype;
    h.shape = t.shape;
    h.data.assign(t.data, t.data + t.nbytes);
    out.emplace(t.name, std::move(h));
  }
  return out;
}

// Starts rollout_service over `model_dir` with extra flags.
inline std::unique_ptr<lockstep::testing::ServiceProcess> StartRollout(
    const std::string& model_dir, std::vector<std::string> flags = {}) {
  lockstep::testing::ServiceProcessOptions o;
  o.binary = RolloutBinary();
  // A small KV cache unless the test asks for another (later flags win).
  o.args = {"--model_dir=" + model_dir, "--kv_cache_bytes=33554432"};
  o.args.insert(o.args.end(), flags.begin(), flags.end());
  auto p = lockstep::testing::ServiceProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(p).value() : nullptr;
}

inline std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

inline std::unique_ptr<v1::RolloutService::Stub> Stub(
    const std::string& address) {
  return v1::RolloutService::NewStub(Channel(address));
}

inline v1::GenerateRequest MakeRequest(const std::vector<int32_t>& prompt,
                                       int n, uint64_t seed, int max_tokens,
                                       float temperature = 1.0f) {
  v1::GenerateRequest req;
  auto* p = req.add_prompts();
  for (int32_t t : prompt) p->add_token_ids(t);
  req.set_n(n);
  req.mutable_sampling()->set_seed(seed);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(temperature);
  req.mutable_sampling()->set_ignore_eos(true);
  return req;
}

inline grpc::Status Generate(v1::RolloutService::Stub& stub,
                             const v1::GenerateRequest& req,
                             v1::GenerateResponse* resp,
                             double timeout_s = 300) {
  grpc::ClientContext ctx;
  ctx.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  return stub.Generate(&ctx, req, resp);
}

inline bool SameBits(const google::protobuf::RepeatedField<float>& a,
                     const google::protobuf::RepeatedField<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

inline bool SameCompletion(const v1::Completion& a, const v1::Completion& b) {
  return std::equal(a.token_ids().begin(), a.token_ids().end(),
                    b.token_ids().begin(), b.token_ids().end()) &&
         SameBits(a.logprobs(), b.logprobs()) &&
         SameBits(a.sampled_logprobs(), b.sampled_logprobs());
}

// HTTP GET http://127.0.0.1:port/path, body only ("" on failure).
inline std::string HttpGet(int port, const std::string& path = "/metrics") {
  return lockstep::testing::HttpGetBody(port, path);
}

// Value of the first sample line of /metrics starting with `series` (e.g.
// "lockstep_rollout_selfcheck_mismatch_total" or a name with labels), or -1.
inline double MetricValue(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    if ((pos == 0 || text[pos - 1] == '\n') &&
        (text[pos + series.size()] == ' ' ||
         text[pos + series.size()] == '{')) {
      const size_t eol = text.find('\n', pos);
      const std::string line = text.substr(pos, eol - pos);
      return std::stod(line.substr(line.rfind(' ') + 1));
    }
    pos += series.size();
  }
  return -1;
}

// Raw protobuf helpers for services whose .proto files are not installed.
inline grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string String(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!b.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// grpc.health.v1.Health/Check for `service`: 1 = SERVING, 2 = NOT_SERVING,
// -1 on RPC error.
inline int HealthStatus(const std::string& address,
                        const std::string& service) {
  auto channel = Channel(address);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  // HealthCheckRequest { string service = 1; }
  std::string req;
  req.push_back(0x0a);
  req.push_back(static_cast<char>(service.size()));
  req += service;
  grpc::ByteBuffer resp;
  grpc::internal::RpcMethod method("/grpc.health.v1.Health/Check",
                                   grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::Status s =
      grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
          channel.get(), method, &ctx, Bytes(req), &resp);
  if (!s.ok()) return -1;
  // HealthCheckResponse { ServingStatus status = 1; } -> 08 <status>
  const std::string r = String(resp);
  return r.size() >= 2 && r[0] == 0x08 ? r[1] : 0;
}

// Service names listed by grpc.reflection.v1alpha (raw response bytes).
inline std::string ReflectionListServices(const std::string& address) {
  auto channel = Channel(address);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::internal::RpcMethod method(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
      rw(grpc::internal::ClientReaderWriterFactory<
          grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel.get(), method,
                                                      &ctx));
  // ServerReflectionRequest { string list_services = 7; } with "".
  rw->Write(Bytes(std::string("\x3a\x00", 2)));
  rw->WritesDone();
  grpc::ByteBuffer resp;
  std::string out;
  if (rw->Read(&resp)) out = String(resp);
  rw->Finish();
  return out;
}

// Streams `tensors` as weight version `version` through UpdateWeights;
// `mutate` may alter the messages first (corrupt a chunk, drop one...).
inline grpc::Status PushWeights(
    v1::RolloutService::Stub& stub, const common::TensorMap& tensors,
    uint64_t version, v1::UpdateWeightsResponse* resp,
    const std::function<void(std::vector<v1::WeightUpdate>&)>& mutate = nullptr,
    size_t chunk_bytes = 64 << 10) {
  common::WeightStreamOptions o;
  o.chunk_bytes = chunk_bytes;
  o.source = "integration test";
  auto msgs = common::SplitWeights(tensors, version, o);
  EXPECT_TRUE(msgs.ok()) << msgs.status();
  if (!msgs.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "split");
  if (mutate) mutate(*msgs);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::seconds(120));
  auto writer = stub.UpdateWeights(&ctx, resp);
  for (const auto& m : *msgs) {
    if (!writer->Write(m)) break;  // the server already answered
  }
  writer->WritesDone();
  return writer->Finish();
}

}  // namespace lockstep::rollout::itest

#endif  // LOCKSTEP_TESTS_ROLLOUT_SERVICE_INTEGRATION_UTIL_H_
