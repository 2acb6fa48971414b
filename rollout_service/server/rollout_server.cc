#include "rollout_service/server/rollout_server.h"

#include <utility>

#include "absl/time/clock.h"
#include "common/model/kernel_mode.h"
#include "common/net/metrics.h"
#include "common/net/server_host.h"
#include "common/status/status_macros.h"
#include "rollout_service/server/rollout_metrics.h"

namespace lockstep::rollout {

absl::StatusOr<std::unique_ptr<RolloutServer>> RolloutServer::Start(
    std::shared_ptr<const common::Model> model, const EngineOptions& engine_options,
    const ServerOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("no model");
  std::unique_ptr<RolloutServer> s(new RolloutServer());

  auto registry = std::make_shared<prometheus::Registry>();
  common::BuildInfo info;
  info.role = "rollout";
  info.kernels = std::string(common::KernelModeName(model->options().mode));
  info.device = options.device_name;
  s->metrics_ = std::make_unique<RolloutMetrics>(registry, info);
  LOCKSTEP_ASSIGN_OR_RETURN(s->metrics_server_,
                            common::MetricsServer::Start(
                                options.metrics_host.empty() ? options.host : options.metrics_host,
                                options.metrics_port, registry, options.metrics_bearer_token));
  LOCKSTEP_ASSIGN_OR_RETURN(s->engine_,
                            Engine::Create(std::move(model), engine_options, s->metrics_.get()));
  s->metrics_->SetWeightVersion(s->engine_->weight_version());
  s->service_ = MakeRolloutGrpcService(s->engine_.get(), s->metrics_.get(),
                                       options.weight_assembly_timeout);

  common::ServerHostOptions host;
  host.host = options.host;
  host.port = options.port;
  host.security = options.security;
  host.max_receive_message_bytes = options.max_message_bytes;
  LOCKSTEP_ASSIGN_OR_RETURN(s->host_,
                            common::ServerHost::Start(host, {s->service_.get()},
                                                      {kRolloutServiceName}));
  s->host_->SetServing(true);
  return s;
}

RolloutServer::~RolloutServer() {
  if (host_ != nullptr) Drain(absl::ZeroDuration());
  // The engine stops (and fails what is left) before the metrics it reports
  // to go away.
  engine_.reset();
}

std::string RolloutServer::grpc_address() const { return host_->address(); }
int RolloutServer::port() const { return host_->port(); }
std::string RolloutServer::metrics_address() const { return metrics_server_->address(); }
int RolloutServer::metrics_port() const { return metrics_server_->port(); }

void RolloutServer::Drain(absl::Duration grace, absl::Duration announce) {
  if (drained_) return;
  drained_ = true;
  // Refuse new work before health reports NOT_SERVING, so that a client that
  // saw NOT_SERVING never gets a request admitted.
  service_->SetDraining();
  engine_->StopAdmitting(absl::UnavailableError("the rollout server is draining"));
  host_->SetServing(false);
  const absl::Time not_serving_since = absl::Now();
  if (!engine_->WaitIdle(grace)) {
    engine_->CancelAll(
        absl::UnavailableError("the rollout server shut down before the request finished"));
    engine_->WaitIdle(absl::Seconds(10));
  }
  absl::SleepFor(announce - (absl::Now() - not_serving_since));
  host_->Shutdown(absl::Seconds(5));
}

}  // namespace lockstep::rollout
