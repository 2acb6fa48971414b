#include "sdk/cli/commands/push_weights.h"

#include <iostream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cli/output.h"
#include "sdk/cpp/rollout_client.h"

namespace lockstep::cli {
namespace {

using client::CallOptions;
using client::ClientOptions;

absl::StatusOr<int> RunPushWeights(const Args& args) {
  if (args.positional().size() != 1) {
    return Usage("push-weights takes one MODEL_DIR (or .safetensors file)");
  }
  client::WeightUploadOptions upload;
  absl::StatusOr<int64_t> version = args.GetInt("version", 0);
  absl::StatusOr<int64_t> chunk =
      args.GetInt("chunk_bytes", client::kDefaultWeightChunkBytes);
  if (!version.ok()) return Usage(std::string(version.status().message()));
  if (!chunk.ok()) return Usage(std::string(chunk.status().message()));
  if (*version < 0) return Usage("--version must be >= 1");
  upload.target_version = static_cast<uint64_t>(*version);
  upload.chunk_bytes = static_cast<size_t>(*chunk);
  upload.source = args.Get("source", "lockstep push-weights");
  absl::StatusOr<ClientOptions> o =
      MakeClientOptions(args, "rollout", kDefaultRollout);
  if (!o.ok()) return o.status();
  auto c = client::RolloutClient::Create(*o);
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::UpdateWeightsResponse> r = (*c)->UpdateWeightsFromFile(
      args.positional()[0], upload, CallOptions(), !args.GetBool("no_convert"));
  if (!r.ok()) return r.status();
  if (args.GetBool("json")) {
    std::cout << ToJson(*r) << "\n";
    return 0;
  }
  std::cout << absl::StrFormat(
      "rollout %s now serves weight version %d (was %d): %d tensors, %d bytes, "
      "%.3f s (swap %.3f s, %d sequences preempted)\n",
      o->target, r->weight_version(), r->previous_version(), r->tensors(),
      r->bytes(), r->duration_seconds(), r->swap_seconds(),
      r->preempted_sequences());
  return 0;
}

}  // namespace

Command PushWeightsCommand() {
  Command p{"push-weights",
            "upload a safetensors checkpoint to a rollout (UpdateWeights)",
            "MODEL_DIR|FILE.safetensors [flags]",
            "Streams the weights of MODEL_DIR (model.safetensors, or\n"
            "model.safetensors.index.json and its shards) or the file in "
            "1 MiB CRC-32C\n"
            "checked chunks; the rollout verifies and swaps them in "
            "atomically. Tensors\n"
            "are converted to the served storage dtype unless "
            "--no_convert.\n"
            "Example: lockstep push-weights /tmp/model --version=5",
            ConnectionFlags(true, false),
            RunPushWeights,
            /*takes_arguments=*/true};
  std::vector<FlagSpec> own = {
      {"version", "V", "target weight version (0: served version + 1)", "0"},
      {"source", "TEXT", "free text for the server's log",
       "lockstep push-weights"},
      {"chunk_bytes", "N", "payload bytes per chunk (<= 4 MiB)", "1048576"},
      {"no_convert", "", "send the file's dtype even if the model's differs"}};
  p.flags.insert(p.flags.begin(), own.begin(), own.end());
  return p;
}

}  // namespace lockstep::cli
