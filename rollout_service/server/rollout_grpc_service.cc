#include "rollout_service/server/rollout_grpc_service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/net/metrics.h"
#include "common/sampling/sampling_proto.h"
#include "common/status/status_macros.h"
#include "common/wire/grpc_status.h"
#include "common/wire/shared_weights.h"
#include "common/wire/weight_assembly.h"
#include "common/wire/weight_stream.h"
#include "kernels/build_id.h"

namespace lockstep::rollout {

namespace {

absl::Time ToAbslDeadline(std::chrono::system_clock::time_point tp) {
  if (tp == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(tp);
}

// A uint32 wire field as an int for the engine's range check (values past
// INT_MAX stay out of range instead of wrapping).
int SaturatedInt(uint32_t v) {
  return static_cast<int>(std::min<uint32_t>(v, std::numeric_limits<int>::max()));
}

// Seeds for requests that set none: distinct per call, reported back.
uint64_t DrawSeed() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return rng();
}

// What the service reports about one sample besides its tokens.
struct SampleInfo {
  uint32_t prompt_index = 0;
  uint32_t sample_index = 0;
  uint64_t seed = 0;  // the request's or the prompt's seed
  uint32_t prompt_tokens = 0;
  const v1::SamplingParams* sampling = nullptr;  // effective, seed filled in
  uint64_t stream_key = 0;
  const v1::Completion* resume = nullptr;  // Prompt.resume, when resuming
  absl::Time last;
  bool started = false;
};

// INVALID_ARGUMENT unless prompt `i`'s resume is a consistent, unfinished
// sample (the engine checks its token ids and lengths).
absl::Status CheckResume(const v1::GenerateRequest& req, int i) {
  const v1::Prompt& p = req.prompts(i);
  const v1::Completion& r = p.resume();
  auto bad = [i](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("prompt ", i, ": resume ", what));
  };
  if (p.has_sampling() || p.has_seed()) {
    return bad("takes its sampling and seed from the completion; the prompt must set neither");
  }
  if (req.n() > 1) return bad(absl::StrCat("continues one sample; n is ", req.n()));
  if (!r.has_sampling()) return bad("has no sampling parameters (Completion.sampling)");
  if (!r.has_stream_key()) return bad("has no stream_key");
  if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED &&
      r.finish_reason() != v1::FINISH_REASON_ABORT) {
    return bad("is a finished sample (finish_reason STOP or LENGTH)");
  }
  const int k = r.token_ids_size();
  if (k == 0) return bad("has no tokens");
  if (r.logprobs_size() != k || r.sampled_logprobs_size() != k ||
      r.token_weight_versions_size() != k ||
      (r.top_logprobs_size() != 0 && r.top_logprobs_size() != k)) {
    return bad(absl::StrCat("has ", k, " tokens but ", r.logprobs_size(), " logprobs, ",
                            r.sampled_logprobs_size(), " sampled_logprobs, ",
                            r.token_weight_versions_size(), " versions and ",
                            r.top_logprobs_size(), " top_logprobs"));
  }
  for (int t = 1; t < k; ++t) {
    if (r.token_weight_versions(t) < r.token_weight_versions(t - 1)) {
      return bad(absl::StrCat("has decreasing token_weight_versions at token ", t));
    }
  }
  return absl::OkStatus();
}

// `max_samples` bounds the samples before anything is allocated per sample.
// Fills `effective` (one message per prompt: the spec with its seed, what
// Completion.sampling reports) and `info` (one per sample, prompt-major).
absl::StatusOr<GenerateJob> ToJob(const v1::GenerateRequest& req,
                                  absl::Time deadline, int64_t max_samples,
                                  int64_t vocab,
                                  std::vector<v1::SamplingParams>* effective,
                                  std::vector<SampleInfo>* info) {
  GenerateJob job;
  int64_t samples = 0;
  for (int i = 0; i < req.prompts_size(); ++i) {
    const v1::Prompt& p = req.prompts(i);
    if (p.has_resume()) {
      LOCKSTEP_RETURN_IF_ERROR(CheckResume(req, i));
      ++samples;
      continue;
    }
    const v1::SamplingParams& sp = p.has_sampling() ? p.sampling() : req.sampling();
    samples += req.n() != 0 ? req.n() : sp.n() != 0 ? sp.n() : 1;
  }
  if (samples > max_samples) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request has ", samples, " samples (", req.prompts_size(),
                     " prompts); at most ", max_samples, " may wait for admission"));
  }
  {
    absl::StatusOr<common::SamplingSpec> spec =
        common::SamplingSpecFromProto(req.sampling(), vocab);
    if (!spec.ok()) return spec.status();
    job.sampling = *std::move(spec);
  }
  job.deadline = deadline;
  const uint64_t base = req.sampling().has_seed() ? req.sampling().seed() : DrawSeed();
  job.prompts.resize(req.prompts_size());
  effective->resize(req.prompts_size());
  for (int i = 0; i < req.prompts_size(); ++i) {
    const v1::Prompt& p = req.prompts(i);
    PromptJob& pj = job.prompts[i];
    pj.prompt.assign(p.token_ids().begin(), p.token_ids().end());
    if (p.has_resume()) {
      // The earlier sample's parameters and stream, continued.
      const v1::Completion& r = p.resume();
      absl::StatusOr<common::SamplingSpec> spec = common::SamplingSpecFromProto(r.sampling(), vocab);
      if (!spec.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt ", i, ": resume.sampling: ", spec.status().message()));
      }
      pj.sampling = *std::move(spec);
      pj.resumed.assign(r.token_ids().begin(), r.token_ids().end());
      pj.seeds = {r.stream_key()};
      (*effective)[i] = r.sampling();
      SampleInfo s;
      s.prompt_index = static_cast<uint32_t>(i);
      s.sample_index = r.sample_index();
      s.seed = r.seed();
      s.prompt_tokens = static_cast<uint32_t>(pj.prompt.size());
      s.stream_key = r.stream_key();
      s.resume = &r;
      info->push_back(s);
      continue;
    }
    const v1::SamplingParams& sp = p.has_sampling() ? p.sampling() : req.sampling();
    if (p.has_sampling()) {
      absl::StatusOr<common::SamplingSpec> spec = common::SamplingSpecFromProto(sp, vocab);
      if (!spec.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt ", i, ": ", spec.status().message()));
      }
      pj.sampling = *std::move(spec);
    }
    // A prompt with a seed of its own keys its streams by (seed, 0, j):
    // the same wherever it sits in a request.
    const bool own_seed = p.has_seed() || (p.has_sampling() && sp.has_seed());
    const uint64_t seed = p.has_seed() ? p.seed() : own_seed ? sp.seed() : base;
    const uint64_t prompt_key = own_seed ? 0 : static_cast<uint64_t>(i);
    const int64_t n = req.n() != 0 ? req.n() : sp.n() != 0 ? sp.n() : 1;
    common::SamplingSpecToProto(pj.sampling.has_value() ? *pj.sampling : job.sampling,
                                seed, &(*effective)[i]);
    pj.seeds.resize(n);
    for (int64_t j = 0; j < n; ++j) {
      pj.seeds[j] = kernels::SampleStreamKey(seed, prompt_key, static_cast<uint64_t>(j));
      SampleInfo s;
      s.prompt_index = static_cast<uint32_t>(i);
      s.sample_index = static_cast<uint32_t>(j);
      s.seed = seed;
      s.prompt_tokens = static_cast<uint32_t>(pj.prompt.size());
      s.stream_key = pj.seeds[j];
      info->push_back(s);
    }
  }
  for (SampleInfo& s : *info) s.sampling = &(*effective)[s.prompt_index];
  return job;
}

// Why a call whose context reports cancellation ended: DEADLINE_EXCEEDED
// when its deadline has passed or is within kDeadlineSlack (gRPC's timer can
// cancel a call a few milliseconds before the deadline as the server's clock
// reads it; a client cancelling that close to its own deadline cannot be
// told apart), else CANCELLED.
constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(100);
absl::Status ClientGone(grpc::ServerContext* ctx) {
  const absl::Time deadline = ToAbslDeadline(ctx->deadline());
  if (deadline != absl::InfiniteFuture() && absl::Now() + kDeadlineSlack >= deadline) {
    return absl::DeadlineExceededError("deadline exceeded");
  }
  return absl::CancelledError("the client cancelled");
}

void AppendTop(const TopList& top, v1::TopLogprobs* out) {
  for (const auto& [id, lp] : top) {
    v1::TokenLogprob* e = out->add_entries();
    e->set_token_id(id);
    e->set_logprob(lp);
  }
}

}  // namespace

class RolloutGrpcServiceImpl final : public RolloutGrpcService {
 public:
  RolloutGrpcServiceImpl(Engine* engine, RolloutMetrics* metrics,
                         absl::Duration weight_assembly_timeout)
      : engine_(engine),
        metrics_(metrics),
        assembly_(common::WeightAssembly::Options{weight_assembly_timeout}) {}

  void SetDraining() override { draining_.store(true); }

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

  grpc::Status GetLoad(grpc::ServerContext* ctx, const v1::GetLoadRequest*,
                       v1::RolloutLoad* resp) override {
    return Record("GetLoad", DoGetLoad(ctx, resp));
  }

  grpc::Status Abort(grpc::ServerContext* ctx, const v1::AbortRequest* req,
                     v1::AbortResponse* resp) override {
    return Record("Abort", DoAbort(ctx, *req, resp));
  }

  grpc::Status Pause(grpc::ServerContext* ctx, const v1::PauseRequest* req,
                     v1::PauseResponse* resp) override {
    return Record("Pause", DoPause(ctx, *req, resp));
  }

  grpc::Status Resume(grpc::ServerContext* ctx, const v1::ResumeRequest*,
                      v1::ResumeResponse* resp) override {
    return Record("Resume", DoResume(ctx, resp));
  }

  grpc::Status Sleep(grpc::ServerContext* ctx, const v1::SleepRequest* req,
                     v1::SleepResponse* resp) override {
    return Record("Sleep", DoSleep(ctx, *req, resp));
  }

  grpc::Status WakeUp(grpc::ServerContext* ctx, const v1::WakeUpRequest*,
                      v1::WakeUpResponse* resp) override {
    return Record("WakeUp", DoWakeUp(ctx, resp));
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
    std::vector<v1::SamplingParams> effective;
    std::vector<SampleInfo> info;
    LOCKSTEP_ASSIGN_OR_RETURN(
        GenerateJob job,
        ToJob(*req, ToAbslDeadline(ctx->deadline()), engine_->options().max_queue,
              engine_->config().vocab_size, &effective, &info));
    int64_t prompt_tokens = 0;
    for (const PromptJob& pj : job.prompts) prompt_tokens += pj.prompt.size();
    LOCKSTEP_ASSIGN_OR_RETURN(std::shared_ptr<RequestHandle> handle,
                              engine_->Submit(std::move(job)));
    // Findable by Abort until this call returns.
    Call call;
    call.request_id = req->request_id();
    call.handle = handle;
    {
      absl::MutexLock lock(&calls_mu_);
      calls_.push_back(&call);
    }
    struct Unregister {
      RolloutGrpcServiceImpl* self;
      Call* call;
      ~Unregister() {
        absl::MutexLock lock(&self->calls_mu_);
        self->calls_.erase(std::find(self->calls_.begin(), self->calls_.end(), call));
      }
    } unregister{this, &call};
    std::vector<bool> finished(info.size(), false);
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
        *c->mutable_sampling() = *s.sampling;
        c->set_stream_key(s.stream_key);
        if (s.resume != nullptr) {
          // The earlier tokens first, as the client sent them.
          const v1::Completion& r = *s.resume;
          c->mutable_token_ids()->CopyFrom(r.token_ids());
          c->mutable_logprobs()->CopyFrom(r.logprobs());
          c->mutable_sampled_logprobs()->CopyFrom(r.sampled_logprobs());
          c->mutable_token_weight_versions()->CopyFrom(r.token_weight_versions());
          c->mutable_top_logprobs()->CopyFrom(r.top_logprobs());
          c->set_weight_version(r.token_weight_versions(r.token_weight_versions_size() - 1));
          c->set_resumed_tokens(static_cast<uint32_t>(r.token_ids_size()));
        }
      }
    }

    bool client_gone = false;
    std::vector<SampleUpdate> updates;
    for (;;) {
      updates.clear();
      const bool done = handle->Wait(absl::Milliseconds(50), &updates);
      for (SampleUpdate& u : updates) {
        SampleInfo& s = info.at(u.sample);
        // (u.sample is the flat prompt-major index, as info is laid out.)
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
            c->add_sampled_logprobs(u.sampled_logprobs[k]);
            c->add_token_weight_versions(u.versions[k]);
            if (!u.top.empty()) AppendTop(u.top[k], c->add_top_logprobs());
          }
          if (!u.versions.empty()) c->set_weight_version(u.versions.back());
          c->set_preemptions(u.preemptions);
          if (u.finish != FinishReason::kNone) {
            c->set_finish_reason(static_cast<v1::FinishReason>(u.finish));
          }
          if (u.finish != FinishReason::kNone) finished[u.sample] = true;
        } else if (!client_gone) {
          if (u.finish != FinishReason::kNone) finished[u.sample] = true;
          v1::GenerateStreamResponse m;
          m.set_prompt_index(s.prompt_index);
          m.set_sample_index(s.sample_index);
          m.set_seed(s.seed);
          m.set_stream_key(s.stream_key);
          for (size_t k = 0; k < u.tokens.size(); ++k) {
            m.add_token_ids(u.tokens[k]);
            m.add_logprobs(u.logprobs[k]);
            m.add_sampled_logprobs(u.sampled_logprobs[k]);
            m.add_token_weight_versions(u.versions[k]);
            if (!u.top.empty()) AppendTop(u.top[k], m.add_top_logprobs());
          }
          m.set_finish_reason(static_cast<v1::FinishReason>(u.finish));
          if (!writer->Write(m)) {
            client_gone = true;
            handle->Cancel(ctx->IsCancelled() ? ClientGone(ctx)
                                              : absl::CancelledError("the client went away"));
          }
        }
      }
      if (done) break;
      if (!client_gone && ctx->IsCancelled()) {
        client_gone = true;
        handle->Cancel(ClientGone(ctx));
      }
    }
    metrics_->request_duration().Observe(
        absl::ToDoubleSeconds(absl::Now() - start));
    absl::Status status = handle->status();
    if (status.ok() && client_gone) {
      status = ctx->IsCancelled() ? ClientGone(ctx) : absl::CancelledError("the client went away");
    }
    if (call.aborted.load() && !client_gone && absl::IsCancelled(status)) {
      // Stopped by Abort: what was generated is the answer, the unfinished
      // samples end with ABORT (a partial rollout).
      for (size_t i = 0; i < info.size(); ++i) {
        if (finished[i]) continue;
        if (resp != nullptr) {
          resp->mutable_completions(static_cast<int>(i))
              ->set_finish_reason(v1::FINISH_REASON_ABORT);
        } else {
          v1::GenerateStreamResponse m;
          m.set_prompt_index(info[i].prompt_index);
          m.set_sample_index(info[i].sample_index);
          m.set_seed(info[i].seed);
          m.set_stream_key(info[i].stream_key);
          m.set_finish_reason(v1::FINISH_REASON_ABORT);
          writer->Write(m);
        }
      }
      return absl::OkStatus();
    }
    if (!status.ok() && resp != nullptr) resp->Clear();
    return status;
  }

  absl::Status DoComputeLogprobs(grpc::ServerContext* ctx,
                                 const v1::ComputeLogprobsRequest& req,
                                 v1::ComputeLogprobsResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    ScoreRequest sr;
    sr.top_n = SaturatedInt(req.top_logprobs());
    if (req.has_weight_version()) sr.expected_version = req.weight_version();
    sr.deadline = ToAbslDeadline(ctx->deadline());
    sr.cancelled = [ctx] { return ctx->IsCancelled(); };
    const int64_t vocab = engine_->config().vocab_size;
    std::optional<common::SamplingSpec> shared;
    if (req.has_sampling()) {
      LOCKSTEP_ASSIGN_OR_RETURN(shared, common::SamplingSpecFromProto(req.sampling(), vocab));
    }
    bool any_sampling = shared.has_value();
    for (const v1::ScoredSequence& s : req.sequences()) {
      sr.sequences.emplace_back(s.token_ids().begin(), s.token_ids().end());
      sr.prompt_lens.push_back(s.prompt_len());
      any_sampling = any_sampling || s.has_sampling();
    }
    if (any_sampling) {
      sr.sampling.resize(req.sequences_size(), shared);
      for (int i = 0; i < req.sequences_size(); ++i) {
        if (!req.sequences(i).has_sampling()) continue;
        absl::StatusOr<common::SamplingSpec> spec =
            common::SamplingSpecFromProto(req.sequences(i).sampling(), vocab);
        if (!spec.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("sequence ", i, ": ", spec.status().message()));
        }
        sr.sampling[i] = *std::move(spec);
      }
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
      if (!result.sampled.empty()) {
        for (float lp : result.sampled[i]) out->add_sampled_logprobs(lp);
      }
    }
    return absl::OkStatus();
  }

  absl::Status DoUpdateWeights(grpc::ServerContext* ctx,
                               grpc::ServerReader<v1::WeightUpdate>* reader,
                               v1::UpdateWeightsResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    // The first message tells a part of a parallel update (its own path)
    // from a single stream (everything below, as before).
    v1::WeightUpdate message;
    bool pending = reader->Read(&message);
    if (pending && message.has_header() && message.header().stream_count() > 1) {
      return DoUpdateWeightsPart(ctx, reader, message, resp);
    }
    LOCKSTEP_ASSIGN_OR_RETURN(std::unique_ptr<WeightUpdate> update,
                              engine_->BeginWeightUpdate());
    common::WeightStager stager(engine_->config());
    absl::Time start = absl::InfinitePast();
    while (pending || reader->Read(&message)) {
      pending = false;
      const bool was_header = stager.has_header();
      LOCKSTEP_RETURN_IF_ERROR(stager.Add(message));
      if (!was_header && stager.has_header()) {
        start = absl::Now();
        LOCKSTEP_RETURN_IF_ERROR(update->CheckVersion(stager.target_version()));
      }
    }
    if (ctx->IsCancelled()) return absl::CancelledError("the client cancelled");
    const absl::Time received = absl::Now();
    LOCKSTEP_ASSIGN_OR_RETURN(common::TensorMap tensors, stager.Finish());
    common::AssembledWeights info;
    info.start = start;
    info.received = received;
    info.verify_seconds = absl::ToDoubleSeconds(absl::Now() - received);
    info.bytes = stager.bytes_received();
    LOCKSTEP_ASSIGN_OR_RETURN(*resp,
                              CommitWeights(*update, stager.header(), std::move(tensors), info));
    return absl::OkStatus();
  }

  // One part of a parallel update: stages its tensors, deposits them in the
  // assembly and returns the set's outcome (the part that completes the set
  // builds and swaps on its thread).
  absl::Status DoUpdateWeightsPart(grpc::ServerContext* ctx,
                                   grpc::ServerReader<v1::WeightUpdate>* reader,
                                   const v1::WeightUpdate& first, v1::UpdateWeightsResponse* resp) {
    LOCKSTEP_ASSIGN_OR_RETURN(
        *resp,
        assembly_.ReceivePart(
            engine_->config(), first,
            [reader](v1::WeightUpdate* message) -> absl::StatusOr<bool> {
              return reader->Read(message);
            },
            [this](const v1::WeightUpdateHeader& header)
                -> absl::StatusOr<common::AssemblyCommit> {
              LOCKSTEP_ASSIGN_OR_RETURN(std::unique_ptr<WeightUpdate> update,
                                        engine_->BeginWeightUpdate());
              LOCKSTEP_RETURN_IF_ERROR(update->CheckVersion(header.target_version()));
              std::shared_ptr<WeightUpdate> slot(std::move(update));
              return common::AssemblyCommit(
                  [this, slot, header](common::TensorMap tensors,
                                       const common::AssembledWeights& info) {
                    return CommitWeights(*slot, header, std::move(tensors), info);
                  });
            },
            [ctx] { return ctx->IsCancelled(); }, ToAbslDeadline(ctx->deadline())));
    return absl::OkStatus();
  }

  // Builds and swaps verified weights (a single stream's after its stager's
  // Finish, or a complete parallel set's), records the update's metrics and
  // log line and returns its response. `header` is the update's (for a set,
  // a part's); `info` holds its timings and bytes.
  absl::StatusOr<v1::UpdateWeightsResponse> CommitWeights(WeightUpdate& update,
                                                          const v1::WeightUpdateHeader& header,
                                                          common::TensorMap tensors,
                                                          const common::AssembledWeights& info) {
    const absl::Time verified = absl::Now();
    const uint64_t tensor_count = tensors.size();
    LOCKSTEP_ASSIGN_OR_RETURN(SwapResult swap,
                              update.Commit(std::move(tensors), header.target_version()));
    const absl::Duration total = absl::Now() - info.start;
    v1::UpdateWeightsResponse resp;
    resp.set_receive_seconds(absl::ToDoubleSeconds(info.received - info.start));
    resp.set_verify_seconds(info.verify_seconds);
    resp.set_build_seconds(absl::ToDoubleSeconds(absl::Now() - verified - swap.pause));
    metrics_->weight_update().Observe(absl::ToDoubleSeconds(total));
    resp.set_weight_version(swap.version);
    resp.set_previous_version(swap.previous_version);
    resp.set_tensors(tensor_count);
    resp.set_bytes(info.bytes);
    resp.set_duration_seconds(absl::ToDoubleSeconds(total));
    resp.set_swap_seconds(absl::ToDoubleSeconds(swap.pause));
    resp.set_preempted_sequences(swap.preempted);
    // A shared-memory update is one stream (the stager refuses parts).
    const bool shared = header.has_shared();
    resp.set_path(shared ? v1::WEIGHT_PATH_SHARED_MEMORY : v1::WEIGHT_PATH_STREAM);
    metrics_->RecordWeightPath(shared ? "shared_memory" : "stream");
    const std::string how =
        shared ? " via shared memory"
        : header.stream_count() > 1
            ? absl::StrCat(" in ", static_cast<int>(header.stream_count()), " streams")
            : "";
    std::fprintf(stderr,
                 "rollout: weights v%llu -> v%llu (%llu tensors, %llu bytes%s, "
                 "%.3f s: receive %.3f, verify %.3f, build %.3f, swap %.3f; source '%s')\n",
                 static_cast<unsigned long long>(swap.previous_version),
                 static_cast<unsigned long long>(swap.version),
                 static_cast<unsigned long long>(tensor_count),
                 static_cast<unsigned long long>(info.bytes), how.c_str(),
                 absl::ToDoubleSeconds(total), resp.receive_seconds(), resp.verify_seconds(),
                 resp.build_seconds(), resp.swap_seconds(), header.source().c_str());
    return resp;
  }

  absl::Status DoGetLoad(grpc::ServerContext* ctx, v1::RolloutLoad* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    const Engine::Load l = engine_->load();
    resp->set_waiting_sequences(static_cast<uint64_t>(l.waiting));
    resp->set_running_sequences(static_cast<uint64_t>(l.running));
    resp->set_kv_cache_usage(l.kv_usage);
    resp->set_in_flight_requests(static_cast<uint64_t>(l.in_flight));
    resp->set_weight_version(engine_->weight_version());
    resp->set_max_queue(static_cast<uint64_t>(engine_->options().max_queue));
    resp->set_paused(engine_->paused());
    resp->set_sleep_level(static_cast<v1::SleepLevel>(engine_->sleep_level()));
    return absl::OkStatus();
  }

  absl::Status DoPause(grpc::ServerContext* ctx, const v1::PauseRequest& req,
                       v1::PauseResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    if (req.mode() != v1::PAUSE_MODE_ABORT && req.mode() != v1::PAUSE_MODE_KEEP &&
        req.mode() != v1::PAUSE_MODE_RETRACT) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Pause needs mode ABORT, KEEP or RETRACT (got ", static_cast<int>(req.mode()), ")"));
    }
    // Paused first, so that nothing new is generated while the calls in
    // flight are aborted.
    LOCKSTEP_ASSIGN_OR_RETURN(
        PauseResult r, engine_->Pause(req.mode() == v1::PAUSE_MODE_RETRACT ? PauseMode::kRetract
                                                                          : PauseMode::kKeep));
    metrics_->SetPaused(true);
    uint64_t aborted = 0;
    if (req.mode() == v1::PAUSE_MODE_ABORT) aborted = AbortCalls({}, /*all=*/true);
    resp->set_was_paused(r.was_paused);
    resp->set_aborted_requests(aborted);
    resp->set_held_requests(static_cast<uint64_t>(std::max<int64_t>(0, r.held_requests -
                                                                          static_cast<int64_t>(aborted))));
    resp->set_running_sequences(static_cast<uint64_t>(r.running));
    resp->set_kv_cache_usage(r.kv_usage);
    resp->set_weight_version(r.version);
    return absl::OkStatus();
  }

  absl::Status DoResume(grpc::ServerContext* ctx, v1::ResumeResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    LOCKSTEP_ASSIGN_OR_RETURN(bool was_paused, engine_->Resume());
    metrics_->SetPaused(false);
    resp->set_was_paused(was_paused);
    return absl::OkStatus();
  }

  absl::Status DoSleep(grpc::ServerContext* ctx, const v1::SleepRequest& req,
                       v1::SleepResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    if (req.level() != v1::SLEEP_LEVEL_KV_CACHE &&
        req.level() != v1::SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sleep needs level KV_CACHE or KV_CACHE_AND_WEIGHTS (got ",
          static_cast<int>(req.level()), ")"));
    }
    LOCKSTEP_ASSIGN_OR_RETURN(SleepResult r,
                              engine_->Sleep(static_cast<SleepLevel>(req.level())));
    metrics_->SetSleepLevel(r.level);
    resp->set_level(static_cast<v1::SleepLevel>(r.level));
    resp->set_kv_cache_bytes(static_cast<uint64_t>(r.kv_cache_bytes));
    resp->set_weight_bytes(static_cast<uint64_t>(r.weight_bytes));
    resp->set_graph_bytes(static_cast<uint64_t>(r.graph_bytes));
    resp->set_device_bytes_freed(static_cast<uint64_t>(r.device_bytes_freed));
    resp->set_device_free_bytes(static_cast<uint64_t>(r.device_free_bytes));
    resp->set_seconds(absl::ToDoubleSeconds(r.duration));
    resp->set_weight_version(r.version);
    std::fprintf(stderr,
                 "rollout: asleep at level %d (released %lld KV + %lld weight + %lld graph "
                 "bytes; %lld device bytes back with the driver) in %.3f s\n",
                 static_cast<int>(r.level), static_cast<long long>(r.kv_cache_bytes),
                 static_cast<long long>(r.weight_bytes), static_cast<long long>(r.graph_bytes),
                 static_cast<long long>(r.device_bytes_freed), absl::ToDoubleSeconds(r.duration));
    return absl::OkStatus();
  }

  absl::Status DoWakeUp(grpc::ServerContext* ctx, v1::WakeUpResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    LOCKSTEP_ASSIGN_OR_RETURN(WakeResult r, engine_->WakeUp());
    metrics_->SetSleepLevel(engine_->sleep_level());
    resp->set_was_asleep(r.was_asleep);
    resp->set_kv_cache_bytes(static_cast<uint64_t>(r.kv_cache_bytes));
    resp->set_device_free_bytes(static_cast<uint64_t>(r.device_free_bytes));
    resp->set_seconds(absl::ToDoubleSeconds(r.duration));
    resp->set_weight_version(r.version);
    if (r.was_asleep) {
      std::fprintf(stderr, "rollout: awake (%lld KV bytes allocated) in %.3f s\n",
                   static_cast<long long>(r.kv_cache_bytes), absl::ToDoubleSeconds(r.duration));
    }
    return absl::OkStatus();
  }

  absl::Status DoGetModelInfo(grpc::ServerContext* ctx, v1::ModelInfo* resp) {
    const common::ModelOptions& model = engine_->model_options();
    *resp->mutable_config() = common::ModelConfigToProto(engine_->config());
    resp->set_weight_version(engine_->weight_version());
    resp->set_kernel_mode(model.mode ==
                                  common::KernelMode::kInvariant
                              ? v1::KERNEL_MODE_INVARIANT
                              : v1::KERNEL_MODE_STANDARD);
    resp->set_device(model.device == kernels::Device::kCuda
                         ? v1::DEVICE_CUDA
                         : v1::DEVICE_CPU);
    resp->set_tp_size(model.tp_size);
    resp->set_page_size(engine_->options().page_size);
    resp->set_kv_cache_pages(engine_->num_pages());
    resp->set_max_batch_tokens(engine_->options().max_batch_tokens);
    resp->set_max_queue(engine_->options().max_queue);
    resp->set_server_version(common::kLockstepVersion);
    resp->set_max_context_tokens(engine_->max_sequence_tokens());
    // What the learner's compatibility check compares beyond the config.
    resp->set_kernel_build_id(kernels::KernelBuildId());
    resp->set_gpu_architecture(
        kernels::GpuArchitecture(model.device));
    resp->set_host_id(common::HostId());
    return absl::OkStatus();
  }

  // A Generate call in flight, findable by its request id (Abort).
  struct Call {
    std::string request_id;
    std::shared_ptr<RequestHandle> handle;
    std::atomic<bool> aborted{false};
  };

  absl::Status DoAbort(grpc::ServerContext* ctx, const v1::AbortRequest& req,
                       v1::AbortResponse* resp) {
    LOCKSTEP_RETURN_IF_ERROR(CheckCall(ctx));
    if (req.all() == (req.request_ids_size() > 0)) {
      return absl::InvalidArgumentError(
          "Abort needs request_ids or all (exactly one of them)");
    }
    for (const std::string& id : req.request_ids()) {
      if (id.empty()) return absl::InvalidArgumentError("Abort: empty request id");
    }
    resp->set_aborted(AbortCalls(
        std::vector<std::string>(req.request_ids().begin(), req.request_ids().end()), req.all()));
    return absl::OkStatus();
  }

  // Aborts the calls in flight with one of `ids` (or all); returns how many.
  uint64_t AbortCalls(const std::vector<std::string>& ids, bool all) {
    uint64_t aborted = 0;
    absl::MutexLock lock(&calls_mu_);
    for (Call* c : calls_) {
      const bool match = all || std::find(ids.begin(), ids.end(), c->request_id) != ids.end();
      if (!match || c->aborted.exchange(true)) continue;
      c->handle->Cancel(absl::CancelledError("aborted by RolloutService.Abort"));
      ++aborted;
    }
    return aborted;
  }

  Engine* const engine_;
  RolloutMetrics* const metrics_;
  // Parts of parallel weight updates in assembly.
  common::WeightAssembly assembly_;
  std::atomic<bool> draining_{false};
  absl::Mutex calls_mu_;
  std::vector<Call*> calls_ ABSL_GUARDED_BY(calls_mu_);
};

std::unique_ptr<RolloutGrpcService> MakeRolloutGrpcService(Engine* engine,
                                                           RolloutMetrics* metrics,
                                                           absl::Duration weight_assembly_timeout) {
  return std::make_unique<RolloutGrpcServiceImpl>(engine, metrics, weight_assembly_timeout);
}

}  // namespace lockstep::rollout
