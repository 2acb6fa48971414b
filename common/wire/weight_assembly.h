// The receiving side of a parallel weight update: an UpdateWeights call per
// part (WeightUpdateHeader.stream_index of stream_count), each staged by its
// own WeightStager, deposited here and assembled into one TensorMap that is
// committed once; every part's call then returns the same outcome.
//
// Sets are keyed by target_version and a fingerprint of the header (CRC-32C
// of the serialized header without stream_index/stream_count: the manifest
// with its CRCs, the source and the try's set_id). At most one set assembles at a time (a
// rollout installs one update at a time). A set fails (ABORTED for every
// part, the deposited tensors freed, the commit never run) when a part
// fails or is cancelled, when a part with the same version but another
// manifest arrives, or when it does not complete within the timeout after
// its first part joined; a fresh set for the same version may follow. A
// part of a failed set that carried a set_id is ABORTED when it joins late
// (it does not start a new set).
#ifndef LOCKSTEP_COMMON_WIRE_WEIGHT_ASSEMBLY_H_
#define LOCKSTEP_COMMON_WIRE_WEIGHT_ASSEMBLY_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/formats/host_tensor.h"
#include "common/formats/model_config.h"
#include "lockstep/v1/common.pb.h"

namespace lockstep::common {

// What the parts of a complete set add up to, for the commit.
struct AssembledWeights {
  absl::Time start;          // when the set's first part joined
  absl::Time received;       // when the last part finished receiving
  double verify_seconds = 0;  // the longest part's verification (CRCs etc.)
  uint64_t bytes = 0;        // tensor bytes of every part
};

// Installs a complete set's tensors (build and swap) and returns the
// response every part's call gets; an error is every part's status.
using AssemblyCommit =
    std::function<absl::StatusOr<v1::UpdateWeightsResponse>(TensorMap, const AssembledWeights&)>;
// Run under the registry's lock by the first part of a new set: claims what
// the commit needs (e.g. the engine's update slot, checking the version) and
// returns the commit, which the set holds (and releases on failure). Its
// error is the first part's status and no set is created.
using AssemblyBegin = std::function<absl::StatusOr<AssemblyCommit>(const v1::WeightUpdateHeader&)>;

// The registry of sets in assembly. Thread-safe; one per receiver.
class WeightAssembly {
 public:
  struct Options {
    // A set not complete this long after its first part joined fails.
    absl::Duration timeout = absl::Seconds(60);
    // How often a waiting part looks at its cancellation.
    absl::Duration poll = absl::Milliseconds(20);
  };
  class Set;
  // One part's membership of a set (from Join).
  struct Part {
    std::shared_ptr<Set> set;
    uint32_t index = 0;
    // Whether the set failed already (a receiving part may stop early).
    bool set_failed() const;
  };
  // Reads the next message of a part's stream into `message`: true when it
  // read one, false at the end of the stream, an error when the stream
  // broke.
  using PartReader = std::function<absl::StatusOr<bool>(v1::WeightUpdate* message)>;

  explicit WeightAssembly(Options options);
  WeightAssembly(const WeightAssembly&) = delete;
  WeightAssembly& operator=(const WeightAssembly&) = delete;
  ~WeightAssembly();

  // Adds the part announced by `header` (stream_count > 1, already checked
  // by a WeightStager) to its set, creating the set through `begin` when
  // none assembles. INVALID_ARGUMENT for a part index already in the set,
  // or for a header of the same version whose manifest, source or
  // stream_count differ from the set's (the set then fails: ABORTED);
  // ABORTED while another version's set assembles or when the part's set
  // (nonzero set_id) failed already; `begin`'s error.
  absl::StatusOr<Part> Join(const v1::WeightUpdateHeader& header, const AssemblyBegin& begin);

  // Deposits the part's verified tensors (its WeightStager's Finish) and
  // `bytes`, then waits for the outcome: the part that completes the set
  // runs the commit on its thread. Returns the set's outcome; ABORTED when
  // the set failed or timed out; CANCELLED once `cancelled()` is true and
  // DEADLINE_EXCEEDED at `deadline` (both fail a set still assembling).
  absl::StatusOr<v1::UpdateWeightsResponse> Deposit(const Part& part, TensorMap tensors,
                                                    uint64_t bytes, double verify_seconds,
                                                    const std::function<bool()>& cancelled,
                                                    absl::Time deadline);

  // The part failed before depositing (its stream broke, was malformed or
  // cancelled): the set fails with ABORTED naming the part and `why`.
  void Abandon(const Part& part, const absl::Status& why);

  // Receives one part, the whole of a receiver's call for it: stages
  // `first` (the part's header message, stream_count > 1) and the messages
  // `read` returns with a WeightStager over `config`, joins the part's set
  // (Join, with `begin`) and deposits its tensors (Deposit, with the time
  // Finish took, `cancelled` and `deadline`); returns the set's outcome.
  // The stager's error on `first` and Join's error are returned as they are
  // (no set joined). Reading stops at a bad message, a broken stream or once
  // the set failed (its outcome is known; the rest is neither staged nor
  // verified, and Deposit returns the set's error). A bad message, a broken
  // stream, `cancelled()` at the stream's end (CANCELLED) and Finish's error
  // abandon the part (Abandon: the set fails) and are returned.
  absl::StatusOr<v1::UpdateWeightsResponse> ReceivePart(const ModelConfig& config,
                                                        const v1::WeightUpdate& first,
                                                        const PartReader& read,
                                                        const AssemblyBegin& begin,
                                                        const std::function<bool()>& cancelled,
                                                        absl::Time deadline);

  // Whether a set is assembling (tests).
  bool assembling() const;

 private:
  // Fails `set` unless it is committing or done; frees its tensors.
  void FailLocked(Set* set, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The keys (version, fingerprint) of the last kFailedSetsKept sets that
  // failed and carried a set_id: a late part of one of them is refused.
  static constexpr size_t kFailedSetsKept = 16;
  std::deque<std::pair<uint64_t, uint32_t>> failed_ ABSL_GUARDED_BY(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::shared_ptr<Set> live_ ABSL_GUARDED_BY(mu_);
};

// The key of a header's set: CRC-32C of the header serialized without
// stream_index and stream_count.
uint32_t WeightSetFingerprint(const v1::WeightUpdateHeader& header);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_WIRE_WEIGHT_ASSEMBLY_H_
