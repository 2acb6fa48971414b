#include "common/metrics.h"

#include <exception>
#include <utility>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"

namespace lockstep::common {
namespace {

// A port that is free on `host` right now (bind to port 0, read it back).
absl::StatusOr<int> PickFreePort(const std::string& host) {
  const bool v6 = host.find(':') != std::string::npos;
  const int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::UnavailableError("socket() failed");
  sockaddr_storage storage{};
  socklen_t len = 0;
  int ok = 0;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
    a->sin6_family = AF_INET6;
    ok = inet_pton(AF_INET6, host.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&storage);
    a->sin_family = AF_INET;
    ok = inet_pton(AF_INET, host.c_str(), &a->sin_addr);
    len = sizeof(*a);
  }
  if (ok != 1) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("metrics host '", host, "' is not a numeric address"));
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&storage), len) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &len) != 0) {
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot bind a metrics port on ", host));
  }
  const int port = v6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port)
                      : ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
  close(fd);
  return port;
}

}  // namespace

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
  // civetweb (1.15) refuses port 0, so a free port is found by binding a
  // socket first; another process may take it in between, hence the retries.
  const int attempts = port == 0 ? 8 : 1;
  std::string error;
  for (int attempt = 0; attempt < attempts && server->exposer_ == nullptr;
       ++attempt) {
    int try_port = port;
    if (port == 0) {
      absl::StatusOr<int> free_port = PickFreePort(host);
      if (!free_port.ok()) return free_port.status();
      try_port = *free_port;
    }
    // civetweb wants IPv6 literals in brackets.
    const bool v6 = host.find(':') != std::string::npos;
    const std::string bind = v6 ? absl::StrCat("[", host, "]:", try_port)
                                : absl::StrCat(host, ":", try_port);
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(bind, 2);
    } catch (const std::exception& e) {
      error = absl::StrCat("cannot serve metrics on ", bind, ": ", e.what());
    }
  }
  if (server->exposer_ == nullptr) return absl::UnavailableError(error);
  server->exposer_->RegisterCollectable(server->registry_);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics exposer on ", host, " reports no bound port"));
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
