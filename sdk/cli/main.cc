// lockstep: command-line client of the lockstep rollout and learner
// services, on the C++ SDK (lockstep::client). `lockstep --help` lists the
// commands, `lockstep <command> --help` their flags. Exit status: 0 on
// success, 1 when a call fails (the message names the gRPC code), 2 for
// usage errors.
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "sdk/cli/flags.h"
#include "sdk/cpp/lockstep_client.h"

#ifndef LOCKSTEP_CLI_SOURCE_DIR
#define LOCKSTEP_CLI_SOURCE_DIR ""
#endif
#ifndef LOCKSTEP_CLI_BUILD_DIR
#define LOCKSTEP_CLI_BUILD_DIR ""
#endif

namespace lockstep::cli {
namespace {

namespace v1 = ::lockstep::v1;
using client::CallOptions;
using client::ClientOptions;

constexpr char kDefaultRollout[] = "127.0.0.1:50051";
constexpr char kDefaultLearner[] = "127.0.0.1:50052";

// Usage errors (exit status 2) are INVALID_ARGUMENT statuses whose message
// starts with "usage: "; every other error comes from a call (exit status 1).
absl::Status Usage(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("usage: ", message));
}

bool IsUsage(const absl::Status& s) {
  return absl::IsInvalidArgument(s) && absl::StartsWith(s.message(), "usage: ");
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

// ---------------------------------------------------------------------------
// Flags shared by every command.

std::vector<FlagSpec> ConnectionFlags(bool rollout, bool learner) {
  std::vector<FlagSpec> f;
  if (rollout) {
    f.push_back({"rollout", "HOST:PORT",
                 "rollout service address (env LOCKSTEP_ROLLOUT)",
                 kDefaultRollout});
  }
  if (learner) {
    f.push_back({"learner", "HOST:PORT",
                 "learner service address (env LOCKSTEP_LEARNER)",
                 kDefaultLearner});
  }
  f.push_back(
      {"timeout", "SECONDS", "deadline of each call, retries included", "60"});
  f.push_back({"retries", "N", "tries of a call answered UNAVAILABLE", "5"});
  f.push_back({"tls", "", "connect with TLS (implied by --tls_ca/--tls_cert)"});
  f.push_back({"tls_ca", "PEM", "CA bundle that signs the server certificate"});
  f.push_back({"tls_cert", "PEM", "client certificate chain (mTLS)"});
  f.push_back({"tls_key", "PEM", "client private key (mTLS)"});
  f.push_back(
      {"tls_server_name", "NAME", "name to check the server certificate for"});
  f.push_back(
      {"auth_token_file", "FILE",
       "file with the bearer token (env LOCKSTEP_AUTH_TOKEN_FILE, or the "
       "token itself in LOCKSTEP_AUTH_TOKEN)"});
  f.push_back({"json", "", "print the result as JSON (proto3 JSON mapping)"});
  f.push_back({"help", "", "show this help"});
  return f;
}

absl::StatusOr<ClientOptions> MakeClientOptions(const Args& args,
                                                const std::string& which,
                                                const std::string& fallback) {
  ClientOptions o;
  o.target = args.Get(
      which, EnvOr(which == "rollout" ? "LOCKSTEP_ROLLOUT" : "LOCKSTEP_LEARNER",
                   fallback));
  absl::StatusOr<double> timeout = args.GetDouble("timeout", 60.0);
  if (!timeout.ok()) return Usage(std::string(timeout.status().message()));
  if (*timeout <= 0) return Usage("--timeout must be > 0");
  o.default_timeout = absl::Seconds(*timeout);
  absl::StatusOr<int64_t> retries = args.GetInt("retries", 5);
  if (!retries.ok()) return Usage(std::string(retries.status().message()));
  if (*retries < 1) return Usage("--retries must be >= 1");
  o.retry.max_attempts = static_cast<int>(*retries);
  o.tls.enabled = args.GetBool("tls");
  o.tls.ca_file = args.Get("tls_ca");
  o.tls.cert_file = args.Get("tls_cert");
  o.tls.key_file = args.Get("tls_key");
  o.tls.server_name = args.Get("tls_server_name");
  if (o.tls.cert_file.empty() != o.tls.key_file.empty()) {
    return Usage("--tls_cert and --tls_key go together");
  }
  o.auth_token_file =
      args.Get("auth_token_file", EnvOr("LOCKSTEP_AUTH_TOKEN_FILE", ""));
  if (o.auth_token_file.empty())
    o.auth_token = EnvOr("LOCKSTEP_AUTH_TOKEN", "");
  return o;
}

std::string ToJson(const google::protobuf::Message& m, bool multiline = true) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = multiline;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok())
    return "{}";
  if (multiline && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string Floats(const google::protobuf::RepeatedField<float>& v) {
  std::vector<std::string> parts;
  for (float f : v) parts.push_back(absl::StrFormat("%.6g", f));
  return absl::StrJoin(parts, " ");
}

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return "running";
  }
}

const char* KernelName(v1::KernelMode m) {
  switch (m) {
    case v1::KERNEL_MODE_INVARIANT:
      return "invariant";
    case v1::KERNEL_MODE_STANDARD:
      return "standard";
    default:
      return "unspecified";
  }
}

// ---------------------------------------------------------------------------
// Commands. Each returns the exit status, or an error status.

struct Command {
  std::string name;
  std::string summary;
  std::string usage;  // after "lockstep <name>"
  std::string details;
  std::vector<FlagSpec> flags;
  absl::StatusOr<int> (*run)(const Args& args);
};

absl::StatusOr<int> RunGenerate(const Args& args) {
  std::vector<std::string> prompts = args.GetAll("prompt");
  if (prompts.empty()) return Usage("at least one --prompt=IDS is required");
  v1::GenerateRequest request;
  for (const std::string& p : prompts) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIdList(p);
    if (!ids.ok()) return Usage(std::string(ids.status().message()));
    request.add_prompts()->mutable_token_ids()->Add(ids->begin(), ids->end());
  }
  absl::StatusOr<int64_t> n = args.GetInt("n", 1);
  absl::StatusOr<int64_t> max_tokens = args.GetInt("max_tokens", 16);
  absl::StatusOr<int64_t> top_k = args.GetInt("top_k", 0);
  absl::StatusOr<int64_t> top_logprobs = args.GetInt("top_logprobs", 0);
  absl::StatusOr<int64_t> seed = args.GetInt("seed", 0);
  absl::StatusOr<double> temperature = args.GetDouble("temperature", 1.0);
  absl::StatusOr<double> top_p = args.GetDouble("top_p", 1.0);
  for (const absl::Status& s :
       {n.status(), max_tokens.status(), top_k.status(), top_logprobs.status(),
        seed.status(), temperature.status(), top_p.status()}) {
    if (!s.ok()) return Usage(std::string(s.message()));
  }
  if (*n < 1 || *max_tokens < 0 || *top_logprobs < 0) {
    return Usage("--n must be >= 1, --max_tokens and --top_logprobs >= 0");
  }
  request.set_n(static_cast<uint32_t>(*n));
  request.set_request_id(args.Get("request_id"));
  v1::SamplingParams* sp = request.mutable_sampling();
  sp->set_max_tokens(static_cast<uint32_t>(*max_tokens));
  if (args.Has("temperature"))
    sp->set_temperature(static_cast<float>(*temperature));
  if (args.Has("top_p")) sp->set_top_p(static_cast<float>(*top_p));
  sp->set_top_k(static_cast<int32_t>(*top_k));
  if (args.Has("seed")) sp->set_seed(static_cast<uint64_t>(*seed));
  sp->set_top_logprobs(static_cast<uint32_t>(*top_logprobs));
  sp->set_ignore_eos(args.GetBool("ignore_eos"));
  if (args.Has("stop")) {
    absl::StatusOr<std::vector<int32_t>> stop = ParseIdList(args.Get("stop"));
    if (!stop.ok()) return Usage(std::string(stop.status().message()));
    sp->mutable_stop_token_ids()->Add(stop->begin(), stop->end());
  }

  absl::StatusOr<ClientOptions> options =
      MakeClientOptions(args, "rollout", kDefaultRollout);
  if (!options.ok()) return options.status();
  absl::StatusOr<std::unique_ptr<client::RolloutClient>> rollout =
      client::RolloutClient::Create(*options);
  if (!rollout.ok()) return rollout.status();
  const bool json = args.GetBool("json");

  if (args.GetBool("stream")) {
    if (args.Has("trajectories_out"))
      return Usage("--trajectories_out needs unary generate");
    client::CompletionAccumulator acc;
    absl::Status s = (*rollout)->GenerateStream(request, [&](const auto& m) {
      acc.Add(m);
      if (json) {
        std::cout << ToJson(m, /*multiline=*/false) << "\n";
      } else {
        std::cout << absl::StrFormat("[prompt %d sample %d] %s",
                                     m.prompt_index(), m.sample_index(),
                                     absl::StrJoin(m.token_ids(), " "));
        if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
          std::cout << "  <" << FinishName(m.finish_reason()) << ">";
        }
        std::cout << "\n";
      }
      std::cout.flush();
      return true;
    });
    if (!s.ok()) return s;
    return 0;
  }

  absl::StatusOr<v1::GenerateResponse> response = (*rollout)->Generate(request);
  if (!response.ok()) return response.status();
  if (args.Has("trajectories_out")) {
    absl::StatusOr<double> reward = args.GetDouble("reward", 0.0);
    if (!reward.ok()) return Usage(std::string(reward.status().message()));
    const std::string path = args.Get("trajectories_out");
    std::ofstream out(path, std::ios::trunc);
    const std::string prefix = args.Get("group_prefix", "p");
    for (const v1::Completion& c : response->completions()) {
      if (c.token_ids_size() == 0) continue;
      const auto& prompt =
          request.prompts(static_cast<int>(c.prompt_index())).token_ids();
      v1::Trajectory t = client::MakeTrajectory(
          std::vector<int32_t>(prompt.begin(), prompt.end()), c,
          static_cast<float>(*reward), absl::StrCat(prefix, c.prompt_index()));
      out << ToJson(t, /*multiline=*/false) << "\n";
    }
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  if (json) {
    std::cout << ToJson(*response) << "\n";
    return 0;
  }
  for (const v1::Completion& c : response->completions()) {
    std::cout << absl::StrFormat(
        "prompt %d sample %d: %d tokens, finish=%s, weight_version=%d, "
        "seed=%d\n"
        "  tokens:   %s\n  logprobs: %s\n",
        c.prompt_index(), c.sample_index(), c.token_ids_size(),
        FinishName(c.finish_reason()), c.weight_version(), c.seed(),
        absl::StrJoin(c.token_ids(), " "), Floats(c.logprobs()));
  }
  return 0;
}

absl::StatusOr<int> RunScore(const Args& args) {
  std::vector<std::string> seqs = args.GetAll("tokens");
  if (seqs.empty()) return Usage("at least one --tokens=IDS is required");
  std::vector<std::string> lens = args.GetAll("prompt_len");
  if (lens.empty()) return Usage("--prompt_len=N is required");
  if (lens.size() != 1 && lens.size() != seqs.size()) {
    return Usage("give one --prompt_len for all sequences or one per --tokens");
  }
  v1::ComputeLogprobsRequest request;
  for (size_t i = 0; i < seqs.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIdList(seqs[i]);
    if (!ids.ok()) return Usage(std::string(ids.status().message()));
    int64_t len;
    if (!absl::SimpleAtoi(lens.size() == 1 ? lens[0] : lens[i], &len) ||
        len < 0) {
      return Usage("--prompt_len must be a non-negative integer");
    }
    v1::ScoredSequence* s = request.add_sequences();
    s->mutable_token_ids()->Add(ids->begin(), ids->end());
    s->set_prompt_len(static_cast<uint32_t>(len));
  }
  absl::StatusOr<int64_t> top = args.GetInt("top_logprobs", 0);
  if (!top.ok()) return Usage(std::string(top.status().message()));
  request.set_top_logprobs(static_cast<uint32_t>(*top));
  if (args.Has("weight_version")) {
    absl::StatusOr<int64_t> v = args.GetInt("weight_version", 0);
    if (!v.ok()) return Usage(std::string(v.status().message()));
    request.set_weight_version(static_cast<uint64_t>(*v));
  }
  const std::string on = args.Get("on", "rollout");
  absl::StatusOr<v1::ComputeLogprobsResponse> response;
  if (on == "rollout") {
    absl::StatusOr<ClientOptions> o =
        MakeClientOptions(args, "rollout", kDefaultRollout);
    if (!o.ok()) return o.status();
    auto c = client::RolloutClient::Create(*o);
    if (!c.ok()) return c.status();
    response = (*c)->ComputeLogprobs(request);
  } else if (on == "learner") {
    absl::StatusOr<ClientOptions> o =
        MakeClientOptions(args, "learner", kDefaultLearner);
    if (!o.ok()) return o.status();
    auto c = client::LearnerClient::Create(*o);
    if (!c.ok()) return c.status();
    response = (*c)->ComputeLogprobs(request);
  } else {
    return Usage("--on must be rollout or learner");
  }
  if (!response.ok()) return response.status();
  if (args.GetBool("json")) {
    std::cout << ToJson(*response) << "\n";
    return 0;
  }
  std::cout << "scored on the " << on << " with weight version "
            << response->weight_version() << "\n";
  for (int i = 0; i < response->results_size(); ++i) {
    double sum = 0;
    for (float f : response->results(i).logprobs()) sum += f;
    std::cout << absl::StrFormat("sequence %d: sum=%.6g logprobs: %s\n", i, sum,
                                 Floats(response->results(i).logprobs()));
  }
  return 0;
}

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

absl::StatusOr<std::vector<v1::Trajectory>> ReadTrajectories(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<v1::Trajectory> out;
  google::protobuf::util::JsonParseOptions po;
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  if (!stripped.empty() && stripped.front() == '[') {
    // A JSON array: wrap it as a SubmitTrajectoriesRequest.
    v1::SubmitTrajectoriesRequest r;
    auto s = google::protobuf::util::JsonStringToMessage(
        absl::StrCat("{\"trajectories\":", stripped, "}"), &r, po);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.ToString()));
    }
    out.assign(r.trajectories().begin(), r.trajectories().end());
    return out;
  }
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    v1::Trajectory t;
    auto s =
        google::protobuf::util::JsonStringToMessage(std::string(line), &t, po);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": ", s.ToString()));
    }
    out.push_back(std::move(t));
  }
  return out;
}

absl::StatusOr<int> RunTrainStep(const Args& args) {
  absl::StatusOr<ClientOptions> o =
      MakeClientOptions(args, "learner", kDefaultLearner);
  if (!o.ok()) return o.status();
  auto c = client::LearnerClient::Create(*o);
  if (!c.ok()) return c.status();
  const bool json = args.GetBool("json");
  if (args.Has("trajectories")) {
    absl::StatusOr<std::vector<v1::Trajectory>> t =
        ReadTrajectories(args.Get("trajectories"));
    if (!t.ok()) return t.status();
    if (t->empty()) return Usage("--trajectories file holds no trajectories");
    auto sub = (*c)->SubmitTrajectories(*t);
    if (!sub.ok()) return sub.status();
    if (!json) {
      std::cout << absl::StrFormat(
          "submitted %d trajectories (%d buffered in %d groups)\n",
          sub->accepted(), sub->buffered_trajectories(),
          sub->buffered_groups());
    }
  }
  v1::TrainStepRequest request;
  for (const std::string& g : args.GetAll("group")) {
    for (absl::string_view id : absl::StrSplit(g, ',', absl::SkipEmpty())) {
      request.add_group_ids(std::string(id));
    }
  }
  if (args.Has("expected_version")) {
    absl::StatusOr<int64_t> v = args.GetInt("expected_version", 0);
    if (!v.ok()) return Usage(std::string(v.status().message()));
    request.set_expected_version(static_cast<uint64_t>(*v));
  }
  request.set_skip_push(args.GetBool("skip_push"));
  absl::StatusOr<v1::TrainStepResponse> r = (*c)->TrainStep(request);
  if (!r.ok()) return r.status();
  if (json) {
    std::cout << ToJson(*r) << "\n";
    return 0;
  }
  const v1::MismatchStats& m = r->mismatch();
  std::cout << absl::StrFormat(
      "step %d -> weight version %d: loss=%.6g policy_loss=%.6g grad_norm=%.6g "
      "clip_fraction=%.4g\n"
      "  %d trajectories in %d groups, %d tokens; reward mean=%.4g std=%.4g "
      "min=%.4g max=%.4g\n"
      "  mismatch: %d tokens compared, %d mismatched (exact %.4f%%), %d stale, "
      "max |dlogprob|=%.6g\n",
      r->step(), r->weight_version(), r->loss(), r->policy_loss(),
      r->grad_norm(), r->clip_fraction(), r->num_trajectories(),
      r->num_groups(), r->num_tokens(), r->reward().mean(), r->reward().std(),
      r->reward().min(), r->reward().max(), m.tokens_compared(),
      m.tokens_mismatched(), 100.0 * m.exact_fraction(), m.tokens_stale(),
      m.max_abs_diff());
  for (const v1::WeightPushResult& p : r->pushes()) {
    std::cout << absl::StrFormat(
        "  push to %s: %s (version %d, %d bytes, %.3f s)\n", p.endpoint(),
        p.code() == 0 ? "OK"
                      : absl::StrCat("code ", p.code(), ": ", p.message()),
        p.weight_version(), p.bytes(), p.duration_seconds());
  }
  return 0;
}

absl::StatusOr<int> RunStats(const Args& args) {
  absl::StatusOr<ClientOptions> o =
      MakeClientOptions(args, "learner", kDefaultLearner);
  if (!o.ok()) return o.status();
  auto c = client::LearnerClient::Create(*o);
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::LearnerStats> s = (*c)->GetStats();
  if (!s.ok()) return s.status();
  if (args.GetBool("json")) {
    std::cout << ToJson(*s) << "\n";
    return 0;
  }
  const v1::MismatchStats& m = s->mismatch_total();
  std::cout << absl::StrFormat(
      "learner %s: step %d, weight version %d, kernels=%s, %d trajectories "
      "buffered "
      "(%d groups, %d tokens)\n"
      "mismatch (all steps): %d tokens compared, %d mismatched, exact %.4f%%, "
      "max |dlogprob|=%.6g, mean |dlogprob|=%.6g, KL(k3)=%.6g, %d stale\n",
      o->target, s->step(), s->weight_version(), KernelName(s->kernel_mode()),
      s->buffered_trajectories(), s->buffered_groups(), s->buffered_tokens(),
      m.tokens_compared(), m.tokens_mismatched(), 100.0 * m.exact_fraction(),
      m.max_abs_diff(), m.mean_abs_diff(), m.kl_k3(), m.tokens_stale());
  if (s->has_last_step()) {
    const v1::MismatchStats& l = s->last_step().mismatch();
    std::cout << absl::StrFormat(
        "last step: %d tokens compared, %d mismatched, max |dlogprob|=%.6g, "
        "loss=%.6g, reward mean=%.4g\n",
        l.tokens_compared(), l.tokens_mismatched(), l.max_abs_diff(),
        s->last_step().loss(), s->last_step().reward().mean());
  }
  for (const v1::RolloutStatus& r : s->rollouts()) {
    std::cout << absl::StrFormat(
        "rollout %s: version %d, kernels=%s, pushes ok=%d failed=%d\n",
        r.endpoint(), r.weight_version(), KernelName(r.kernel_mode()),
        r.pushes_ok(), r.pushes_failed());
  }
  return 0;
}

absl::StatusOr<int> RunHealth(const Args& args) {
  bool check_rollout = args.Has("rollout");
  bool check_learner = args.Has("learner");
  if (!check_rollout && !check_learner) {
    check_rollout = !EnvOr("LOCKSTEP_ROLLOUT", "").empty() ||
                    EnvOr("LOCKSTEP_LEARNER", "").empty();
    check_learner = !EnvOr("LOCKSTEP_LEARNER", "").empty() ||
                    EnvOr("LOCKSTEP_ROLLOUT", "").empty();
  }
  struct Row {
    std::string service, target, status;
  };
  std::vector<Row> rows;
  bool all_ok = true;
  auto check = [&](const std::string& which, const std::string& fallback,
                   const std::string& service) -> absl::Status {
    absl::StatusOr<ClientOptions> o = MakeClientOptions(args, which, fallback);
    if (!o.ok()) return o.status();
    auto conn = client::Connection::Create(*o);
    if (!conn.ok()) return conn.status();
    absl::StatusOr<client::HealthStatus> h = (*conn)->CheckHealth(service);
    Row row{service, o->target, ""};
    if (h.ok()) {
      row.status = client::HealthStatusName(*h);
      all_ok = all_ok && *h == client::HealthStatus::kServing;
    } else {
      row.status = absl::StrCat(absl::StatusCodeToString(h.status().code()),
                                ": ", h.status().message());
      all_ok = false;
    }
    rows.push_back(row);
    return absl::OkStatus();
  };
  if (check_rollout) {
    absl::Status s =
        check("rollout", kDefaultRollout, client::kRolloutServiceName);
    if (!s.ok()) return s;
  }
  if (check_learner) {
    absl::Status s =
        check("learner", kDefaultLearner, client::kLearnerServiceName);
    if (!s.ok()) return s;
  }
  if (args.GetBool("json")) {
    std::cout << "{";
    for (size_t i = 0; i < rows.size(); ++i) {
      std::cout << (i ? ", " : "") << "\"" << rows[i].service
                << "\": {\"target\": \"" << rows[i].target
                << "\", \"status\": \""
                << absl::StrReplaceAll(rows[i].status,
                                       {{"\\", "\\\\"}, {"\"", "\\\""}})
                << "\"}";
    }
    std::cout << "}\n";
  } else {
    for (const Row& r : rows)
      std::cout << r.service << " " << r.target << ": " << r.status << "\n";
  }
  return all_ok ? 0 : 1;
}

absl::StatusOr<int> RunDemo(const Args& args) {
  std::string source = args.Get(
      "source_dir", EnvOr("LOCKSTEP_SOURCE_DIR", LOCKSTEP_CLI_SOURCE_DIR));
  std::string build = args.Get(
      "build_dir", EnvOr("LOCKSTEP_BUILD_DIR", LOCKSTEP_CLI_BUILD_DIR));
  if (source.empty() || build.empty()) {
    return Usage(
        "--source_dir and --build_dir are needed (this binary was built "
        "without them)");
  }
  const std::string script = source + "/scripts/demo.sh";
  if (access(script.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat(script, " not found or not executable"));
  }
  for (const auto& [flag, env] :
       std::vector<std::pair<std::string, std::string>>{
           {"steps", "DEMO_STEPS"},
           {"task", "DEMO_TASK"},
           {"lr", "DEMO_LR"},
           {"prompts", "DEMO_PROMPTS"},
           {"samples", "DEMO_SAMPLES"},
           {"linger", "DEMO_LINGER"}}) {
    if (args.Has(flag)) setenv(env.c_str(), args.Get(flag).c_str(), 1);
  }
  if (args.GetBool("keep")) setenv("DEMO_KEEP", "1", 1);
  std::fflush(stdout);
  execl(script.c_str(), script.c_str(), build.c_str(),
        static_cast<char*>(nullptr));
  return absl::InternalError(
      absl::StrCat("cannot run ", script, ": ", std::strerror(errno)));
}

std::vector<Command> Commands() {
  std::vector<Command> c;
  {
    Command g{
        "generate",
        "sample completions from a rollout (Generate / GenerateStream)",
        "--prompt=IDS [--prompt=IDS ...] [flags]",
        "Prints every completion's tokens and per-token logprobs (raw model\n"
        "distribution). With --stream, tokens are printed as they are "
        "sampled.\n"
        "Example: lockstep generate --rollout=127.0.0.1:50051 --prompt=1,2,3 "
        "--n=2 "
        "--max_tokens=8 --seed=7",
        ConnectionFlags(true, false),
        RunGenerate};
    std::vector<FlagSpec> own = {
        {"prompt", "IDS", "prompt token ids, comma separated", "", true},
        {"n", "N", "samples per prompt", "1"},
        {"max_tokens", "N", "tokens to generate per sample (0: until stop)",
         "16"},
        {"temperature", "T", "sampling temperature (0: greedy)", "1"},
        {"top_k", "K", "keep the K most likely tokens (0: off)", "0"},
        {"top_p", "P", "nucleus mass in (0, 1]", "1"},
        {"seed", "S", "base seed (unset: the server picks one)"},
        {"stop", "IDS", "stop token ids, comma separated"},
        {"ignore_eos", "", "do not stop at end-of-sequence ids"},
        {"top_logprobs", "N",
         "also return the N most likely tokens per position", "0"},
        {"request_id", "ID", "request id echoed by the server"},
        {"stream", "", "use GenerateStream and print tokens as they arrive"},
        {"trajectories_out", "FILE",
         "also write the completions as lockstep.v1.Trajectory JSON Lines for "
         "`lockstep train-step --trajectories` (one group per prompt)"},
        {"reward", "R", "reward written to --trajectories_out", "0"},
        {"group_prefix", "P",
         "group id of prompt i in --trajectories_out: P<i>", "p"}};
    g.flags.insert(g.flags.begin(), own.begin(), own.end());
    c.push_back(g);
  }
  {
    Command s{
        "score",
        "logprobs of given token sequences (ComputeLogprobs)",
        "--tokens=IDS --prompt_len=N [flags]",
        "Scores the tokens after the first N of each sequence with the served\n"
        "weights, on the rollout (default) or the learner (--on=learner).\n"
        "Example: lockstep score --tokens=1,2,3,4,5 --prompt_len=2",
        ConnectionFlags(true, true),
        RunScore};
    std::vector<FlagSpec> own = {
        {"tokens", "IDS", "a sequence: prompt then scored tokens", "", true},
        {"prompt_len", "N", "prompt length (one for all, or one per --tokens)",
         "", true},
        {"on", "SERVICE", "rollout or learner", "rollout"},
        {"top_logprobs", "N",
         "also return the N most likely tokens per position", "0"},
        {"weight_version", "V", "fail unless this version is served"}};
    s.flags.insert(s.flags.begin(), own.begin(), own.end());
    c.push_back(s);
  }
  {
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
              RunPushWeights};
    std::vector<FlagSpec> own = {
        {"version", "V", "target weight version (0: served version + 1)", "0"},
        {"source", "TEXT", "free text for the server's log",
         "lockstep push-weights"},
        {"chunk_bytes", "N", "payload bytes per chunk (<= 4 MiB)", "1048576"},
        {"no_convert", "",
         "send the file's dtype even if the model's differs"}};
    p.flags.insert(p.flags.begin(), own.begin(), own.end());
    c.push_back(p);
  }
  {
    Command t{
        "train-step",
        "one learner optimizer step (TrainStep)",
        "[flags]",
        "Optionally submits trajectories first (--trajectories: JSON Lines, or "
        "a\n"
        "JSON array, of lockstep.v1.Trajectory in the proto3 JSON mapping), "
        "then\n"
        "trains on the buffered groups and pushes the new weights to the\n"
        "registered rollouts.\n"
        "Example: lockstep train-step --trajectories=batch.jsonl",
        ConnectionFlags(false, true),
        RunTrainStep};
    std::vector<FlagSpec> own = {
        {"trajectories", "FILE", "submit these trajectories first"},
        {"group", "IDS", "train on these group ids only (comma separated)", "",
         true},
        {"expected_version", "V",
         "apply only if the learner is at this version"},
        {"skip_push", "", "do not push the new weights to the rollouts"}};
    t.flags.insert(t.flags.begin(), own.begin(), own.end());
    c.push_back(t);
  }
  c.push_back(Command{
      "stats", "learner statistics and the logprob mismatch summary", "[flags]",
      "Prints the learner's step, weight version, buffer, the rollout vs\n"
      "learner logprob mismatch over all steps and the last one, and the\n"
      "registered rollouts.\nExample: lockstep stats --json",
      ConnectionFlags(false, true), RunStats});
  c.push_back(Command{
      "health", "gRPC health of the rollout and/or learner", "[flags]",
      "Checks grpc.health.v1 for lockstep.v1.RolloutService at --rollout and\n"
      "lockstep.v1.LearnerService at --learner (both when neither flag is\n"
      "given). Exit status 0 only when every one is SERVING. No token needed.\n"
      "Example: lockstep health --rollout=127.0.0.1:50051",
      ConnectionFlags(true, true), RunHealth});
  {
    Command d{
        "demo",
        "the end-to-end demo, as `make demo`",
        "[flags]",
        "Runs scripts/demo.sh: the learner-driven RL loop on the tiny model on "
        "CPU,\n"
        "with invariant and then standard kernels, and compares their logprob\n"
        "mismatch. Exit status 0 when the invariant run was bit-exact.",
        {},
        RunDemo};
    d.flags = {{"build_dir", "DIR", "build tree with the service binaries",
                LOCKSTEP_CLI_BUILD_DIR},
               {"source_dir", "DIR", "source tree (for scripts/demo.sh)",
                LOCKSTEP_CLI_SOURCE_DIR},
               // Defaults are the script's own (see scripts/demo.sh).
               {"steps", "N", "training steps per mode (DEMO_STEPS)"},
               {"task", "NAME", "built-in task: reverse or add (DEMO_TASK)"},
               {"lr", "LR", "learning rate (DEMO_LR)"},
               {"prompts", "N", "prompts per step (DEMO_PROMPTS)"},
               {"samples", "N", "samples per prompt (DEMO_SAMPLES)"},
               {"linger", "SECONDS",
                "keep the services up for scraping (DEMO_LINGER)"},
               {"keep", "", "keep the work directory (DEMO_KEEP=1)"},
               {"help", "", "show this help"}};
    c.push_back(d);
  }
  return c;
}

std::string MainHelp(const std::vector<Command>& commands) {
  std::string out =
      "lockstep: command-line client of the lockstep rollout and learner "
      "services.\n\n"
      "Usage: lockstep <command> [flags]     (lockstep <command> --help for "
      "its flags)\n\n"
      "Commands:\n";
  for (const Command& c : commands) {
    std::string name = c.name;
    name.resize(14, ' ');
    absl::StrAppend(&out, "  ", name, c.summary, "\n");
  }
  absl::StrAppend(
      &out,
      "\nAddresses default to $LOCKSTEP_ROLLOUT / $LOCKSTEP_LEARNER, else ",
      kDefaultRollout, " / ", kDefaultLearner,
      ".\nExit status: 0 success, 1 a call failed, 2 usage error.\n");
  return out;
}

int Main(int argc, char** argv) {
  const std::vector<Command> commands = Commands();
  if (argc < 2) {
    std::cerr << MainHelp(commands);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    std::cout << MainHelp(commands);
    return 0;
  }
  const Command* command = nullptr;
  for (const Command& c : commands) {
    if (c.name == name) command = &c;
  }
  if (command == nullptr) {
    std::cerr << "lockstep: unknown command '" << name << "'\n\n"
              << MainHelp(commands);
    return 2;
  }
  std::vector<std::string> words(argv + 2, argv + argc);
  absl::StatusOr<Args> args = ParseFlags(command->flags, words);
  if (!args.ok()) {
    std::cerr << "lockstep " << name << ": " << args.status().message()
              << " (see lockstep " << name << " --help)\n";
    return 2;
  }
  if (args->GetBool("help")) {
    std::cout << "lockstep " << name << ": " << command->summary
              << "\n\nUsage: lockstep " << name << " " << command->usage
              << "\n\n"
              << command->details << "\n\nFlags:\n"
              << FlagHelp(command->flags);
    return 0;
  }
  if (name != "push-weights" && !args->positional().empty()) {
    std::cerr << "lockstep " << name << ": unexpected argument '"
              << args->positional()[0] << "' (see lockstep " << name
              << " --help)\n";
    return 2;
  }
  absl::StatusOr<int> code = command->run(*args);
  if (!code.ok()) {
    if (IsUsage(code.status())) {
      std::cerr << "lockstep " << name << ": "
                << absl::StripPrefix(code.status().message(), "usage: ")
                << " (see lockstep " << name << " --help)\n";
      return 2;
    }
    std::cerr << "lockstep " << name << ": "
              << absl::StatusCodeToString(code.status().code()) << ": "
              << code.status().message() << "\n";
    return 1;
  }
  return *code;
}

}  // namespace
}  // namespace lockstep::cli

int main(int argc, char** argv) { return lockstep::cli::Main(argc, argv); }
