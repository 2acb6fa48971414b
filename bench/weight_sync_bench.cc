// weight_sync_bench: what a weight update and a sleep cost on a running
// rollout_service (issue 18 §5), and that neither changes a logprob bit.
// Against the rollout at --rollout serving the checkpoint --model_dir it
// measures, in one run:
//   stream    UpdateWeights with the checkpoint's tensors as chunks of
//             --chunk_mib (each size given), the whole push timed client
//             side: GB/s = tensor bytes / seconds;
//   shm       the same tensors through /dev/shm (common/wire/
//             shared_weights.h): writing the buffer, then the header-only
//             push (read + CRC + build + swap on the rollout);
//   sleep     Sleep(KV cache), WakeUp, Sleep(KV cache and weights), a
//             shared-memory push while asleep, WakeUp: the RPC times, the
//             bytes the rollout reports released, and the GPU's used memory
//             from nvidia-smi before and after (the driver's view);
// and after every update and wake-up a seeded Generate whose tokens and
// logprob bits must equal the first one's (the weights are the same
// values at every version). Exit status 1 when any comparison fails.
//
//   weight_sync_bench --rollout=127.0.0.1:PORT --model_dir=DIR
//                     [--chunk_mib=1,4] [--streams=1] [--repeats=2]
// --streams=1,4: each stream push also as that many concurrent UpdateWeights
// parts (WeightUpdateHeader.stream_count; the plan, with every CRC, computed
// once per push and timed with it), one thread each on the one channel.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/formats/safetensors.h"
#include "common/wire/shared_weights.h"
#include "common/wire/weight_stream.h"
#include "sdk/cpp/connection.h"
#include "sdk/cpp/rollout_client.h"

namespace {

namespace v1 = ::lockstep::v1;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Used GPU memory in MiB as nvidia-smi reports it (-1 without one).
double GpuUsedMiB() {
  FILE* p = popen("nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null",
                  "r");
  if (p == nullptr) return -1;
  char buf[64] = {0};
  const bool got = fgets(buf, sizeof(buf), p) != nullptr;
  pclose(p);
  double v = -1;
  if (!got || !absl::SimpleAtod(absl::StripAsciiWhitespace(buf), &v)) return -1;
  return v;
}

struct Check {
  int failures = 0;
  void Expect(bool ok, const std::string& what) {
    std::printf("check %-58s %s\n", what.c_str(), ok ? "ok" : "FAILED");
    if (!ok) ++failures;
  }
};

bool SameBits(const v1::GenerateResponse& a, const v1::GenerateResponse& b) {
  if (a.completions_size() != b.completions_size()) return false;
  for (int i = 0; i < a.completions_size(); ++i) {
    const v1::Completion& x = a.completions(i);
    const v1::Completion& y = b.completions(i);
    if (x.token_ids_size() != y.token_ids_size() ||
        !std::equal(x.token_ids().begin(), x.token_ids().end(), y.token_ids().begin()) ||
        std::memcmp(x.logprobs().data(), y.logprobs().data(), 4 * x.logprobs_size()) != 0 ||
        std::memcmp(x.sampled_logprobs().data(), y.sampled_logprobs().data(),
                    4 * x.sampled_logprobs_size()) != 0) {
      return false;
    }
  }
  return true;
}

int Fail(const absl::Status& s, const char* what) {
  std::fprintf(stderr, "weight_sync_bench: %s: %s\n", what, s.ToString().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string rollout, model_dir;
  std::vector<int> chunk_mib = {1, 4};
  std::vector<int> streams = {1};
  int repeats = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = absl::StrCat("--", name, "=");
      return a.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("rollout")) {
      rollout = v;
    } else if (const char* v = value("model_dir")) {
      model_dir = v;
    } else if (const char* v = value("repeats")) {
      repeats = std::max(1, std::atoi(v));
    } else if (const char* v = value("chunk_mib")) {
      chunk_mib.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        int c = 0;
        if (absl::SimpleAtoi(s, &c) && c >= 1 && c <= 4) chunk_mib.push_back(c);
      }
    } else if (const char* v = value("streams")) {
      streams.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(s, &n) || n < 1 ||
            n > static_cast<int>(lockstep::common::kMaxWeightStreams)) {
          std::fprintf(stderr, "--streams takes values in [1, %u]\n",
                       lockstep::common::kMaxWeightStreams);
          return 2;
        }
        streams.push_back(n);
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (rollout.empty() || model_dir.empty()) {
    std::fprintf(stderr, "usage: weight_sync_bench --rollout=HOST:PORT --model_dir=DIR\n");
    return 2;
  }
  auto ckpt = lockstep::common::SafetensorsCheckpoint::Open(model_dir);
  if (!ckpt.ok()) return Fail(ckpt.status(), "opening the checkpoint");
  std::vector<lockstep::common::WireTensor> wire;
  uint64_t bytes = 0;
  for (const lockstep::common::TensorInfo& t : (*ckpt)->tensors()) {
    lockstep::common::WireTensor w;
    w.name = t.name;
    w.dtype = lockstep::common::ToProtoDType(t.dtype);
    w.shape = t.shape;
    w.data = t.data;
    w.nbytes = t.nbytes;
    bytes += t.nbytes;
    wire.push_back(std::move(w));
  }
  // The page cache holds the checkpoint before anything is timed.
  uint64_t touch = 0;
  for (const auto& w : wire) {
    for (size_t o = 0; o < w.nbytes; o += 4096) touch += w.data[o];
  }
  lockstep::client::ClientOptions co;
  co.target = rollout;
  co.default_timeout = absl::Seconds(600);
  auto connection = lockstep::client::Connection::Create(co);
  if (!connection.ok()) return Fail(connection.status(), "connecting");
  lockstep::client::RolloutClient client(*connection);
  auto info = client.GetModelInfo();
  if (!info.ok()) return Fail(info.status(), "GetModelInfo");
  uint64_t version = info->weight_version();
  std::printf("rollout %s: %s, device %d, %.3f GB of weights in %zu tensors (touch %llu)\n",
              rollout.c_str(), model_dir.c_str(), static_cast<int>(info->device()), bytes / 1e9,
              wire.size(), static_cast<unsigned long long>(touch & 1));

  v1::GenerateRequest req;
  for (int p = 0; p < 4; ++p) {
    v1::Prompt* prompt = req.add_prompts();
    const int64_t vocab = info->config().vocab_size();
    for (int t = 0; t < 16; ++t) prompt->add_token_ids(static_cast<int32_t>((p * 131 + t * 7 + 1) % vocab));
  }
  req.set_n(2);
  req.mutable_sampling()->set_seed(7);
  req.mutable_sampling()->set_temperature(0.8f);
  req.mutable_sampling()->set_top_p(0.95f);
  req.mutable_sampling()->set_max_tokens(32);
  req.mutable_sampling()->set_ignore_eos(true);
  auto reference = client.Generate(req);
  if (!reference.ok()) return Fail(reference.status(), "Generate");
  Check check;
  auto same = [&](const std::string& what) {
    auto now = client.Generate(req);
    check.Expect(now.ok() && SameBits(*now, *reference), "logprob bits unchanged " + what);
  };

  std::printf("\n| path | chunk | seconds | GB/s | receive s | verify s | build s | swap s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int chunk : chunk_mib) {
    for (int n : streams) {
      for (int r = 0; r < repeats; ++r) {
        lockstep::common::WeightStreamOptions so;
        so.chunk_bytes = static_cast<size_t>(chunk) << 20;
        so.source = "weight_sync_bench stream";
        const uint64_t target = ++version;
        const auto t0 = Clock::now();
        absl::StatusOr<v1::UpdateWeightsResponse> resp;
        if (n == 1) {
          resp = client.UpdateWeights([&](const lockstep::client::WeightSink& sink) {
            return lockstep::common::StreamWeights(wire, target, sink, so);
          });
        } else {
          auto plan = lockstep::common::PlanWeightStream(wire, target, so);
          if (!plan.ok()) return Fail(plan.status(), "plan");
          std::vector<absl::StatusOr<v1::UpdateWeightsResponse>> parts(n);
          std::vector<std::thread> threads;
          for (int p = 0; p < n; ++p) {
            threads.emplace_back([&, p] {
              parts[p] = client.UpdateWeights([&, p](const lockstep::client::WeightSink& sink) {
                return lockstep::common::StreamWeightPart(wire, *plan, p, n, sink);
              });
            });
          }
          for (std::thread& t : threads) t.join();
          resp = parts[0];
          for (const auto& part : parts) {
            if (!part.ok()) resp = part.status();
          }
        }
        const double s = Since(t0);
        if (!resp.ok()) return Fail(resp.status(), "stream push");
        std::printf("| stream x%d | %d MiB | %.3f | %.2f | %.3f | %.3f | %.3f | %.4f |\n", n, chunk,
                    s, bytes / s / 1e9, resp->receive_seconds(), resp->verify_seconds(),
                    resp->build_seconds(), resp->swap_seconds());
        check.Expect(resp->path() == v1::WEIGHT_PATH_STREAM, "stream push reports WEIGHT_PATH_STREAM");
      }
    }
  }
  same("after stream updates");
  auto shm_push = [&](const char* label) -> absl::StatusOr<double> {
    const uint64_t target = ++version;
    const auto t0 = Clock::now();
    auto file = lockstep::common::SharedWeightsFile::Write(wire, target, "weight_sync_bench shm");
    if (!file.ok()) return file.status();
    const double write_s = Since(t0);
    const auto t1 = Clock::now();
    v1::WeightUpdate header;
    *header.mutable_header() = (*file)->header();
    auto resp = client.UpdateWeights(std::vector<v1::WeightUpdate>{header});
    const double push_s = Since(t1);
    if (!resp.ok()) return resp.status();
    const double s = Since(t0);
    std::printf("| shm%s | - | %.3f (write %.3f + push %.3f) | %.2f | %.3f | %.3f | %.3f | %.4f |\n",
                label, s, write_s, push_s, bytes / s / 1e9, resp->receive_seconds(),
                resp->verify_seconds(), resp->build_seconds(), resp->swap_seconds());
    check.Expect(resp->path() == v1::WEIGHT_PATH_SHARED_MEMORY,
                 "shm push reports WEIGHT_PATH_SHARED_MEMORY");
    return s;
  };
  for (int r = 0; r < repeats; ++r) {
    auto s = shm_push("");
    if (!s.ok()) return Fail(s.status(), "shm push");
  }
  same("after shared-memory updates");

  std::printf("\n| step | RPC s | KV bytes | weight bytes | graph bytes | device bytes freed (rollout) | GPU used MiB before -> after (nvidia-smi) |\n|---|---:|---:|---:|---:|---:|---|\n");
  auto sleep = [&](v1::SleepLevel level, const char* name) -> absl::Status {
    const double before = GpuUsedMiB();
    const auto t0 = Clock::now();
    auto r = client.Sleep(level);
    const double s = Since(t0);
    if (!r.ok()) return r.status();
    std::printf("| %s | %.3f | %llu | %llu | %llu | %llu | %.0f -> %.0f |\n", name, s,
                static_cast<unsigned long long>(r->kv_cache_bytes()),
                static_cast<unsigned long long>(r->weight_bytes()),
                static_cast<unsigned long long>(r->graph_bytes()),
                static_cast<unsigned long long>(r->device_bytes_freed()), before, GpuUsedMiB());
    return absl::OkStatus();
  };
  auto wake = [&](const char* name) -> absl::Status {
    const double before = GpuUsedMiB();
    const auto t0 = Clock::now();
    auto r = client.WakeUp();
    const double s = Since(t0);
    if (!r.ok()) return r.status();
    std::printf("| %s | %.3f | %llu | - | - | - | %.0f -> %.0f |\n", name, s,
                static_cast<unsigned long long>(r->kv_cache_bytes()), before, GpuUsedMiB());
    return absl::OkStatus();
  };
  if (absl::Status s = sleep(v1::SLEEP_LEVEL_KV_CACHE, "Sleep(KV cache)"); !s.ok()) {
    return Fail(s, "Sleep 1");
  }
  if (absl::Status s = wake("WakeUp"); !s.ok()) return Fail(s, "WakeUp");
  same("after Sleep(KV cache) + WakeUp");
  if (absl::Status s = sleep(v1::SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS, "Sleep(KV cache + weights)");
      !s.ok()) {
    return Fail(s, "Sleep 2");
  }
  check.Expect(absl::IsFailedPrecondition(client.WakeUp().status()),
               "WakeUp refused until weights are pushed");
  std::printf("\n| path | chunk | seconds | GB/s | receive s | verify s | build s | swap s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
  auto pushed = shm_push(" (while asleep)");
  if (!pushed.ok()) return Fail(pushed.status(), "shm push while asleep");
  std::printf("\n");
  if (absl::Status s = wake("WakeUp after the push"); !s.ok()) return Fail(s, "WakeUp 2");
  same("after Sleep(KV cache + weights) + push + WakeUp");
  std::printf("\nweight_sync_bench: %d check(s) failed\n", check.failures);
  return check.failures == 0 ? 0 : 1;
}
