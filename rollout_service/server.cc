#include "rollout_service/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "common/weight_stream.h"
#include "lockstep/v1/rollout.grpc.pb.h"

namespace lockstep::rollout {

// ---------------------------------------------------------------------------
// Metrics (DESIGN.md §5 plus the self-check counters).

class RolloutMetrics : public EngineObserver {
 public:
  RolloutMetrics(std::shared_ptr<prometheus::Registry> registry,
                 const common::BuildInfo& info)
      : registry_(std::move(registry)),
        requests_(prometheus::BuildCounter()
                      .Name("lockstep_rollout_requests_total")
                      .Help("RPCs handled, by method and gRPC status code")
                      .Register(*registry_)),
        generated_tokens_(prometheus::BuildCounter()
                              .Name("lockstep_rollout_generated_tokens_total")
                              .Help("Tokens sampled")
                              .Register(*registry_)
                              .Add({})),
        prompt_tokens_(prometheus::BuildCounter()
                           .Name("lockstep_rollout_prompt_tokens_total")
                           .Help("Prompt tokens of admitted Generate requests")
                           .Register(*registry_)
                           .Add({})),
        preemptions_(prometheus::BuildCounter()
                         .Name("lockstep_rollout_preemptions_total")
                         .Help("Samples preempted (KV freed, recomputed later)")
                         .Register(*registry_)
                         .Add({})),
        batch_size_(prometheus::BuildHistogram()
                        .Name("lockstep_rollout_batch_size")
                        .Help("Sequences in one engine step's batch")
                        .Register(*registry_)
                        .Add({}, common::ExponentialBuckets(1, 2, 11))),
        batch_tokens_(prometheus::BuildHistogram()
                          .Name("lockstep_rollout_batch_tokens")
                          .Help("Tokens computed in one engine step")
                          .Register(*registry_)
                          .Add({}, common::ExponentialBuckets(1, 2, 14))),
        step_duration_(
            prometheus::BuildHistogram()
                .Name("lockstep_rollout_step_duration_seconds")
                .Help("Duration of one engine step (forward and sampling)")
                .Register(*registry_)
                .Add({}, common::LatencyBuckets())),
        ttft_(
            prometheus::BuildHistogram()
                .Name("lockstep_rollout_time_to_first_token_seconds")
                .Help("Time from a request's arrival to a sample's first token")
                .Register(*registry_)
                .Add({}, common::LatencyBuckets())),
        itl_(prometheus::BuildHistogram()
                 .Name("lockstep_rollout_inter_token_latency_seconds")
                 .Help("Time between consecutive tokens of a sample")
                 .Register(*registry_)
                 .Add({}, common::LatencyBuckets())),
        request_duration_(
            prometheus::BuildHistogram()
                .Name("lockstep_rollout_request_duration_seconds")
                .Help("Duration of Generate and GenerateStream calls")
                .Register(*registry_)
                .Add({}, common::LatencyBuckets())),
        kv_usage_(prometheus::BuildGauge()
                      .Name("lockstep_rollout_kv_cache_usage_ratio")
                      .Help("Fraction of KV-cache pages in use")
                      .Register(*registry_)
                      .Add({})),
        queue_depth_(prometheus::BuildGauge()
                         .Name("lockstep_rollout_queue_depth")
                         .Help("Samples waiting for admission")
                         .Register(*registry_)
                         .Add({})),
        running_(prometheus::BuildGauge()
                     .Name("lockstep_rollout_running_sequences")
                     .Help("Sequences holding KV-cache pages")
                     .Register(*registry_)
                     .Add({})),
        weight_update_(
            prometheus::BuildHistogram()
                .Name("lockstep_weight_update_duration_seconds")
                .Help("Weight updates: header arrival to swap")
                .Register(*registry_)
                .Add({{"role", "rollout"}}, common::LatencyBuckets())),
        selfcheck_sequences_(
            prometheus::BuildCounter()
                .Name("lockstep_rollout_selfcheck_sequences_total")
                .Help("Finished samples re-scored alone by the self-check")
                .Register(*registry_)
                .Add({})),
        selfcheck_mismatch_(
            prometheus::BuildCounter()
                .Name("lockstep_rollout_selfcheck_mismatch_total")
                .Help("Self-checked samples whose re-scored logprobs differ "
                      "bitwise from the returned ones")
                .Register(*registry_)
                .Add({})),
        selfcheck_tokens_(prometheus::BuildCounter()
                              .Name("lockstep_rollout_selfcheck_tokens_total")
                              .Help("Tokens compared by the self-check")
                              .Register(*registry_)
                              .Add({})),
        selfcheck_mismatched_tokens_(
            prometheus::BuildCounter()
                .Name("lockstep_rollout_selfcheck_mismatched_tokens_total")
                .Help("Tokens whose re-scored logprob differs bitwise")
                .Register(*registry_)
                .Add({})),
        weight_version_(common::RegisterWeightVersion(*registry_, "rollout")) {
    common::RegisterBuildInfo(*registry_, info);
  }

  void OnStep(const StepStats& s) override {
    batch_size_.Observe(static_cast<double>(s.sequences));
    batch_tokens_.Observe(static_cast<double>(s.tokens));
    step_duration_.Observe(absl::ToDoubleSeconds(s.duration));
    generated_tokens_.Increment(static_cast<double>(s.sampled));
    if (s.preempted > 0)
      preemptions_.Increment(static_cast<double>(s.preempted));
    kv_usage_.Set(s.kv_usage);
    queue_depth_.Set(static_cast<double>(s.waiting));
    running_.Set(static_cast<double>(s.running));
  }

  void OnSelfCheck(int64_t tokens, int64_t mismatched) override {
    selfcheck_sequences_.Increment();
    selfcheck_tokens_.Increment(static_cast<double>(tokens));
    if (mismatched > 0) {
      selfcheck_mismatch_.Increment();
      selfcheck_mismatched_tokens_.Increment(static_cast<double>(mismatched));
    }
  }

  void OnWeightSwap(const SwapResult& r) override {
    weight_version_.Set(static_cast<double>(r.version));
    if (r.preempted > 0)
      preemptions_.Increment(static_cast<double>(r.preempted));
  }

  void RecordRequest(const char* method, absl::StatusCode code) {
    requests_
        .Add({{"method", method}, {"code", absl::StatusCodeToString(code)}})
        .Increment();
  }

  void SetWeightVersion(uint64_t v) {
    weight_version_.Set(static_cast<double>(v));
  }

  prometheus::Counter& prompt_tokens() { return prompt_tokens_; }
  prometheus::Histogram& ttft() { return ttft_; }
  prometheus::Histogram& itl() { return itl_; }
  prometheus::Histogram& request_duration() { return request_duration_; }
  prometheus::Histogram& weight_update() { return weight_update_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& preemptions_;
  prometheus::Histogram& batch_size_;
  prometheus::Histogram& batch_tokens_;
  prometheus::Histogram& step_duration_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& request_duration_;
  prometheus::Gauge& kv_usage_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& running_;
  prometheus::Histogram& weight_update_;
  prometheus::Counter& selfcheck_sequences_;
  prometheus::Counter& selfcheck_mismatch_;
  prometheus::Counter& selfcheck_tokens_;
  prometheus::Counter& selfcheck_mismatched_tokens_;
  prometheus::Gauge& weight_version_;
};

namespace {

absl::Time ToAbslDeadline(std::chrono::system_clock::time_point tp) {
  if (tp == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(tp);
}

// Seeds for requests that set none: distinct per call, reported back.
uint64_t DrawSeed() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return rng();
}

// `max_samples` bounds prompts x n before anything is allocated per sample.
absl::StatusOr<GenerateJob> ToJob(const v1::GenerateRequest& req,
                                  absl::Time deadline, int64_t max_samples) {
  GenerateJob job;
  const v1::SamplingParams& sp = req.sampling();
  const int64_t n = req.n() == 0 ? 1 : req.n();
  const int64_t samples = n * req.prompts_size();
  if (samples > max_samples) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request has ", samples, " samples (",
                     req.prompts_size(), " prompts x n = ", n, "); at most ",
                     max_samples, " may wait for admission"));
  }
  job.sampling.temperature = sp.has_temperature() ? sp.temperature() : 1.0f;
  job.sampling.top_k = sp.top_k();
  job.sampling.top_p = sp.has_top_p() ? sp.top_p() : 1.0f;
  job.sampling.max_tokens = sp.max_tokens();
  job.sampling.stop_token_ids.assign(sp.stop_token_ids().begin(),
                                     sp.stop_token_ids().end());
  job.sampling.ignore_eos = sp.ignore_eos();
  if (sp.top_logprobs() > static_cast<uint32_t>(kMaxTopLogprobs)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ",
                     sp.top_logprobs()));
  }
  job.sampling.top_logprobs = static_cast<int>(sp.top_logprobs());
  job.deadline = deadline;
  const uint64_t base = sp.has_seed() ? sp.seed() : DrawSeed();
  job.prompts.resize(req.prompts_size());
  for (int i = 0; i < req.prompts_size(); ++i) {
    const v1::Prompt& p = req.prompts(i);
    PromptJob& pj = job.prompts[i];
    pj.prompt.assign(p.token_ids().begin(), p.token_ids().end());
    const uint64_t seed = p.has_seed() ? p.seed()
                                       : base + static_cast<uint64_t>(i) *
                                                    static_cast<uint64_t>(n);
    pj.seeds.resize(n);
    for (int64_t j = 0; j < n; ++j)
      pj.seeds[j] = seed + static_cast<uint64_t>(j);
  }
  return job;
}

void AppendTop(const TopList& top, v1::TopLogprobs* out) {
  for (const auto& [id, lp] : top) {
    v1::TokenLogprob* e = out->add_entries();
    e->set_token_id(id);
    e->set_logprob(lp);
  }
}

std::string JoinHostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

}  // namespace

// ---------------------------------------------------------------------------
// The gRPC service.

class RolloutServiceImpl final : public v1::RolloutService::Service {
 public:
  RolloutServiceImpl(Engine* engine, RolloutMetrics* metrics,
                     const ServerOptions& options)
      : engine_(engine), metrics_(metrics), options_(options) {}

  void SetDraining() { draining_.store(true); }

  grpc::Status Generate(grpc::ServerContext* ctx,
                        const v1::GenerateRequest* req,
                        v1::GenerateResponse* resp) override {
    return Record("Generate", DoGenerate(ctx, req, resp, nullptr));
  }

  grpc::Status GenerateStream(
      grpc::ServerContext* ctx, const v1::GenerateRequest* req,
      grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override {
    return Record("GenerateStream", DoGenerate(ctx, req, nullptr, writer));
  }

  grpc::Status ComputeLogprobs(grpc::ServerContext* ctx,
                               const v1::ComputeLogprobsRequest* req,
                               v1::ComputeLogprobsResponse* resp) override {
    return Record("ComputeLogprobs", DoComputeLogprobs(ctx, *req, resp));
  }

  grpc::Status UpdateWeights(grpc::ServerContext* ctx,
                             grpc::ServerReader<v1::WeightUpdate>* reader,
                             v1::UpdateWeightsResponse* resp) override {
    return Record("UpdateWeights", DoUpdateWeights(ctx, reader, resp));
  }

  grpc::Status GetModelInfo(grpc::ServerContext* ctx,
                            const v1::GetModelInfoRequest*,
                            v1::ModelInfo* resp) override {
    return Record("GetModelInfo", DoGetModelInfo(ctx, resp));
  }

 private:
  grpc::Status Record(const char* method, const absl::Status& status) {
    metrics_->RecordRequest(method, status.code());
    return common::ToGrpcStatus(status);
  }

  // (The bearer token, when configured, was checked by gRPC's auth filter
  // before the call got here.)
  absl::Status CheckCall(grpc::ServerContext* ctx) const {
    if (draining_.load()) {
      return absl::UnavailableError("the rollout server is draining");
    }
    return absl::OkStatus();
  }

  absl::Status DoGenerate(
      grpc::ServerContext* ctx, const v1::GenerateRequest* req,
      v1::GenerateResponse* resp,
      grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    LOCKSTEP_ASSIGN_OR_RETURN(GenerateJob job,
                              ToJob(*req, ToAbslDeadline(ctx->deadline()),
                                    engine_->options().max_queue));
    const int n = req->n() == 0 ? 1 : static_cast<int>(req->n());
    struct SampleInfo {
      uint32_t prompt_index;
      uint32_t sample_index;
      uint64_t seed;
      uint32_t prompt_tokens;
      absl::Time last;
      bool started = false;
    };
    std::vector<SampleInfo> info;
    int64_t prompt_tokens = 0;
    for (size_t i = 0; i < job.prompts.size(); ++i) {
      prompt_tokens += job.prompts[i].prompt.size();
      for (int j = 0; j < n; ++j) {
        info.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(j),
                        job.prompts[i].seeds[j],
                        static_cast<uint32_t>(job.prompts[i].prompt.size())});
      }
    }
    LOCKSTEP_ASSIGN_OR_RETURN(std::shared_ptr<RequestHandle> handle,
                              engine_->Submit(std::move(job)));
    metrics_->prompt_tokens().Increment(static_cast<double>(prompt_tokens));
    const absl::Time start = handle->submit_time();

    if (resp != nullptr) {
      resp->set_request_id(req->request_id());
      for (const SampleInfo& s : info) {
        v1::Completion* c = resp->add_completions();
        c->set_prompt_index(s.prompt_index);
        c->set_sample_index(s.sample_index);
        c->set_seed(s.seed);
        c->set_prompt_tokens(s.prompt_tokens);
      }
    }

    bool client_gone = false;
    std::vector<SampleUpdate> updates;
    for (;;) {
      updates.clear();
      const bool done = handle->Wait(absl::Milliseconds(50), &updates);
      for (SampleUpdate& u : updates) {
        SampleInfo& s = info.at(u.sample);
        // Latency metrics: first token of a sample, then the gaps.
        if (!u.tokens.empty()) {
          if (!s.started) {
            metrics_->ttft().Observe(absl::ToDoubleSeconds(u.time - start));
          } else {
            const double gap = absl::ToDoubleSeconds(u.time - s.last) /
                               static_cast<double>(u.tokens.size());
            for (size_t k = 0; k < u.tokens.size(); ++k)
              metrics_->itl().Observe(gap);
          }
          s.started = true;
          s.last = u.time;
        }
        if (resp != nullptr) {
          v1::Completion* c = resp->mutable_completions(u.sample);
          for (size_t k = 0; k < u.tokens.size(); ++k) {
            c->add_token_ids(u.tokens[k]);
            c->add_logprobs(u.logprobs[k]);
            c->add_token_weight_versions(u.versions[k]);
            if (!u.top.empty()) AppendTop(u.top[k], c->add_top_logprobs());
          }
          if (!u.versions.empty()) c->set_weight_version(u.versions.back());
          c->set_preemptions(u.preemptions);
          if (u.finish != FinishReason::kNone) {
            c->set_finish_reason(static_cast<v1::FinishReason>(u.finish));
          }
        } else if (!client_gone) {
          v1::GenerateStreamResponse m;
          m.set_prompt_index(s.prompt_index);
          m.set_sample_index(s.sample_index);
          m.set_seed(s.seed);
          for (size_t k = 0; k < u.tokens.size(); ++k) {
            m.add_token_ids(u.tokens[k]);
            m.add_logprobs(u.logprobs[k]);
            m.add_token_weight_versions(u.versions[k]);
            if (!u.top.empty()) AppendTop(u.top[k], m.add_top_logprobs());
          }
          m.set_finish_reason(static_cast<v1::FinishReason>(u.finish));
          if (!writer->Write(m)) {
            client_gone = true;
            handle->Cancel(absl::CancelledError("the client went away"));
          }
        }
      }
      if (done) break;
      if (!client_gone && ctx->IsCancelled()) {
        client_gone = true;
        handle->Cancel(absl::Now() >= ToAbslDeadline(ctx->deadline())
                           ? absl::DeadlineExceededError("deadline exceeded")
                           : absl::CancelledError("the client cancelled"));
      }
    }
    metrics_->request_duration().Observe(
        absl::ToDoubleSeconds(absl::Now() - start));
    absl::Status status = handle->status();
    if (status.ok() && client_gone)
      status = absl::CancelledError("the client went away");
    if (!status.ok() && resp != nullptr) resp->Clear();
    return status;
  }

  absl::Status DoComputeLogprobs(grpc::ServerContext* ctx,
                                 const v1::ComputeLogprobsRequest& req,
                                 v1::ComputeLogprobsResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    if (req.top_logprobs() > static_cast<uint32_t>(kMaxTopLogprobs)) {
      return absl::InvalidArgumentError(
          absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs,
                       "], got ", req.top_logprobs()));
    }
    ScoreRequest sr;
    sr.top_n = static_cast<int>(req.top_logprobs());
    if (req.has_weight_version()) sr.expected_version = req.weight_version();
    for (const v1::ScoredSequence& s : req.sequences()) {
      sr.sequences.emplace_back(s.token_ids().begin(), s.token_ids().end());
      sr.prompt_lens.push_back(s.prompt_len());
    }
    LOCKSTEP_ASSIGN_OR_RETURN(ScoreResult result, engine_->Score(sr));
    resp->set_weight_version(result.version);
    for (size_t i = 0; i < result.logprobs.size(); ++i) {
      v1::SequenceLogprobs* out = resp->add_results();
      for (float lp : result.logprobs[i]) out->add_logprobs(lp);
      if (!result.top.empty()) {
        for (const TopList& t : result.top[i])
          AppendTop(t, out->add_top_logprobs());
      }
    }
    return absl::OkStatus();
  }

  absl::Status DoUpdateWeights(grpc::ServerContext* ctx,
                               grpc::ServerReader<v1::WeightUpdate>* reader,
                               v1::UpdateWeightsResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    std::unique_lock<std::mutex> lock(update_mu_, std::try_to_lock);
    if (!lock.owns_lock()) {
      return absl::AbortedError("another weight update is in progress");
    }
    common::WeightStager stager(engine_->config());
    v1::WeightUpdate message;
    absl::Time start = absl::InfinitePast();
    while (reader->Read(&message)) {
      const bool was_header = stager.has_header();
      LOCKSTEP_RETURN_IF_ERROR(stager.Add(message));
      if (!was_header && stager.has_header()) {
        start = absl::Now();
        const uint64_t current = engine_->weight_version();
        if (stager.target_version() <= current) {
          return absl::FailedPreconditionError(
              absl::StrCat("weight update to version ", stager.target_version(),
                           " would not advance the served version ", current,
                           " (versions must increase)"));
        }
      }
    }
    if (ctx->IsCancelled()) return absl::CancelledError("the client cancelled");
    LOCKSTEP_ASSIGN_OR_RETURN(common::TensorMap tensors, stager.Finish());
    const uint64_t tensor_count = tensors.size();
    std::shared_ptr<const common::Model> current = engine_->model();
    // Building the new model here (off the engine thread) lets generation
    // continue while the shadow copy is prepared.
    absl::StatusOr<std::shared_ptr<const common::Model>> model =
        common::Model::Create(engine_->config(), tensors, current->options());
    tensors.clear();
    if (!model.ok()) {
      return absl::AbortedError(absl::StrCat("the model rejected the weights: ",
                                             model.status().message()));
    }
    current.reset();
    LOCKSTEP_ASSIGN_OR_RETURN(SwapResult swap,
                              engine_->SwapWeights(std::move(model).value(),
                                                   stager.target_version()));
    const absl::Duration total = absl::Now() - start;
    metrics_->weight_update().Observe(absl::ToDoubleSeconds(total));
    resp->set_weight_version(swap.version);
    resp->set_previous_version(swap.previous_version);
    resp->set_tensors(tensor_count);
    resp->set_bytes(stager.bytes_received());
    resp->set_duration_seconds(absl::ToDoubleSeconds(total));
    resp->set_swap_seconds(absl::ToDoubleSeconds(swap.pause));
    resp->set_preempted_sequences(swap.preempted);
    std::fprintf(stderr,
                 "rollout: weights v%llu -> v%llu (%llu tensors, %llu bytes, "
                 "%.3f s, source '%s')\n",
                 static_cast<unsigned long long>(swap.previous_version),
                 static_cast<unsigned long long>(swap.version),
                 static_cast<unsigned long long>(tensor_count),
                 static_cast<unsigned long long>(stager.bytes_received()),
                 absl::ToDoubleSeconds(total),
                 stager.header().source().c_str());
    return absl::OkStatus();
  }

  absl::Status DoGetModelInfo(grpc::ServerContext* ctx, v1::ModelInfo* resp) {
    std::shared_ptr<const common::Model> model = engine_->model();
    *resp->mutable_config() = common::ModelConfigToProto(engine_->config());
    resp->set_weight_version(engine_->weight_version());
    resp->set_kernel_mode(model->options().mode ==
                                  common::KernelMode::kInvariant
                              ? v1::KERNEL_MODE_INVARIANT
                              : v1::KERNEL_MODE_STANDARD);
    resp->set_device(model->options().device == kernels::Device::kCuda
                         ? v1::DEVICE_CUDA
                         : v1::DEVICE_CPU);
    resp->set_tp_size(model->options().tp_size);
    resp->set_page_size(engine_->options().page_size);
    resp->set_kv_cache_pages(engine_->num_pages());
    resp->set_max_batch_tokens(engine_->options().max_batch_tokens);
    resp->set_max_queue(engine_->options().max_queue);
    resp->set_server_version(common::kLockstepVersion);
    resp->set_max_context_tokens(engine_->max_sequence_tokens());
    return absl::OkStatus();
  }

  Engine* const engine_;
  RolloutMetrics* const metrics_;
  const ServerOptions options_;
  std::atomic<bool> draining_{false};
  std::mutex update_mu_;  // one weight update at a time
};

// ---------------------------------------------------------------------------
// RolloutServer

absl::StatusOr<std::unique_ptr<RolloutServer>> RolloutServer::Start(
    std::shared_ptr<const common::Model> model,
    const EngineOptions& engine_options, const ServerOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("no model");
  std::unique_ptr<RolloutServer> s(new RolloutServer());
  s->options_ = options;

  auto registry = std::make_shared<prometheus::Registry>();
  common::BuildInfo info;
  info.role = "rollout";
  info.kernels = std::string(common::KernelModeName(model->options().mode));
  info.device = options.device_name;
  s->metrics_ = std::make_unique<RolloutMetrics>(registry, info);
  LOCKSTEP_ASSIGN_OR_RETURN(s->metrics_server_,
                            common::MetricsServer::Start(
                                options.host, options.metrics_port, registry));
  LOCKSTEP_ASSIGN_OR_RETURN(
      s->engine_,
      Engine::Create(std::move(model), engine_options, s->metrics_.get()));
  s->metrics_->SetWeightVersion(s->engine_->weight_version());
  s->service_ = std::make_unique<RolloutServiceImpl>(
      s->engine_.get(), s->metrics_.get(), options);

  LOCKSTEP_ASSIGN_OR_RETURN(common::ServerSecurity security,
                            common::MakeServerSecurity(options.security));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(JoinHostPort(options.host, options.port),
                           security.credentials(), &s->port_);
  security.ApplyToBuilder(&builder);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve gRPC on ", JoinHostPort(options.host, options.port)));
  }
  grpc::HealthCheckServiceInterface* health =
      s->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(kRolloutServiceName, true);
    health->SetServingStatus(true);
  }
  return s;
}

RolloutServer::~RolloutServer() {
  if (server_ != nullptr) Drain(absl::ZeroDuration());
  // The engine stops (and fails what is left) before the metrics it reports
  // to go away.
  engine_.reset();
}

std::string RolloutServer::grpc_address() const {
  return JoinHostPort(options_.host, port_);
}

std::string RolloutServer::metrics_address() const {
  return metrics_server_->address();
}

int RolloutServer::metrics_port() const { return metrics_server_->port(); }

void RolloutServer::Drain(absl::Duration grace, absl::Duration announce) {
  if (drained_) return;
  drained_ = true;
  // Refuse new work before health reports NOT_SERVING, so that a client that
  // saw NOT_SERVING never gets a request admitted.
  service_->SetDraining();
  engine_->StopAdmitting(
      absl::UnavailableError("the rollout server is draining"));
  if (grpc::HealthCheckServiceInterface* health =
          server_->GetHealthCheckService()) {
    health->SetServingStatus(kRolloutServiceName, false);
    health->SetServingStatus(false);
  }
  const absl::Time not_serving_since = absl::Now();
  if (!engine_->WaitIdle(grace)) {
    engine_->CancelAll(absl::UnavailableError(
        "the rollout server shut down before the request finished"));
    engine_->WaitIdle(absl::Seconds(10));
  }
  // Health keeps answering NOT_SERVING for at least `announce`, so that
  // probes and load balancers see the drain before the port closes.
  absl::SleepFor(announce - (absl::Now() - not_serving_since));
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_->Wait();
}

}  // namespace lockstep::rollout
