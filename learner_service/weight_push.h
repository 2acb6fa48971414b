// The learner's side of its rollouts, over the client SDK
// (sdk/cpp/rollout_client.h): the client it dials a rollout with, and the
// weight push after a step (UpdateWeights with retries) to one rollout or to
// all of them in parallel.
#ifndef LOCKSTEP_LEARNER_SERVICE_WEIGHT_PUSH_H_
#define LOCKSTEP_LEARNER_SERVICE_WEIGHT_PUSH_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/formats/host_tensor.h"
#include "common/net/channel_security.h"
#include "common/wire/shared_weights.h"
#include "sdk/cpp/rollout_client.h"

namespace lockstep::learner {

// Tries of one push: 5, only after UNAVAILABLE, the first retry after
// 100 ms and every later one after twice the wait before it (no cap, no
// jitter).
client::RetryPolicy DefaultPushRetry();

// How a push carries the bytes (--weight_path).
enum class WeightPathChoice {
  // Shared memory to rollouts on this host (ModelInfo.host_id equals
  // common::HostId()), falling back to the stream when the rollout cannot
  // read the buffer (FAILED_PRECONDITION: e.g. another /dev/shm); the
  // stream to every other rollout.
  kAuto,
  kStream,        // the UpdateWeights stream to every rollout
  kSharedMemory,  // shared memory only (a rollout that cannot read it fails)
};

// "auto", "stream", "shared_memory"; INVALID_ARGUMENT otherwise.
absl::StatusOr<WeightPathChoice> ParseWeightPathChoice(const std::string& name);

struct PushOptions {
  // How often and how soon a push is tried again (max_attempts below 1
  // counts as 1).
  client::RetryPolicy retry = DefaultPushRetry();
  // Deadline of one UpdateWeights call (each try).
  absl::Duration attempt_timeout = absl::Seconds(120);
  // When > 0: tries continue (after UNAVAILABLE, with `retry`'s backoff, up
  // to retry.max_attempts) until this much time has passed since the first
  // one, so a rollout that restarts within the window gets the push. The
  // last try may run attempt_timeout past it. 0: max_attempts alone bounds.
  absl::Duration retry_window = absl::ZeroDuration();
  // Payload bytes per chunk (0: common::kDefaultWeightChunkBytes).
  size_t chunk_bytes = 0;
  WeightPathChoice path = WeightPathChoice::kAuto;
  // Parallel UpdateWeights calls ("parts", WeightUpdateHeader.stream_count)
  // one stream push is split into, in [1, common::kMaxWeightStreams]
  // (--push_streams). 1: the single stream. Above 1 the parts run
  // concurrently on the client's channel (one thread each), the CRCs
  // computed once for all of them; when any part fails with UNAVAILABLE the
  // whole set is tried again as `retry` says. Shared-memory pushes ignore it.
  int streams = 1;
  // When set, run at the start of every attempt, before any tensor is sent
  // (the learner re-checks there that the rollout still computes as it
  // does: one restarted with another config must be refused, not pushed
  // to). UNAVAILABLE fails the attempt like a broken stream (retried as
  // `retry` says); any other error ends the push with that status and
  // nothing sent.
  std::function<absl::Status(client::RolloutClient&)> check;
};

// Outcome of pushing one version to one rollout.
struct PushResult {
  std::string endpoint;
  absl::Status status;  // of the last attempt
  int attempts = 0;
  double seconds = 0.0;          // all attempts, backoff included
  uint64_t bytes = 0;            // tensor bytes of the successful attempt
  uint64_t rollout_version = 0;  // served version after a successful push
  v1::WeightPath path = v1::WEIGHT_PATH_UNSPECIFIED;  // of the last attempt
};

// A client of the rollout at `endpoint` ("HOST:PORT"), connecting lazily
// over `security` (plaintext by default; TLS / mTLS for rollouts started
// with --tls_cert / --tls_ca: build it with common::MakeChannelSecurity). A
// non-empty `auth_token` is sent as "authorization: Bearer <token>" with
// every call (rollout_service --auth_token_file). Every call the learner
// makes sets its own deadline and tries; the channel takes responses up to
// 256 MiB, sends no keepalive pings, reconnects after 0.1 s backing off to
// 1 s, and gives a handshake 20 s. Errors of client::Connection::Create
// (INVALID_ARGUMENT for an empty endpoint or a token that is not printable
// ASCII).
absl::StatusOr<std::shared_ptr<client::RolloutClient>> ConnectRollout(
    const std::string& endpoint, const std::string& auth_token = "",
    const common::ChannelSecurity& security = {});

// Sends `tensors` as version `version` (UpdateWeights; `source` goes to
// the header), retrying on UNAVAILABLE as options.retry says: through
// `shared` when given (header only; in kAuto a FAILED_PRECONDITION from the
// rollout sends the stream instead), else as a stream. `client` should come
// from ConnectRollout (a client's default deadline would bound the whole
// push). A failed push's message names the version, the rollout and the
// last attempt.
PushResult PushWeights(client::RolloutClient& client,
                       const common::TensorMap& tensors, uint64_t version,
                       const std::string& source, const PushOptions& options,
                       const common::SharedWeightsFile* shared = nullptr);

// INVALID_ARGUMENT unless 1 <= streams <= common::kMaxWeightStreams.
absl::Status CheckPushStreams(int streams);

// Pushes to every client in parallel (one thread each); results in the
// clients' order. Chooses each client's path as options.path says (one
// GetModelInfo per client in kAuto) and writes the shared buffer once for
// all the clients that use it.
std::vector<PushResult> PushToAll(
    const std::vector<client::RolloutClient*>& clients,
    const common::TensorMap& tensors, uint64_t version,
    const std::string& source, const PushOptions& options);

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_WEIGHT_PUSH_H_
