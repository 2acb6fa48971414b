// The rollout service's gRPC adapter: lockstep.v1.RolloutService over an
// Engine, plus gRPC health (grpc.health.v1, per-service status
// "lockstep.v1.RolloutService"), reflection, and the Prometheus metrics of
// DESIGN.md §5 on a separate HTTP port. The adapter only converts, validates
// wire-level fields and records metrics; everything else is the engine's.
#ifndef LOCKSTEP_ROLLOUT_SERVICE_SERVER_H_
#define LOCKSTEP_ROLLOUT_SERVICE_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/server_security.h"
#include "common/transformer.h"
#include "rollout_service/engine.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace lockstep::common {
class MetricsServer;
}  // namespace lockstep::common

namespace lockstep::rollout {

// The gRPC service name (also the health-check service name).
inline constexpr char kRolloutServiceName[] = "lockstep.v1.RolloutService";

struct ServerOptions {
  std::string host = "0.0.0.0";  // gRPC and metrics bind address
  int port = 0;                  // gRPC port (0: pick a free one)
  int metrics_port = 0;          // /metrics port (0: pick a free one)
  // Largest request message accepted (RESOURCE_EXHAUSTED past it). Weight
  // chunks carry at most 4 MiB.
  int max_message_bytes = 16 << 20;
  // TLS / mTLS and the bearer token (common/server_security.h): the token
  // check runs in gRPC's auth filter before any handler; health and
  // reflection stay open.
  common::ServerSecurityOptions security;
  // Labels of lockstep_build_info.
  std::string device_name = "cpu";
};

class RolloutMetrics;
class RolloutServiceImpl;

// A running rollout server: engine + gRPC server + metrics exposer.
class RolloutServer {
 public:
  // Starts everything over `model`. Errors: the engine's Create errors, and
  // UNAVAILABLE when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<RolloutServer>> Start(
      std::shared_ptr<const common::Model> model,
      const EngineOptions& engine_options, const ServerOptions& options);

  // Drains (if not done) and stops.
  ~RolloutServer();

  // "host:port" of the gRPC and metrics listeners (bound ports).
  std::string grpc_address() const;
  std::string metrics_address() const;
  int port() const { return port_; }
  int metrics_port() const;

  Engine& engine() { return *engine_; }

  // Graceful drain: health becomes NOT_SERVING, new requests fail with
  // UNAVAILABLE, requests in flight get up to `grace` to finish (then they
  // are cancelled with UNAVAILABLE), and the gRPC server shuts down.
  void Drain(absl::Duration grace, absl::Duration announce = absl::Seconds(2));

 private:
  RolloutServer() = default;

  ServerOptions options_;
  int port_ = 0;
  bool drained_ = false;
  std::unique_ptr<common::MetricsServer> metrics_server_;
  std::unique_ptr<RolloutMetrics> metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<RolloutServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_SERVER_H_
