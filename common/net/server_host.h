// The gRPC server of both services: one place that binds the port with the
// configured transport security (server_security.h), registers the services,
// gRPC health (grpc.health.v1, per-service status) and reflection, and shuts
// down in the documented drain order.
//
//   ServerHostOptions o;  // host, port, security, message limits
//   LOCKSTEP_ASSIGN_OR_RETURN(std::unique_ptr<ServerHost> host,
//                             ServerHost::Start(o, {&service}, {"lockstep.v1.X"}));
//   host->SetServing(true);   // when the service can take calls
//   ...
//   host->SetServing(false);  // drain: probes see NOT_SERVING first
//   host->Shutdown(absl::Seconds(5));  // in-flight calls get 5 s, then cancelled
#ifndef LOCKSTEP_COMMON_NET_SERVER_HOST_H_
#define LOCKSTEP_COMMON_NET_SERVER_HOST_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/net/server_security.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace lockstep::common {

struct ServerHostOptions {
  std::string host = "0.0.0.0";  // bind address (IPv4, IPv6 or a name)
  int port = 0;                  // 0: pick a free port
  ServerSecurityOptions security;
  // Largest message received / sent; RESOURCE_EXHAUSTED past it. -1: gRPC's
  // default (4 MiB received, unlimited sent).
  int max_receive_message_bytes = -1;
  int max_send_message_bytes = -1;
};

// "host:port", bracketing IPv6 literals.
std::string JoinHostPort(const std::string& host, int port);

class ServerHost {
 public:
  // Builds and starts the server. Health reports NOT_SERVING (overall and for
  // every name in `health_names`) until SetServing(true). INVALID_ARGUMENT
  // for bad security options (MakeServerSecurity), UNAVAILABLE when the port
  // cannot be bound (also when another server holds it: no SO_REUSEPORT).
  // The services must outlive the host.
  static absl::StatusOr<std::unique_ptr<ServerHost>> Start(
      const ServerHostOptions& options, const std::vector<grpc::Service*>& services,
      std::vector<std::string> health_names);

  // Shuts down (zero grace) if Shutdown was not called.
  ~ServerHost();

  // Health status of the server and of every health name. After Shutdown
  // (or once set false by a drain that has begun) it stays NOT_SERVING.
  // Thread-safe.
  void SetServing(bool serving);

  // Stops accepting calls, gives calls in flight up to `grace`, cancels the
  // rest, and waits for the handlers to return. Idempotent. Thread-safe.
  void Shutdown(absl::Duration grace);

  int port() const { return port_; }
  std::string address() const { return JoinHostPort(host_, port_); }

 private:
  ServerHost() = default;

  std::string host_;
  int port_ = 0;
  std::vector<std::string> health_names_;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  bool shut_down_ = false;  // guarded by mu_
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_NET_SERVER_HOST_H_
