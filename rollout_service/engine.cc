#include "rollout_service/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace lockstep::rollout {
namespace {

using common::CheckTokenIds;

TopList Truncate(const TopList& top, int n) {
  return TopList(top.begin(), top.begin() + std::min<size_t>(top.size(), n));
}

}  // namespace

// ---------------------------------------------------------------------------
// RequestHandle

bool RequestHandle::Wait(absl::Duration timeout,
                         std::vector<SampleUpdate>* out) {
  absl::MutexLock lock(&mu_);
  if (pending_.empty() && !done_) cv_.WaitWithTimeout(&mu_, timeout);
  for (SampleUpdate& u : pending_) out->push_back(std::move(u));
  pending_.clear();
  return done_;
}

absl::Status RequestHandle::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

void RequestHandle::Cancel(absl::Status reason) {
  if (reason.ok()) reason = absl::CancelledError("cancelled");
  absl::MutexLock lock(&mu_);
  if (cancel_requested_.load()) return;
  cancel_reason_ = std::move(reason);
  cancel_requested_.store(true, std::memory_order_release);
}

absl::Status RequestHandle::cancel_reason() const {
  absl::MutexLock lock(&mu_);
  return cancel_reason_;
}

void RequestHandle::Push(std::vector<SampleUpdate> updates) {
  absl::MutexLock lock(&mu_);
  for (SampleUpdate& u : updates) pending_.push_back(std::move(u));
  cv_.SignalAll();
}

void RequestHandle::Complete(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (done_) return;
  done_ = true;
  status_ = std::move(status);
  cv_.SignalAll();
}

// ---------------------------------------------------------------------------
// Engine: creation and the public, thread-safe entry points

Engine::Engine(std::shared_ptr<const common::Model> model,
               const EngineOptions& options, EngineObserver* observer)
    : options_(options),
      config_(model->config()),
      model_options_(model->options()),
      observer_(observer),
      model_(std::move(model)) {
  published_model_ = model_;
  version_.store(options.initial_version);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    std::shared_ptr<const common::Model> model, const EngineOptions& options,
    EngineObserver* observer) {
  if (model == nullptr) return absl::InvalidArgumentError("no model");
  if (options.page_size < 1 || options.page_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", options.page_size, " outside [1, 4096]"));
  }
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError("max_batch_tokens must be >= 1");
  }
  if (options.max_running < 1) {
    return absl::InvalidArgumentError("max_running must be >= 1");
  }
  if (options.max_queue < 1) {
    return absl::InvalidArgumentError("max_queue must be >= 1");
  }
  if (!(options.selfcheck_rate >= 0.0 && options.selfcheck_rate <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "selfcheck_rate ", options.selfcheck_rate, " outside [0, 1]"));
  }
  int64_t num_pages = options.num_pages;
  if (num_pages <= 0) {
    const int64_t per_page = model->KvBytesPerPage(options.page_size);
    num_pages = per_page > 0 ? options.kv_cache_bytes / per_page : 0;
    if (num_pages < 1) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "KV budget of ", options.kv_cache_bytes, " bytes holds no page of ",
          options.page_size, " tokens (", per_page, " bytes each)"));
    }
  }
  if (num_pages > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("too many KV pages: ", num_pages));
  }
  std::unique_ptr<Engine> engine(new Engine(model, options, observer));
  engine->num_pages_ = num_pages;
  engine->max_sequence_tokens_ = std::min<int64_t>(
      engine->config_.max_position_embeddings, num_pages * options.page_size);
  LOCKSTEP_ASSIGN_OR_RETURN(engine->cache_,
                            model->CreateKvCache(num_pages, options.page_size));
  SchedulerOptions sopts;
  sopts.num_pages = num_pages;
  sopts.page_size = options.page_size;
  sopts.max_batch_tokens = options.max_batch_tokens;
  sopts.max_running = options.max_running;
  sopts.prefix_sharing = options.prefix_sharing;
  engine->scheduler_ = std::make_unique<Scheduler>(sopts);
  Engine* raw = engine.get();
  engine->thread_ = std::thread([raw] { raw->Loop(); });
  return engine;
}

Engine::~Engine() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    work_cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<const common::Model> Engine::model() const {
  absl::MutexLock lock(&mu_);
  return published_model_;
}

absl::Status Engine::Validate(const GenerateJob& job) const {
  const int64_t vocab = config_.vocab_size;
  const int64_t context = config_.max_position_embeddings;
  LOCKSTEP_RETURN_IF_ERROR(common::CheckSamplingSpec(job.sampling, vocab));
  if (job.prompts.empty()) {
    return absl::InvalidArgumentError("the request has no prompts");
  }
  const int64_t ps = options_.page_size;
  for (size_t p = 0; p < job.prompts.size(); ++p) {
    const PromptJob& pj = job.prompts[p];
    const int64_t len = static_cast<int64_t>(pj.prompt.size());
    if (len == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt ", p, " is empty"));
    }
    if (pj.seeds.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt ", p, " asks for no samples"));
    }
    LOCKSTEP_RETURN_IF_ERROR(
        CheckTokenIds(pj.prompt, vocab, absl::StrCat("prompt ", p)));
    if (pj.sampling.has_value()) {
      absl::Status st = common::CheckSamplingSpec(*pj.sampling, vocab);
      if (!st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("prompt ", p, ": ", st.message()));
      }
    }
    const common::SamplingSpec& s = pj.sampling.has_value() ? *pj.sampling : job.sampling;
    if (!pj.resumed.empty()) {
      if (pj.seeds.size() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt ", p, " resumes one sample; it asks for ", pj.seeds.size()));
      }
      LOCKSTEP_RETURN_IF_ERROR(
          CheckTokenIds(pj.resumed, vocab, absl::StrCat("prompt ", p, "'s resumed tokens")));
      const int64_t done = static_cast<int64_t>(pj.resumed.size());
      if (s.max_tokens > 0 && done >= s.max_tokens) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prompt ", p, ": the resumed sample already has ", done,
            " tokens, max_tokens is ", s.max_tokens, " (nothing left to generate)"));
      }
      if (len + done >= std::min(context, max_sequence_tokens_)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prompt ", p, ": ", len, " prompt tokens + ", done,
            " resumed tokens leave no room to generate (at most ",
            std::min(context, max_sequence_tokens_), " tokens per sample)"));
      }
    }
    if (len >= context) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt ", p, " has ", len, " tokens; the context length ", context,
          " leaves no room to generate"));
    }
    if (s.max_tokens > 0) {
      if (len + s.max_tokens > context) {
        return absl::InvalidArgumentError(absl::StrCat(
            "prompt ", p, ": ", len, " prompt tokens + max_tokens ",
            s.max_tokens, " exceed the context length ", context));
      }
      const int64_t pages = (len + s.max_tokens + ps - 1) / ps;
      if (pages > num_pages_) {
        return absl::ResourceExhaustedError(
            absl::StrCat("prompt ", p, ": a sample of ", len + s.max_tokens,
                         " tokens needs ", pages, " KV pages; the cache holds ",
                         num_pages_));
      }
    } else if (len >= max_sequence_tokens_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "prompt ", p, " has ", len, " tokens; the KV cache holds at most ",
          max_sequence_tokens_, " tokens per sequence"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RequestHandle>> Engine::Submit(GenerateJob job) {
  {
    absl::MutexLock lock(&mu_);
    if (!draining_.ok()) return draining_;
  }
  LOCKSTEP_RETURN_IF_ERROR(Validate(job));
  int64_t samples = 0;
  for (const PromptJob& p : job.prompts) samples += p.seeds.size();
  if (samples > options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request has ", samples, " samples; at most ",
                     options_.max_queue, " may wait for admission"));
  }
  const int64_t before = queued_.fetch_add(samples);
  if (before + samples > options_.max_queue) {
    queued_.fetch_sub(samples);
    return absl::ResourceExhaustedError(absl::StrCat(
        "queue full: ", before, " samples wait for admission (max_queue ",
        options_.max_queue, ")"));
  }
  auto handle = std::make_shared<RequestHandle>(static_cast<int>(samples));
  auto request = std::make_shared<Request>();
  request->handle = handle;
  for (PromptJob& pj : job.prompts) {
    request->specs.push_back(pj.sampling.has_value() ? std::move(*pj.sampling) : job.sampling);
  }
  request->deadline = job.deadline;
  absl::MutexLock lock(&mu_);
  if (!draining_.ok() || stop_) {
    queued_.fetch_sub(samples);
    return draining_.ok() ? absl::UnavailableError("engine stopped")
                          : draining_;
  }
  in_flight_.fetch_add(1);
  incoming_.emplace_back(std::move(request), std::move(job));
  work_cv_.Signal();
  return handle;
}

absl::StatusOr<ScoreResult> Engine::Score(const ScoreRequest& request) {
  {
    absl::MutexLock lock(&mu_);
    if (!draining_.ok()) return draining_;
  }
  LOCKSTEP_RETURN_IF_ERROR(ValidateScore(request));
  auto job = std::make_shared<ScoreJob>();
  job->request = &request;
  absl::MutexLock lock(&mu_);
  if (!draining_.ok()) return draining_;
  if (stop_) return absl::UnavailableError("engine stopped");
  scores_.push_back(job);
  work_cv_.Signal();
  // Wake at least every 50 ms to poll the caller's cancellation (gRPC's
  // synchronous API reports it only by polling).
  while (!job->done) {
    const absl::Time now = absl::Now();
    absl::Status gone;
    if (now >= request.deadline) {
      gone = absl::DeadlineExceededError("the ComputeLogprobs deadline passed");
    } else if (request.cancelled && request.cancelled()) {
      gone = absl::CancelledError("the client cancelled");
    }
    if (!gone.ok()) {
      // The engine drops the job at its next piece; a piece running now
      // reads `request`, which must outlive it.
      job->abandoned = true;
      while (job->running) done_cv_.Wait(&mu_);
      return gone;
    }
    done_cv_.WaitWithDeadline(&mu_, std::min(request.deadline, now + absl::Milliseconds(50)));
  }
  return std::move(job->result);
}

absl::StatusOr<SwapResult> Engine::SwapWeights(
    std::shared_ptr<const common::Model> model, uint64_t version) {
  if (model == nullptr) return absl::InvalidArgumentError("no model");
  if (model->config() != config_) {
    return absl::FailedPreconditionError(
        "the new weights' model config differs from the served model's");
  }
  SwapJob job;
  job.model = std::move(model);
  job.version = version;
  job.queued = absl::Now();
  absl::MutexLock lock(&mu_);
  if (!draining_.ok()) return draining_;
  if (stop_) return absl::UnavailableError("engine stopped");
  swaps_.push_back(&job);
  work_cv_.Signal();
  while (!job.done) done_cv_.Wait(&mu_);
  return std::move(job.result);
}

absl::StatusOr<std::unique_ptr<WeightUpdate>> Engine::BeginWeightUpdate() {
  {
    absl::MutexLock lock(&mu_);
    if (!draining_.ok()) return draining_;
  }
  if (updating_.exchange(true)) {
    return absl::AbortedError("another weight update is in progress");
  }
  return std::unique_ptr<WeightUpdate>(new WeightUpdate(this));
}

WeightUpdate::~WeightUpdate() { engine_->updating_.store(false); }

absl::Status WeightUpdate::CheckVersion(uint64_t version) const {
  const uint64_t current = engine_->weight_version();
  if (version <= current) {
    return absl::FailedPreconditionError(
        absl::StrCat("weight update to version ", version, " would not advance the served version ",
                     current, " (versions must increase)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SwapResult> WeightUpdate::Commit(common::TensorMap tensors, uint64_t version) {
  LOCKSTEP_RETURN_IF_ERROR(CheckVersion(version));
  absl::StatusOr<std::shared_ptr<const common::Model>> model =
      common::Model::Create(engine_->config(), std::move(tensors), engine_->model_options());
  if (!model.ok()) {
    return absl::AbortedError(
        absl::StrCat("the model rejected the weights: ", model.status().message()));
  }
  return engine_->SwapWeights(*std::move(model), version);
}

void Engine::StopAdmitting(absl::Status reason) {
  if (reason.ok()) reason = absl::UnavailableError("draining");
  absl::MutexLock lock(&mu_);
  draining_ = std::move(reason);
}

bool Engine::WaitIdle(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (in_flight_.load() > 0) {
    if (done_cv_.WaitWithDeadline(&mu_, deadline)) {
      return in_flight_.load() == 0;
    }
  }
  return true;
}

void Engine::CancelAll(absl::Status reason) {
  absl::MutexLock lock(&mu_);
  cancel_all_ = std::move(reason);
  work_cv_.Signal();
}

// ---------------------------------------------------------------------------
// Engine thread

bool Engine::HasWorkLocked() const {
  return stop_ || !incoming_.empty() || !swaps_.empty() || !scores_.empty() ||
         !active_scores_.empty() || !controls_.empty() || !cancel_all_.ok() ||
         (generating() && scheduler_->has_work()) || !selfchecks_.empty();
}

void Engine::Loop() {
  for (;;) {
    std::vector<std::pair<std::shared_ptr<Request>, GenerateJob>> incoming;
    std::deque<SwapJob*> swaps;
    std::deque<std::shared_ptr<ScoreJob>> scores;
    std::deque<ControlJob*> controls;
    absl::Status cancel_all;
    {
      absl::MutexLock lock(&mu_);
      while (!HasWorkLocked()) {
        if (!requests_.empty()) {
          // Paused or asleep with requests waiting: wake up now and then to
          // apply their cancellations and deadlines.
          work_cv_.WaitWithTimeout(&mu_, absl::Milliseconds(20));
          break;
        }
        work_cv_.Wait(&mu_);
      }
      if (stop_) break;
      incoming.swap(incoming_);
      swaps.swap(swaps_);
      scores.swap(scores_);
      controls.swap(controls_);
      std::swap(cancel_all, cancel_all_);
    }
    for (auto& [request, job] : incoming) AddRequest(request, std::move(job));
    if (!cancel_all.ok()) FailEverything(cancel_all);
    // Step boundary: weights change only here.
    for (SwapJob* job : swaps) {
      ApplySwap(*job);
      absl::MutexLock lock(&mu_);
      job->done = true;
      done_cv_.SignalAll();
    }
    for (ControlJob* job : controls) {
      job->run();
      absl::MutexLock lock(&mu_);
      job->ran = true;
      job->done = true;
      done_cv_.SignalAll();
    }
    for (auto& job : scores) active_scores_.push_back(std::move(job));
    // One piece of one scoring request per step, round robin.
    if (!active_scores_.empty()) {
      std::shared_ptr<ScoreJob> job = std::move(active_scores_.front());
      active_scores_.pop_front();
      bool abandoned;
      {
        absl::MutexLock lock(&mu_);
        abandoned = job->abandoned;
        job->running = !abandoned;
      }
      if (!abandoned) {
        const bool finished = RunScorePiece(*job);
        absl::MutexLock lock(&mu_);
        job->running = false;
        job->done = finished;
        done_cv_.SignalAll();
        if (!finished && !job->abandoned) active_scores_.push_back(std::move(job));
      }
    }
    CheckCancellations();
    Step();
    RunSelfCheck();
    ReportOccupancy();
  }

  // Stopping: nothing in flight survives.
  const absl::Status stopped = absl::UnavailableError("rollout engine stopped");
  std::vector<std::pair<std::shared_ptr<Request>, GenerateJob>> incoming;
  {
    absl::MutexLock lock(&mu_);
    incoming.swap(incoming_);
    for (SwapJob* job : swaps_) {
      job->result = stopped;
      job->done = true;
    }
    for (auto& job : scores_) active_scores_.push_back(std::move(job));
    for (auto& job : active_scores_) {
      job->result = stopped;
      job->done = true;
    }
    active_scores_.clear();
    for (ControlJob* job : controls_) job->done = true;  // never run
    controls_.clear();
    swaps_.clear();
    scores_.clear();
    done_cv_.SignalAll();
  }
  for (auto& [request, job] : incoming) AddRequest(request, std::move(job));
  FailEverything(stopped);
  ReportOccupancy();
}

void Engine::AddRequest(std::shared_ptr<Request> request, GenerateJob job) {
  int32_t index = 0;
  for (size_t p = 0; p < job.prompts.size(); ++p) {
    PromptJob& pj = job.prompts[p];
    const common::SamplingSpec& s = request->specs[p];
    const int64_t len = static_cast<int64_t>(pj.prompt.size());
    const int n = static_cast<int>(pj.seeds.size());
    std::vector<int32_t> tokens = pj.prompt;
    tokens.insert(tokens.end(), pj.resumed.begin(), pj.resumed.end());
    std::vector<int64_t> ids = scheduler_->AddGroup(tokens, n);
    for (int j = 0; j < n; ++j) {
      SampleState st;
      st.request = request;
      st.index = index++;
      st.prompt_len = len;
      st.resumed = static_cast<int64_t>(pj.resumed.size());
      st.max_len = s.max_tokens > 0 ? len + s.max_tokens : max_sequence_tokens_;
      st.spec = &s;
      st.params = s.params;
      st.params.seed = pj.seeds[j];
      if (s.adjusts()) {
        st.adjuster.emplace(s, config_.eos_token_ids, pj.prompt);
        for (int32_t t : pj.resumed) st.adjuster->Append(t);
      }
      samples_.emplace(ids[j], std::move(st));
      request->seq_ids.push_back(ids[j]);
    }
  }
  request->remaining = index;
  requests_.push_back(std::move(request));
}

void Engine::FinishRequest(const std::shared_ptr<Request>& request,
                           absl::Status status) {
  if (request->done) return;
  request->done = true;
  for (int64_t id : request->seq_ids) {
    auto it = samples_.find(id);
    if (it == samples_.end()) continue;
    if (!it->second.admitted) queued_.fetch_sub(1);
    scheduler_->Remove(id);
    samples_.erase(it);
  }
  {
    // Before Complete(): whoever the handle wakes sees the request gone.
    absl::MutexLock lock(&mu_);
    in_flight_.fetch_sub(1);
    done_cv_.SignalAll();
  }
  request->handle->Complete(std::move(status));
}

void Engine::FailEverything(const absl::Status& status) {
  for (const auto& request : requests_) FinishRequest(request, status);
  requests_.clear();
}

void Engine::CheckCancellations() {
  const absl::Time now = absl::Now();
  for (const auto& request : requests_) {
    if (request->done) continue;
    if (request->handle->cancel_requested()) {
      FinishRequest(request, request->handle->cancel_reason());
    } else if (now >= request->deadline) {
      FinishRequest(request, absl::DeadlineExceededError(
                                 "the request's deadline passed"));
    }
  }
  requests_.erase(std::remove_if(requests_.begin(), requests_.end(),
                                 [](const auto& r) { return r->done; }),
                  requests_.end());
}

void Engine::ApplySwap(SwapJob& job) {
  const uint64_t current = version_.load();
  if (job.version <= current) {
    job.result = absl::AbortedError(
        absl::StrCat("weight update to version ", job.version,
                     " lost a race: version ", current, " is already served"));
    return;
  }
  const std::vector<int64_t> preempted = scheduler_->PreemptAll();
  model_ = job.model;
  {
    absl::MutexLock lock(&mu_);
    published_model_ = model_;
  }
  version_.store(job.version, std::memory_order_release);
  // Weights pushed while asleep without weights: WakeUp can now proceed.
  if (sleep_ == SleepLevel::kKvCacheAndWeights) SetSleep(SleepLevel::kKvCache);
  SwapResult result;
  result.previous_version = current;
  result.version = job.version;
  result.pause = absl::Now() - job.queued;
  result.preempted = static_cast<int64_t>(preempted.size());
  if (observer_ != nullptr) observer_->OnWeightSwap(result);
  job.result = result;
}

absl::Status Engine::ValidateScore(const ScoreRequest& request) const {
  const int64_t vocab = config_.vocab_size;
  const int64_t context = config_.max_position_embeddings;
  if (request.sequences.empty()) {
    return absl::InvalidArgumentError("no sequences to score");
  }
  if (request.prompt_lens.size() != request.sequences.size()) {
    return absl::InvalidArgumentError("one prompt_len per sequence is needed");
  }
  if (request.top_n < 0 || request.top_n > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ",
                     request.top_n));
  }
  for (size_t i = 0; i < request.sequences.size(); ++i) {
    const int64_t len = static_cast<int64_t>(request.sequences[i].size());
    const int64_t pl = request.prompt_lens[i];
    if (pl < 1 || pl >= len) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, ": prompt_len ", pl, " must be in [1, ",
                       len, ") (the sequence has ", len, " tokens)"));
    }
    if (len > context) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, " has ", len,
                       " tokens, past the context length ", context));
    }
    LOCKSTEP_RETURN_IF_ERROR(CheckTokenIds(request.sequences[i], vocab,
                                           absl::StrCat("sequence ", i)));
  }
  if (!request.sampling.empty()) {
    if (request.sampling.size() != request.sequences.size()) {
      return absl::InvalidArgumentError("sampling must be empty or one per sequence");
    }
    for (size_t i = 0; i < request.sampling.size(); ++i) {
      if (!request.sampling[i].has_value()) continue;
      absl::Status st = common::CheckSamplingSpec(*request.sampling[i], vocab);
      if (!st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": ", st.message()));
      }
    }
  }
  return absl::OkStatus();
}

bool Engine::RunScorePiece(ScoreJob& job) {
  absl::Status s = ScorePiece(job);
  if (!s.ok()) {
    job.result = std::move(s);
    return true;
  }
  if (job.next < job.request->sequences.size()) return false;
  job.result = std::move(job.partial);
  return true;
}

absl::Status Engine::ScorePiece(ScoreJob& job) {
  const ScoreRequest& request = *job.request;
  const int64_t vocab = config_.vocab_size;
  const uint64_t version = version_.load();
  if (model_ == nullptr) {
    return absl::FailedPreconditionError(
        "the rollout is asleep with its weights released: push weights first");
  }
  if (job.started && job.partial.version != version) {
    // Weights changed between two pieces: every logprob must come from one
    // version, so start over at the served one.
    job.started = false;
    job.next = 0;
  }
  if (!job.started) {
    if (request.expected_version.has_value() && *request.expected_version != version) {
      return absl::FailedPreconditionError(
          absl::StrCat("weight version ", *request.expected_version,
                       " was asked for but version ", version, " is served"));
    }
    job.partial = ScoreResult();
    job.partial.version = version;
    job.partial.logprobs.resize(request.sequences.size());
    if (request.top_n > 0) job.partial.top.resize(request.sequences.size());
    if (!request.sampling.empty()) job.partial.sampled.resize(request.sequences.size());
    job.started = true;
  }
  // The next piece: sequences [begin, end) of at most max_batch_tokens tokens
  // (at least one sequence). The values do not depend on the grouping in
  // invariant mode; memory and the time one piece holds the engine do.
  const size_t begin = job.next;
  size_t end = begin;
  int64_t tokens = 0;
  while (end < request.sequences.size() &&
         (end == begin || tokens + static_cast<int64_t>(request.sequences[end].size()) <=
                              options_.max_batch_tokens)) {
    tokens += request.sequences[end].size();
    ++end;
  }
  std::vector<std::vector<int32_t>> seqs(request.sequences.begin() + begin,
                                         request.sequences.begin() + end);
  std::vector<int64_t> lens(request.prompt_lens.begin() + begin,
                            request.prompt_lens.begin() + end);
  LOCKSTEP_ASSIGN_OR_RETURN(auto scores, model_->Score(seqs, lens));
  if (scores.size() != seqs.size()) {
    return absl::InternalError("Score returned the wrong count");
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    job.partial.logprobs[begin + i] = std::move(scores[i]);
  }
  for (size_t i = begin; i < end; ++i) {
    const bool top = request.top_n > 0;
    const bool sampled = !request.sampling.empty() && request.sampling[i].has_value();
    if (!top && !sampled) continue;
    // The logits of the scored positions (the same bits as the generate
    // steps' in invariant mode), on the host.
    const auto& seq = request.sequences[i];
    const int64_t len = static_cast<int64_t>(seq.size());
    const int64_t pl = request.prompt_lens[i];
    LOCKSTEP_ASSIGN_OR_RETURN(auto full, model_->SequenceLogits({seq}));
    const std::vector<float>& logits = full.at(0);
    std::vector<float> rows(logits.begin() + (pl - 1) * vocab,
                            logits.begin() + (len - 1) * vocab);
    std::vector<int32_t> targets(seq.begin() + pl, seq.end());
    if (top) {
      LOCKSTEP_ASSIGN_OR_RETURN(
          common::TokenLogprobs lp,
          common::ComputeTokenLogprobs(model_->options().mode, rows, vocab, targets,
                                       request.top_n));
      job.partial.top[i] = std::move(lp.top);
    }
    if (sampled) {
      LOCKSTEP_ASSIGN_OR_RETURN(
          job.partial.sampled[i],
          common::SampledLogprobs(rows.data(), vocab, *request.sampling[i],
                                  config_.eos_token_ids,
                                  absl::MakeConstSpan(seq).subspan(0, pl), targets));
    }
  }
  job.next = end;
  return absl::OkStatus();
}

void Engine::Step() {
  if (!generating() || !scheduler_->has_work()) return;
  const absl::Time t0 = absl::Now();
  StepPlan plan = scheduler_->Schedule();
  for (const StepPiece& piece : plan.pieces) {
    auto it = samples_.find(piece.seq_id);
    if (it != samples_.end() && !it->second.admitted) {
      it->second.admitted = true;
      queued_.fetch_sub(1);
    }
  }
  if (plan.empty()) {
    // Nothing can run (cannot happen with a consistent scheduler); avoid a
    // hot loop rather than spin.
    absl::SleepFor(absl::Milliseconds(1));
    return;
  }
  // A step that samples nothing (prefix or mid-prompt prefill chunks) still
  // asks for one logit row: some Model implementations skip the whole
  // forward, K/V writes included, when no logits are wanted.
  if (plan.batch.logit_rows.empty()) {
    plan.batch.logit_rows.push_back(
        static_cast<int32_t>(plan.batch.tokens.size() - 1));
  }
  // Forward, sampling and logprobs run where the model lives (on a GPU
  // model only tokens and logprobs come back).
  const int64_t rows = static_cast<int64_t>(plan.sample_seqs.size());
  common::StepRequest step;
  if (rows > 0) {
    step.params.resize(rows);
    step.positions.resize(rows);
    bool adjusted = false;
    for (int64_t i = 0; i < rows; ++i) {
      const SampleState& st = samples_.at(plan.sample_seqs[i]);
      step.params[i] = st.params;
      step.positions[i] =
          static_cast<int64_t>(scheduler_->tokens(plan.sample_seqs[i]).size());
      step.top_n = std::max(step.top_n, st.spec->top_logprobs);
      adjusted = adjusted || st.adjuster.has_value();
    }
    if (adjusted) {
      step.adjust_offsets.reserve(rows + 1);
      step.adjust_offsets.push_back(0);
      for (int64_t i = 0; i < rows; ++i) {
        const SampleState& st = samples_.at(plan.sample_seqs[i]);
        if (st.adjuster.has_value()) st.adjuster->AppendAdjustments(&step.adjustments);
        step.adjust_offsets.push_back(static_cast<int64_t>(step.adjustments.size()));
      }
    }
  } else {
    step.targets.assign(plan.batch.logit_rows.size(), 0);  // the placeholder row
  }
  absl::StatusOr<common::StepResult> result =
      model_->Step(plan.batch, cache_.get(), step);
  if (!result.ok()) {
    std::cerr << "rollout engine: step failed: " << result.status() << "\n";
    FailEverything(absl::InternalError(
        absl::StrCat("forward step failed: ", result.status().message())));
    return;
  }
  if (rows > 0 && (result->tokens.size() != static_cast<size_t>(rows) ||
                   result->logprobs.target.size() != static_cast<size_t>(rows) ||
                   result->logprobs.sampled.size() != static_cast<size_t>(rows))) {
    FailEverything(absl::InternalError("the model's step returned the wrong row count"));
    return;
  }
  scheduler_->Commit(plan);

  std::vector<std::pair<std::shared_ptr<Request>, std::vector<SampleUpdate>>>
      updates;
  std::unordered_map<const Request*, size_t> update_index;
  if (rows > 0) {
    const std::vector<int32_t>& tokens = result->tokens;
    const common::TokenLogprobs* lp = &result->logprobs;
    const uint64_t version = version_.load();
    const absl::Time now = absl::Now();
    const auto& eos = config_.eos_token_ids;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t id = plan.sample_seqs[i];
      SampleState& st = samples_.at(id);
      std::shared_ptr<Request> request = st.request;
      const int32_t token = tokens[i];
      scheduler_->AppendToken(id, token);
      if (st.adjuster.has_value()) st.adjuster->Append(token);
      if (options_.selfcheck_rate > 0.0) {  // only the self-check needs them
        st.logprobs.push_back(lp->target[i]);
        st.versions.push_back(version);
      }

      auto [slot, inserted] =
          update_index.emplace(request.get(), updates.size());
      if (inserted) updates.emplace_back(request, std::vector<SampleUpdate>());
      SampleUpdate& u = updates[slot->second].second.emplace_back();
      u.sample = st.index;
      u.tokens.push_back(token);
      u.logprobs.push_back(lp->target[i]);
      u.sampled_logprobs.push_back(lp->sampled[i]);
      u.versions.push_back(version);
      if (st.spec->top_logprobs > 0) {
        u.top.push_back(Truncate(lp->top[i], st.spec->top_logprobs));
      }
      u.preemptions = scheduler_->preemptions(id);
      u.time = now;

      const common::SamplingSpec& so = *st.spec;
      const std::vector<int32_t>& all = scheduler_->tokens(id);
      const int64_t len = static_cast<int64_t>(all.size());
      const absl::Span<const int32_t> output =
          absl::MakeConstSpan(all).subspan(static_cast<size_t>(st.prompt_len));
      if (std::find(so.stop_token_ids.begin(), so.stop_token_ids.end(),
                    token) != so.stop_token_ids.end() ||
          (!so.ignore_eos &&
           std::find(eos.begin(), eos.end(), static_cast<int64_t>(token)) !=
               eos.end()) ||
          (static_cast<int64_t>(output.size()) >= so.min_tokens &&
           common::EndsWithStopSequence(so, output))) {
        u.finish = FinishReason::kStop;
      } else if (len >= st.max_len) {
        u.finish = FinishReason::kLength;
      }
      if (u.finish != FinishReason::kNone) {
        if (options_.selfcheck_rate > 0.0) {
          selfcheck_credit_ += options_.selfcheck_rate;
          if (selfcheck_credit_ >= 1.0) {
            selfcheck_credit_ -= 1.0;
            const bool one_version =
                std::all_of(st.versions.begin(), st.versions.end(),
                            [&](uint64_t v) { return v == version; });
            if (one_version && selfchecks_.size() < 64) {
              selfchecks_.push_back({scheduler_->tokens(id), st.prompt_len + st.resumed,
                                     st.logprobs, version});
            }
          }
        }
        scheduler_->Remove(id);
        samples_.erase(id);
        --request->remaining;
      }
    }
  }
  for (auto& [request, list] : updates) {
    request->handle->Push(std::move(list));
    if (request->remaining == 0) FinishRequest(request, absl::OkStatus());
  }
  requests_.erase(std::remove_if(requests_.begin(), requests_.end(),
                                 [](const auto& r) { return r->done; }),
                  requests_.end());

  if (observer_ != nullptr) {
    StepStats stats;
    stats.sequences = static_cast<int64_t>(plan.pieces.size());
    stats.tokens = static_cast<int64_t>(plan.batch.tokens.size());
    stats.prefill_tokens = plan.prefill_tokens;
    stats.decode_tokens = plan.decode_tokens;
    stats.sampled = rows;
    stats.preempted = static_cast<int64_t>(plan.preempted.size());
    stats.waiting = scheduler_->num_waiting_samples();
    stats.running = scheduler_->num_running();
    stats.kv_usage = scheduler_->blocks().usage();
    stats.duration = absl::Now() - t0;
    observer_->OnStep(stats);
    reported_waiting_ = stats.waiting;
    reported_running_ = stats.running;
    reported_kv_usage_ = stats.kv_usage;
  }
  load_waiting_.store(scheduler_->num_waiting_samples());
  load_running_.store(scheduler_->num_running());
  load_kv_usage_.store(scheduler_->blocks().usage());
}

Engine::Load Engine::load() const {
  Load l;
  // Samples never admitted include those not yet handed to the scheduler.
  l.waiting = std::max(load_waiting_.load(), queued_.load());
  l.running = load_running_.load();
  l.kv_usage = load_kv_usage_.load();
  l.in_flight = in_flight_.load();
  return l;
}

void Engine::ReportOccupancy() {
  const int64_t waiting = scheduler_->num_waiting_samples();
  const int64_t running = scheduler_->num_running();
  const double kv_usage = scheduler_->blocks().usage();
  load_waiting_.store(waiting);
  load_running_.store(running);
  load_kv_usage_.store(kv_usage);
  if (observer_ == nullptr) return;
  if (waiting == reported_waiting_ && running == reported_running_ &&
      kv_usage == reported_kv_usage_) {
    return;
  }
  reported_waiting_ = waiting;
  reported_running_ = running;
  reported_kv_usage_ = kv_usage;
  observer_->OnOccupancy(waiting, running, kv_usage);
}

void Engine::RunSelfCheck() {
  if (selfchecks_.empty()) return;
  SelfCheck check = std::move(selfchecks_.front());
  selfchecks_.pop_front();
  if (check.version != version_.load() || model_ == nullptr) return;  // weights changed since
  absl::StatusOr<std::vector<std::vector<float>>> scores =
      model_->Score({check.tokens}, {check.prompt_len});
  if (!scores.ok() || scores->size() != 1 ||
      scores->at(0).size() != check.logprobs.size()) {
    std::cerr << "rollout engine: self-check scoring failed: "
              << (scores.ok() ? "wrong size" : scores.status().ToString())
              << "\n";
    return;
  }
  const std::vector<float>& ref = scores->at(0);
  int64_t mismatched = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::memcmp(&ref[i], &check.logprobs[i], sizeof(float)) != 0) {
      ++mismatched;
    }
  }
  if (observer_ != nullptr) {
    observer_->OnSelfCheck(static_cast<int64_t>(ref.size()), mismatched);
  }
}

}  // namespace lockstep::rollout
