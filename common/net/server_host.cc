#include "common/net/server_host.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status/status_macros.h"

namespace lockstep::common {

std::string JoinHostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<std::unique_ptr<ServerHost>> ServerHost::Start(
    const ServerHostOptions& options, const std::vector<grpc::Service*>& services,
    std::vector<std::string> health_names) {
  LOCKSTEP_ASSIGN_OR_RETURN(ServerSecurity security, MakeServerSecurity(options.security));
  std::unique_ptr<ServerHost> host(new ServerHost());
  host->host_ = options.host;
  host->health_names_ = std::move(health_names);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string bind = JoinHostPort(options.host, options.port);
  // gRPC sets SO_REUSEPORT by default: a second server on a taken port would
  // start and silently share its traffic. One server per port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(bind, security.credentials(), &host->port_);
  security.ApplyToBuilder(&builder);
  for (grpc::Service* service : services) builder.RegisterService(service);
  if (options.max_receive_message_bytes >= 0)
    builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  if (options.max_send_message_bytes >= 0)
    builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  host->server_ = builder.BuildAndStart();
  if (host->server_ == nullptr || host->port_ == 0) {
    host->server_.reset();
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", bind));
  }
  host->SetServing(false);
  return host;
}

ServerHost::~ServerHost() { Shutdown(absl::ZeroDuration()); }

void ServerHost::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_ || server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  for (const std::string& name : health_names_) health->SetServingStatus(name, serving);
  health->SetServingStatus(serving);
}

void ServerHost::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_ || server_ == nullptr) return;
    shut_down_ = true;
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->Shutdown();  // NOT_SERVING from now on, whatever is set later
    }
  }
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

}  // namespace lockstep::common
