// A running rollout server: the Engine, its gRPC service (health status
// "lockstep.v1.RolloutService", reflection) on a common::ServerHost, and the
// Prometheus metrics of DESIGN.md §5 on a separate HTTP port.
#ifndef LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_SERVER_H_
#define LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model/model.h"
#include "common/net/server_security.h"
#include "rollout_service/engine.h"
#include "rollout_service/server/rollout_grpc_service.h"

namespace lockstep::common {
class MetricsServer;
class ServerHost;
}  // namespace lockstep::common

namespace lockstep::rollout {

class RolloutMetrics;

struct ServerOptions {
  std::string host = "0.0.0.0";  // gRPC and metrics bind address
  int port = 0;                  // gRPC port (0: pick a free one)
  int metrics_port = 0;          // /metrics port (0: pick a free one)
  std::string metrics_host;      // /metrics bind address (empty: `host`)
  // When not empty, /metrics requires "Authorization: Bearer <token>".
  std::string metrics_bearer_token;
  // Largest request message accepted (RESOURCE_EXHAUSTED past it). Weight
  // chunks carry at most 4 MiB.
  int max_message_bytes = 16 << 20;
  // TLS / mTLS and the bearer token (common/net/server_security.h): the token
  // check runs in gRPC's auth filter before any handler; health and
  // reflection stay open.
  common::ServerSecurityOptions security;
  // Labels of lockstep_build_info.
  std::string device_name = "cpu";
  // How long the parts of a parallel weight update (stream_count > 1) may
  // take to all arrive after the first (ABORTED for every part past it).
  absl::Duration weight_assembly_timeout = absl::Seconds(60);
};

class RolloutServer {
 public:
  // Starts everything over `model`; health reports SERVING when it returns.
  // Errors: the engine's Create errors, INVALID_ARGUMENT for bad security
  // options, UNAVAILABLE when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<RolloutServer>> Start(
      std::shared_ptr<const common::Model> model, const EngineOptions& engine_options,
      const ServerOptions& options);

  // Drains (if not done) and stops.
  ~RolloutServer();

  // "host:port" of the gRPC and metrics listeners (bound ports).
  std::string grpc_address() const;
  std::string metrics_address() const;
  int port() const;
  int metrics_port() const;

  Engine& engine() { return *engine_; }

  // Graceful drain: new requests fail with UNAVAILABLE, then health becomes
  // NOT_SERVING; requests in flight get up to `grace` to finish (then they
  // are cancelled with UNAVAILABLE); health keeps answering NOT_SERVING for
  // at least `announce`; then the gRPC server shuts down.
  void Drain(absl::Duration grace, absl::Duration announce = absl::Seconds(2));

 private:
  RolloutServer() = default;

  bool drained_ = false;
  std::unique_ptr<common::MetricsServer> metrics_server_;
  std::unique_ptr<RolloutMetrics> metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<RolloutGrpcService> service_;
  std::unique_ptr<common::ServerHost> host_;
};

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_SERVER_H_
