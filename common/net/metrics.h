// Prometheus helpers shared by the rollout and learner services: an HTTP
// exposer serving /metrics, and the metrics every lockstep service exports
// (lockstep_build_info, lockstep_weight_version). Metric naming follows
// DESIGN.md §5: prefix `lockstep_`, base units, `_total` on counters.
#ifndef LOCKSTEP_COMMON_NET_METRICS_H_
#define LOCKSTEP_COMMON_NET_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lockstep::common {

// The lockstep release reported in lockstep_build_info{version}.
#ifdef LOCKSTEP_VERSION_STRING
inline constexpr char kLockstepVersion[] = LOCKSTEP_VERSION_STRING;
#else
inline constexpr char kLockstepVersion[] = "0.1.0";
#endif

// Serves one prometheus::Registry at http://host:port/metrics (text format
// 0.0.4). A minimal HTTP/1.x server: one thread multiplexes every connection
// (poll over non-blocking sockets), so idle, slow or malicious clients cannot
// delay a scrape — each connection gets kRequestTimeout to send its request
// head (at most kMaxRequestBytes) and again to take its response, and at most
// kMaxConnections are open at once. Not prometheus-cpp's
// civetweb Exposer: civetweb starts its threads with a fixed small stack that
// glibc refuses in processes whose static TLS is large (any process that also
// loads LibTorch), so the Exposer cannot start in our services.
class MetricsServer {
 public:
  // Binds host:port (port 0: the kernel picks a free port; port() reports
  // it) and starts serving `registry` (a new, empty one when null). `host` is
  // a numeric IPv4/IPv6 address ("0.0.0.0", "127.0.0.1", "::") or
  // "localhost". UNAVAILABLE when the address cannot be bound,
  // INVALID_ARGUMENT for a port outside [0, 65535] or a bad host.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host, int port,
      std::shared_ptr<prometheus::Registry> registry = nullptr);
  // Same, and when `bearer_token` is not empty every request but /healthz
  // must carry "Authorization: Bearer <token>" (scheme and header name
  // case-insensitive; 401 otherwise). Prometheus sends it with
  // `authorization: {credentials_file: ...}` in its scrape config.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry,
      const std::string& bearer_token);

  ~MetricsServer();
  // Limits per connection (see the class comment).
  static constexpr absl::Duration kRequestTimeout = absl::Seconds(5);
  static constexpr size_t kMaxRequestBytes = 16384;
  static constexpr size_t kMaxConnections = 256;

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  const std::string& host() const { return host_; }
  // The bound port (never 0).
  int port() const { return port_; }
  // "host:port" as bound.
  std::string address() const;
  // The registry served; register metric families on it.
  const std::shared_ptr<prometheus::Registry>& registry() const {
    return registry_;
  }

 private:
  MetricsServer() = default;

  void Serve();
  // The whole HTTP response to one request head.
  std::string Respond(const std::string& request) const;

  std::string host_;
  int port_ = 0;
  std::string bearer_token_;  // empty: no token required
  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // self-pipe that stops Serve()
  std::thread thread_;
};

// Labels of lockstep_build_info.
struct BuildInfo {
  std::string role;  // "rollout" or "learner"
  std::string version = kLockstepVersion;
  std::string kernels;  // "invariant" or "standard"
  std::string device;   // "cpu" or "cuda"
};

// Registers the gauge lockstep_build_info{role,version,kernels,device} = 1.
void RegisterBuildInfo(prometheus::Registry& registry, const BuildInfo& info);

// Registers the gauge lockstep_weight_version{role} (the weight version the
// service holds) and returns it (owned by `registry`).
prometheus::Gauge& RegisterWeightVersion(prometheus::Registry& registry,
                                         std::string_view role);

// Bucket boundaries in seconds for latencies from 100 us to 60 s
// (1-2.5-5 steps).
prometheus::Histogram::BucketBoundaries LatencyBuckets();

// Bucket boundaries start, start*factor, ... (count boundaries).
prometheus::Histogram::BucketBoundaries ExponentialBuckets(double start,
                                                           double factor,
                                                           int count);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_NET_METRICS_H_
