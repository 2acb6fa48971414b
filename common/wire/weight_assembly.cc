#include "common/wire/weight_assembly.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/wire/crc32c.h"
#include "common/wire/weight_stream.h"

namespace lockstep::common {

class WeightAssembly::Set {
 public:
  uint64_t version = 0;
  uint32_t fingerprint = 0;
  bool has_set_id = false;  // the sender named the try (remembered if it fails)
  uint32_t count = 0;
  absl::Time start;
  absl::Time expires;
  std::vector<bool> joined;
  uint32_t deposited = 0;
  TensorMap tensors;
  uint64_t bytes = 0;
  double verify_seconds = 0;
  AssemblyCommit commit;
  bool committing = false;
  bool done = false;
  absl::Status status;
  v1::UpdateWeightsResponse response;
  // Mirrors "done with an error" for Part::set_failed without the lock.
  std::atomic<bool> failed{false};
};

bool WeightAssembly::Part::set_failed() const {
  return set != nullptr && set->failed.load(std::memory_order_acquire);
}

uint32_t WeightSetFingerprint(const v1::WeightUpdateHeader& header) {
  v1::WeightUpdateHeader key = header;
  key.clear_stream_index();
  key.clear_stream_count();
  const std::string bytes = key.SerializeAsString();
  return Crc32c(bytes.data(), bytes.size());
}

WeightAssembly::WeightAssembly(Options options) : options_(options) {}

WeightAssembly::~WeightAssembly() {
  absl::MutexLock lock(&mu_);
  if (live_ != nullptr) FailLocked(live_.get(), absl::AbortedError("the receiver stopped"));
}

bool WeightAssembly::assembling() const {
  absl::MutexLock lock(&mu_);
  return live_ != nullptr;
}

void WeightAssembly::FailLocked(Set* set, absl::Status status) {
  if (set->done || set->committing) return;
  set->done = true;
  set->status = std::move(status);
  set->tensors.clear();  // the partial data goes now, not with the last part
  set->commit = nullptr;  // releases what begin claimed
  set->failed.store(true, std::memory_order_release);
  if (set->has_set_id) {
    failed_.emplace_back(set->version, set->fingerprint);
    if (failed_.size() > kFailedSetsKept) failed_.pop_front();
  }
  if (live_.get() == set) live_.reset();
  cv_.SignalAll();
}

absl::StatusOr<WeightAssembly::Part> WeightAssembly::Join(const v1::WeightUpdateHeader& header,
                                                          const AssemblyBegin& begin) {
  const uint32_t count = std::max<uint32_t>(header.stream_count(), 1);
  const uint32_t index = header.stream_index();
  if (index >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight update part ", index, " of ", count, " does not exist"));
  }
  const uint32_t fingerprint = WeightSetFingerprint(header);
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  // A set past its timeout that no waiting part noticed yet.
  if (live_ != nullptr && now >= live_->expires) {
    FailLocked(live_.get(),
               absl::AbortedError(absl::StrCat("weight update v", live_->version,
                                               ": the parts did not all arrive within ",
                                               absl::FormatDuration(options_.timeout))));
  }
  if (live_ != nullptr) {
    Set* set = live_.get();
    if (set->version != header.target_version()) {
      return absl::AbortedError(absl::StrCat("another weight update (version ", set->version,
                                             ") is being assembled"));
    }
    if (set->fingerprint != fingerprint || set->count != count) {
      FailLocked(set, absl::AbortedError(absl::StrCat(
                          "weight update v", set->version, ": part ", index,
                          " announced another manifest, source or stream_count than the set's")));
      return absl::InvalidArgumentError(
          absl::StrCat("weight update part ", index, " of ", count, " for version ",
                       header.target_version(),
                       ": its manifest, source or stream_count differ from the other parts'"));
    }
    if (set->joined[index]) {
      return absl::InvalidArgumentError(absl::StrCat("weight update v", set->version, ": part ",
                                                     index, " of ", count, " arrived twice"));
    }
    set->joined[index] = true;
    return Part{live_, index};
  }
  if (header.set_id() != 0 &&
      std::find(failed_.begin(), failed_.end(),
                std::make_pair(header.target_version(), fingerprint)) != failed_.end()) {
    return absl::AbortedError(absl::StrCat("weight update v", header.target_version(),
                                           ": part ", index, " of ", count,
                                           " belongs to a try that failed already"));
  }
  absl::StatusOr<AssemblyCommit> commit = begin(header);
  if (!commit.ok()) return commit.status();
  auto set = std::make_shared<Set>();
  set->version = header.target_version();
  set->fingerprint = fingerprint;
  set->has_set_id = header.set_id() != 0;
  set->count = count;
  set->start = now;
  set->expires = now + options_.timeout;
  set->joined.assign(count, false);
  set->joined[index] = true;
  set->commit = *std::move(commit);
  live_ = set;
  return Part{set, index};
}

void WeightAssembly::Abandon(const Part& part, const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  FailLocked(part.set.get(),
             absl::AbortedError(absl::StrCat("weight update v", part.set->version, ": part ",
                                             part.index, " of ", part.set->count,
                                             " failed: ", why.message())));
}

absl::StatusOr<v1::UpdateWeightsResponse> WeightAssembly::Deposit(
    const Part& part, TensorMap tensors, uint64_t bytes, double verify_seconds,
    const std::function<bool()>& cancelled, absl::Time deadline) {
  Set* set = part.set.get();
  absl::MutexLock lock(&mu_);
  if (set->done) return set->status.ok() ? absl::StatusOr<v1::UpdateWeightsResponse>(set->response)
                                         : set->status;
  const absl::Time now = absl::Now();
  if (now >= set->expires) {
    FailLocked(set, absl::AbortedError(absl::StrCat("weight update v", set->version,
                                                    ": the parts did not all arrive within ",
                                                    absl::FormatDuration(options_.timeout))));
    return set->status;
  }
  for (auto& [name, t] : tensors) set->tensors.emplace(name, std::move(t));
  tensors.clear();
  set->bytes += bytes;
  set->verify_seconds = std::max(set->verify_seconds, verify_seconds);
  if (++set->deposited == set->count) {
    // This part completes the set: commit on its thread, outside the lock
    // (building the model takes a while; other RPCs and sets must not wait).
    set->committing = true;
    if (live_.get() == set) live_.reset();
    AssembledWeights info;
    info.start = set->start;
    info.received = now - absl::Seconds(set->verify_seconds);
    info.verify_seconds = set->verify_seconds;
    info.bytes = set->bytes;
    TensorMap all = std::move(set->tensors);
    set->tensors.clear();
    AssemblyCommit commit = std::move(set->commit);
    set->commit = nullptr;
    absl::StatusOr<v1::UpdateWeightsResponse> outcome;
    {
      mu_.Unlock();
      outcome = commit(std::move(all), info);
      commit = nullptr;  // releases what begin claimed before the parts return
      mu_.Lock();
    }
    set->done = true;
    if (outcome.ok()) {
      set->response = *outcome;
    } else {
      set->status = outcome.status();
      set->failed.store(true, std::memory_order_release);
    }
    cv_.SignalAll();
    return outcome;
  }
  for (;;) {
    if (set->done) {
      return set->status.ok() ? absl::StatusOr<v1::UpdateWeightsResponse>(set->response)
                              : set->status;
    }
    if (cancelled()) {
      FailLocked(set, absl::AbortedError(absl::StrCat("weight update v", set->version, ": part ",
                                                      part.index, " was cancelled")));
      return absl::CancelledError("the client cancelled");
    }
    const absl::Time t = absl::Now();
    if (t >= deadline) {
      FailLocked(set, absl::AbortedError(absl::StrCat("weight update v", set->version, ": part ",
                                                      part.index, " ran out of time")));
      return absl::DeadlineExceededError("the call's deadline passed before every part arrived");
    }
    if (!set->committing && t >= set->expires) {
      FailLocked(set, absl::AbortedError(absl::StrCat("weight update v", set->version,
                                                      ": the parts did not all arrive within ",
                                                      absl::FormatDuration(options_.timeout))));
      continue;
    }
    absl::Duration wait = options_.poll;
    wait = std::min(wait, deadline - t);
    if (!set->committing) wait = std::min(wait, set->expires - t);
    cv_.WaitWithTimeout(&mu_, std::max(wait, absl::Milliseconds(1)));
  }
}

absl::StatusOr<v1::UpdateWeightsResponse> WeightAssembly::ReceivePart(
    const ModelConfig& config, const v1::WeightUpdate& first, const PartReader& read,
    const AssemblyBegin& begin, const std::function<bool()>& cancelled, absl::Time deadline) {
  WeightStager stager(config);
  LOCKSTEP_RETURN_IF_ERROR(stager.Add(first));
  LOCKSTEP_ASSIGN_OR_RETURN(const Part part, Join(stager.header(), begin));
  v1::WeightUpdate message;
  absl::Status received = absl::OkStatus();
  for (;;) {
    absl::StatusOr<bool> more = read(&message);
    if (!more.ok()) {
      received = more.status();
      break;
    }
    if (!*more) break;
    received = stager.Add(message);
    if (!received.ok()) break;
    if (part.set_failed()) break;  // the outcome is known: stop staging
  }
  if (received.ok() && cancelled()) received = absl::CancelledError("the client cancelled");
  if (!received.ok()) {
    Abandon(part, received);
    return received;
  }
  const absl::Time verify_start = absl::Now();
  absl::StatusOr<TensorMap> tensors =
      part.set_failed() ? absl::StatusOr<TensorMap>(TensorMap()) : stager.Finish();
  if (!tensors.ok()) {
    Abandon(part, tensors.status());
    return tensors.status();
  }
  return Deposit(part, *std::move(tensors), stager.bytes_received(),
                 absl::ToDoubleSeconds(absl::Now() - verify_start), cancelled, deadline);
}

}  // namespace lockstep::common
