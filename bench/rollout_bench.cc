// rollout_bench: a bounded load generator for rollout_service over gRPC on
// loopback. For each model config (tiny, 100m) and kernel mode (invariant,
// standard) it starts one server (generating a seeded random checkpoint
// first), then at each concurrency level C runs C client threads that each
// send --requests_per_client GenerateStream requests back to back and
// measures, client-side:
//   decode tokens/s  generated tokens / wall time of the level;
//   TPOT p50 / p99   per sample, (last token time - first token time) /
//                    (tokens - 1), across samples (time per output token);
//   ITL p50 / p99    gaps between consecutive streamed tokens of a sample
//                    (bursty when the server batches several steps' tokens
//                    into back-to-back messages, hence TPOT too).
// --samples_per_prompt=n asks n samples of each prompt (GenerateRequest.n,
// the RL shape: 128 clients x 1 prompt x n = 8); gaps and TPOT are per sample.
// Results are Google Benchmark counters (one benchmark per config/mode/C,
// manual time = wall time) plus a markdown table with the
// invariant/standard throughput ratio at the end.
// --step_variants=legacy,graphs (CUDA) starts one server per variant with
// LOCKSTEP_CUDA_STEP=<variant> (common/model/model.h: the Model::Step
// implementation), for before/after rows in one run.
//
//   rollout_bench [--configs=tiny,100m] [--modes=invariant,standard]
//                 [--concurrency=1,8,32,64] [--prompt_len=32] [--max_tokens=64]
//                 [--requests_per_client=2] [--samples_per_prompt=1]
//                 [--rollout_binary=PATH]
//                 [--step_variants=legacy,eager,graphs]
//                 [--threads=N] [benchmark flags...]
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/formats/model_generator.h"
#include "lockstep/v1/rollout.grpc.pb.h"

namespace {

struct Flags {
  std::vector<std::string> configs = {"tiny", "100m"};
  std::vector<std::string> modes = {"invariant", "standard"};
  std::vector<int> concurrency = {1, 8, 32, 64};
  int prompt_len = 32;
  int max_tokens = 64;
  int requests_per_client = 2;
  int samples_per_prompt = 1;  // GenerateRequest.n (the RL shape: 8)
  int threads = 0;  // kernel threads of the server (0: its default)
  std::string binary;
  std::string work_dir;
  std::string device = "cpu";            // --device of the server
  std::vector<std::string> server_args;  // further server flags
  std::vector<std::string> step_variants;  // LOCKSTEP_CUDA_STEP values; empty: unset
};
Flags g_flags;

// A rollout_service child process.
class Server {
 public:
  // `step_variant`: LOCKSTEP_CUDA_STEP of the child (empty: inherited).
  static std::unique_ptr<Server> Start(const std::string& binary,
                                       const std::vector<std::string>& flags,
                                       const std::string& step_variant) {
    std::vector<std::string> args = {binary, "--host=127.0.0.1", "--port=0",
                                     "--metrics_port=0"};
    args.insert(args.end(), flags.begin(), flags.end());
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return nullptr;
    const pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(fds[1], STDOUT_FILENO);
      if (!step_variant.empty()) setenv("LOCKSTEP_CUDA_STEP", step_variant.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    auto s = std::make_unique<Server>();
    s->pid_ = pid;
    std::string buf;
    char chunk[1024];
    for (;;) {
      const ssize_t n = read(fds[0], chunk, sizeof(chunk));
      if (n <= 0) {
        close(fds[0]);
        return nullptr;
      }
      buf.append(chunk, n);
      const size_t at = buf.find("listening grpc=");
      const size_t eol = at == std::string::npos ? at : buf.find('\n', at);
      if (eol != std::string::npos) {
        const std::string line = buf.substr(at, eol - at);
        const size_t b = line.find('=') + 1;
        s->address_ = line.substr(b, line.find(' ', b) - b);
        break;
      }
    }
    close(fds[0]);
    return s;
  }
  ~Server() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status;
      waitpid(pid_, &status, 0);
    }
  }
  const std::string& address() const { return address_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
};

std::map<std::string, std::unique_ptr<Server>> g_servers;  // "config/mode/variant"
std::set<Server*> g_warm;

Server* GetServer(const std::string& config, const std::string& mode,
                  const std::string& variant) {
  const std::string key = config + "/" + mode + "/" + variant;
  auto it = g_servers.find(key);
  if (it != g_servers.end()) return it->second.get();
  // Only one server at a time: they would share the CPU.
  g_servers.clear();
  g_warm.clear();
  const std::string dir = g_flags.work_dir + "/" + config;
  if (!std::filesystem::exists(dir + "/config.json")) {
    auto cfg = lockstep::common::PresetConfig(config);
    if (!cfg.ok()) {
      std::fprintf(stderr, "%s\n", cfg.status().ToString().c_str());
      return nullptr;
    }
    absl::Status s = lockstep::common::GenerateModel(*cfg, 1, dir);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return nullptr;
    }
  }
  std::vector<std::string> flags = {"--model_dir=" + dir, "--kernels=" + mode,
                                    "--device=" + g_flags.device,
                                    "--max_batch_tokens=512",
                                    "--kv_cache_bytes=1073741824"};
  // Later flags win, so --server_args can override the defaults above.
  flags.insert(flags.end(), g_flags.server_args.begin(), g_flags.server_args.end());
  if (g_flags.threads > 0)
    flags.push_back(absl::StrCat("--num_threads=", g_flags.threads));
  auto server = Server::Start(g_flags.binary, flags, variant);
  if (server == nullptr) return nullptr;
  Server* raw = server.get();
  g_servers[key] = std::move(server);
  return raw;
}

struct LevelResult {
  double seconds = 0;
  int64_t tokens = 0;
  std::vector<double> gaps;  // seconds
  std::vector<double> tpot;  // seconds, one per sample
  int errors = 0;
};

LevelResult RunLevel(const std::string& address, int concurrency,
                     int64_t vocab) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = lockstep::v1::RolloutService::NewStub(channel);
  LevelResult result;
  std::mutex mu;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937_64 rng(c * 7919 + concurrency);
      std::vector<double> gaps;
      std::vector<double> tpot;
      int64_t tokens = 0;
      int errors = 0;
      for (int r = 0; r < g_flags.requests_per_client; ++r) {
        lockstep::v1::GenerateRequest req;
        auto* p = req.add_prompts();
        for (int i = 0; i < g_flags.prompt_len; ++i)
          p->add_token_ids(rng() % vocab);
        req.mutable_sampling()->set_seed(rng());
        req.mutable_sampling()->set_max_tokens(g_flags.max_tokens);
        req.mutable_sampling()->set_ignore_eos(true);
        req.set_n(g_flags.samples_per_prompt);
        grpc::ClientContext ctx;
        auto reader = stub->GenerateStream(&ctx, req);
        lockstep::v1::GenerateStreamResponse m;
        // Per sample of the request: first and last token times, tokens.
        struct SampleClock {
          std::chrono::steady_clock::time_point first, last;
          int64_t tokens = 0;
        };
        std::map<uint32_t, SampleClock> samples;
        while (reader->Read(&m)) {
          const auto now = std::chrono::steady_clock::now();
          if (m.token_ids_size() == 0) continue;
          SampleClock& sc = samples[m.sample_index()];
          if (sc.tokens > 0) {
            const double gap =
                std::chrono::duration<double>(now - sc.last).count() /
                m.token_ids_size();
            for (int k = 0; k < m.token_ids_size(); ++k) gaps.push_back(gap);
          } else {
            sc.first = now;
          }
          sc.last = now;
          sc.tokens += m.token_ids_size();
          tokens += m.token_ids_size();
        }
        for (const auto& [index, sc] : samples) {
          if (sc.tokens > 1) {
            tpot.push_back(std::chrono::duration<double>(sc.last - sc.first).count() /
                           (sc.tokens - 1));
          }
        }
        if (!reader->Finish().ok()) ++errors;
      }
      std::lock_guard<std::mutex> lock(mu);
      result.tokens += tokens;
      result.errors += errors;
      result.gaps.insert(result.gaps.end(), gaps.begin(), gaps.end());
      result.tpot.insert(result.tpot.end(), tpot.begin(), tpot.end());
    });
  }
  for (auto& t : clients) t.join();
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  return result;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i =
      std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

struct Row {
  std::string config, mode, variant;
  int concurrency;
  double tokens_per_s, tpot50_ms, tpot99_ms, p50_ms, p99_ms;
};
std::vector<Row> g_rows;

void BM_Rollout(benchmark::State& state, std::string config, std::string mode,
                std::string variant, int concurrency) {
  Server* server = GetServer(config, mode, variant);
  if (server == nullptr) {
    state.SkipWithError("cannot start rollout_service");
    return;
  }
  auto cfg = lockstep::common::PresetConfig(config);
  const int64_t vocab = cfg.ok() ? cfg->vocab_size : 64;
  // Warm-up of a fresh server (first touches of weights and KV pages).
  if (g_warm.insert(server).second) RunLevel(server->address(), 1, vocab);
  LevelResult r;
  for (auto _ : state) {
    r = RunLevel(server->address(), concurrency, vocab);
    state.SetIterationTime(r.seconds);
  }
  if (r.errors > 0) state.SkipWithError("requests failed");
  const double tps = r.tokens / r.seconds;
  state.counters["tokens_per_s"] = tps;
  state.counters["itl_p50_ms"] = Percentile(r.gaps, 0.5) * 1e3;
  state.counters["itl_p99_ms"] = Percentile(r.gaps, 0.99) * 1e3;
  state.counters["tpot_p50_ms"] = Percentile(r.tpot, 0.5) * 1e3;
  state.counters["tpot_p99_ms"] = Percentile(r.tpot, 0.99) * 1e3;
  state.counters["tokens"] = static_cast<double>(r.tokens);
  g_rows.push_back(
      {config, mode, variant, concurrency, tps, Percentile(r.tpot, 0.5) * 1e3,
       Percentile(r.tpot, 0.99) * 1e3, Percentile(r.gaps, 0.5) * 1e3,
       Percentile(r.gaps, 0.99) * 1e3});
}

std::vector<std::string> SplitList(const std::string& v) {
  return absl::StrSplit(v, ',', absl::SkipEmpty());
}

// Consumes our --flags, leaves the rest to Google Benchmark.
void ParseFlags(int* argc, char** argv) {
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = absl::StrCat("--", name, "=");
      return a.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("configs")) {
      g_flags.configs = SplitList(v);
    } else if (const char* v = value("modes")) {
      g_flags.modes = SplitList(v);
    } else if (const char* v = value("concurrency")) {
      g_flags.concurrency.clear();
      for (const auto& s : SplitList(v))
        g_flags.concurrency.push_back(std::stoi(s));
    } else if (const char* v = value("prompt_len")) {
      g_flags.prompt_len = std::stoi(v);
    } else if (const char* v = value("max_tokens")) {
      g_flags.max_tokens = std::stoi(v);
    } else if (const char* v = value("requests_per_client")) {
      g_flags.requests_per_client = std::stoi(v);
    } else if (const char* v = value("samples_per_prompt")) {
      g_flags.samples_per_prompt = std::stoi(v);
    } else if (const char* v = value("threads")) {
      g_flags.threads = std::stoi(v);
    } else if (const char* v = value("rollout_binary")) {
      g_flags.binary = v;
    } else if (const char* v = value("work_dir")) {
      g_flags.work_dir = v;
    } else if (const char* v = value("device")) {
      g_flags.device = v;
    } else if (const char* v = value("step_variants")) {
      g_flags.step_variants = SplitList(v);
    } else if (const char* v = value("server_args")) {
      g_flags.server_args = SplitList(v);
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  ParseFlags(&argc, argv);
  if (g_flags.binary.empty()) {
    // build/bench/rollout_bench -> build/rollout_service/rollout_service
    const auto self = std::filesystem::read_symlink("/proc/self/exe");
    g_flags.binary = (self.parent_path().parent_path() / "rollout_service" /
                      "rollout_service")
                         .string();
  }
  bool own_dir = false;
  if (g_flags.work_dir.empty()) {
    char templ[] = "/tmp/rollout-bench-XXXXXX";
    g_flags.work_dir = mkdtemp(templ);
    own_dir = true;
  }
  std::vector<std::string> variants = g_flags.step_variants;
  if (variants.empty()) variants.push_back("");
  for (const auto& config : g_flags.configs) {
    for (const auto& mode : g_flags.modes) {
      for (const auto& variant : variants) {
        for (int c : g_flags.concurrency) {
          benchmark::RegisterBenchmark(
              absl::StrCat("rollout/", config, "/", mode,
                           variant.empty() ? "" : "/step:", variant,
                           "/concurrency:", c)
                  .c_str(),
              BM_Rollout, config, mode, variant, c)
              ->Iterations(1)
              ->UseManualTime()
              ->Unit(benchmark::kSecond);
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_servers.clear();

  std::printf(
      "\n| config | concurrency | mode | step | decode tokens/s | TPOT p50 (ms) | "
      "TPOT p99 (ms) "
      "| ITL p50 (ms) | ITL p99 (ms) | invariant / standard |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : g_rows) {
    std::string ratio = "";
    if (r.mode == "invariant") {
      for (const Row& o : g_rows) {
        if (o.mode == "standard" && o.config == r.config &&
            o.variant == r.variant && o.concurrency == r.concurrency &&
            o.tokens_per_s > 0) {
          ratio = absl::StrCat(
              static_cast<int>(100 * r.tokens_per_s / o.tokens_per_s + 0.5) /
                  100.0,
              "x");
        }
      }
    }
    std::printf("| %s | %d | %s | %s | %.1f | %.2f | %.2f | %.2f | %.2f | %s |\n",
                r.config.c_str(), r.concurrency, r.mode.c_str(),
                r.variant.empty() ? "-" : r.variant.c_str(), r.tokens_per_s,
                r.tpot50_ms, r.tpot99_ms, r.p50_ms, r.p99_ms, ratio.c_str());
  }
  if (own_dir) std::filesystem::remove_all(g_flags.work_dir);
  return 0;
}
