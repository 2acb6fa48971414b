#include "common/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lockstep::common {
namespace {

void SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n =
        send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
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

  const std::string numeric = host == "localhost" ? "127.0.0.1" : host;
  const bool v6 = numeric.find(':') != std::string::npos;
  sockaddr_storage storage{};
  socklen_t len = 0;
  int parsed = 0;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    parsed = inet_pton(AF_INET6, numeric.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&storage);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    parsed = inet_pton(AF_INET, numeric.c_str(), &a->sin_addr);
    len = sizeof(*a);
  }
  if (parsed != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics host '", host, "' is not a numeric address or localhost"));
  }
  const int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("socket: ", std::strerror(errno)));
  }
  server->listen_fd_ = fd;  // closed by the destructor from here on
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&storage), len) != 0 ||
      listen(fd, 64) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &len) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host,
                                               ":", port, ": ",
                                               std::strerror(errno)));
  }
  server->port_ =
      v6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port)
         : ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
  if (pipe2(server->wake_fds_, O_CLOEXEC) != 0) {
    return absl::UnavailableError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  MetricsServer* raw = server.get();
  server->thread_ = std::thread([raw] { raw->Serve(); });
  return server;
}

MetricsServer::~MetricsServer() {
  if (thread_.joinable()) {
    const char c = 0;
    (void)!write(wake_fds_[1], &c, 1);
    thread_.join();
  }
  for (int fd : {listen_fd_, wake_fds_[0], wake_fds_[1]}) {
    if (fd >= 0) close(fd);
  }
}

void MetricsServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}};
    const int r = poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    // Scrapes are rare and small: one at a time, with timeouts so that a
    // stuck client cannot hold the thread.
    timeval tv{2, 0};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    Handle(conn);
    close(conn);
  }
}

void MetricsServer::Handle(int fd) {
  std::string request;
  char buf[2048];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.find("\n\n") == std::string::npos && request.size() < 16384) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  const size_t eol = request.find_first_of("\r\n");
  const std::string line = request.substr(0, eol);
  // "GET /metrics HTTP/1.1" (a query string is ignored).
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
  const std::string method = line.substr(0, sp1);
  std::string path =
      sp1 == std::string::npos
          ? ""
          : line.substr(sp1 + 1, sp2 == std::string::npos ? std::string::npos
                                                          : sp2 - sp1 - 1);
  path = path.substr(0, path.find('?'));
  std::string status = "200 OK";
  std::string type = "text/plain; version=0.0.4; charset=utf-8";
  std::string body;
  if (method != "GET" && method != "HEAD") {
    status = "405 Method Not Allowed";
    type = "text/plain";
    body = "only GET\n";
  } else if (path == "/metrics") {
    body = prometheus::TextSerializer().Serialize(registry_->Collect());
  } else if (path == "/" || path == "/healthz") {
    type = "text/plain";
    body = "ok: metrics at /metrics\n";
  } else {
    status = "404 Not Found";
    type = "text/plain";
    body = "not found; metrics are at /metrics\n";
  }
  std::string response = absl::StrCat(
      "HTTP/1.1 ", status, "\r\nContent-Type: ", type,
      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  if (method != "HEAD") response += body;
  SendAll(fd, response);
}

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
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 25.0,  60.0};
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
