#include "common/metrics.h"

#include <exception>
#include <utility>

#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"

namespace lockstep::common {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port,
    std::shared_ptr<prometheus::Registry> registry) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics port ", port, " outside [0, 65535]"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->host_ = host;
  server->registry_ =
      registry ? std::move(registry) : std::make_shared<prometheus::Registry>();
  // civetweb wants IPv6 literals in brackets.
  const bool v6 = host.find(':') != std::string::npos;
  const std::string bind =
      v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(bind, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", bind, ": ", e.what()));
  }
  server->exposer_->RegisterCollectable(server->registry_);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics exposer on ", bind, " reports no bound port"));
  }
  server->port_ = ports[0];
  return server;
}

MetricsServer::~MetricsServer() = default;

std::string MetricsServer::address() const {
  if (host_.find(':') != std::string::npos) {
    return absl::StrCat("[", host_, "]:", port_);
  }
  return absl::StrCat(host_, ":", port_);
}

void RegisterBuildInfo(prometheus::Registry& registry, const BuildInfo& info) {
  prometheus::BuildGauge()
      .Name("lockstep_build_info")
      .Help("Always 1; labels describe the running lockstep build")
      .Register(registry)
      .Add({{"role", info.role},
            {"version", info.version},
            {"kernels", info.kernels},
            {"device", info.device}})
      .Set(1);
}

prometheus::Gauge& RegisterWeightVersion(prometheus::Registry& registry,
                                         std::string_view role) {
  return prometheus::BuildGauge()
      .Name("lockstep_weight_version")
      .Help("Version of the weights the service currently holds")
      .Register(registry)
      .Add({{"role", std::string(role)}});
}

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0,
          25.0,   60.0};
}

prometheus::Histogram::BucketBoundaries ExponentialBuckets(double start,
                                                           double factor,
                                                           int count) {
  prometheus::Histogram::BucketBoundaries b;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

}  // namespace lockstep::common
