#include "common/net/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/net/server_host.h"
#include "common/net/server_security.h"

namespace lockstep::common {
namespace {

// True when a header line of `request` is "Authorization: Bearer <token>"
// (header name case-insensitive; the value checked by BearerMatches).
bool HasBearer(const std::string& request, const std::string& token) {
  for (absl::string_view line : absl::StrSplit(request, '\n')) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    if (!absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(line.substr(0, colon)),
                                "authorization")) {
      continue;
    }
    const absl::string_view value = line.substr(colon + 1);
    if (BearerMatches(std::string_view(value.data(), value.size()), token)) return true;
  }
  return false;
}

std::string HttpResponse(absl::string_view status, absl::string_view type, absl::string_view body,
                         bool head_only) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                      head_only ? absl::string_view() : body);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry) {
  return Start(host, port, std::move(registry), "");
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry,
    const std::string& bearer_token) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics port ", port, " outside [0, 65535]"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->host_ = host;
  server->bearer_token_ = bearer_token;
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
  // Non-blocking: Serve() accepts until EAGAIN.
  const int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
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
  // One thread multiplexes every connection (non-blocking sockets, poll), so
  // idle or slow clients cannot delay a scrape: each connection must deliver
  // its request head within kRequestTimeout of being accepted and take its
  // response within kRequestTimeout after that, heads are capped at
  // kMaxRequestBytes, and at most kMaxConnections are open at once (further
  // ones wait in the listen backlog).
  struct Conn {
    int fd = -1;
    std::string in;
    std::string out;
    size_t sent = 0;
    bool responding = false;
    absl::Time deadline;
  };
  std::vector<Conn> conns;
  std::vector<pollfd> fds;
  auto close_conn = [](Conn& c) {
    close(c.fd);
    c.fd = -1;
  };
  for (;;) {
    const absl::Time now = absl::Now();
    fds.clear();
    fds.push_back({wake_fds_[0], POLLIN, 0});
    const bool accepting = conns.size() < kMaxConnections;
    fds.push_back({accepting ? listen_fd_ : -1, POLLIN, 0});
    absl::Time next = absl::InfiniteFuture();
    for (const Conn& c : conns) {
      fds.push_back({c.fd, static_cast<int16_t>(c.responding ? POLLOUT : POLLIN), 0});
      next = std::min(next, c.deadline);
    }
    const int timeout_ms =
        next == absl::InfiniteFuture()
            ? -1
            : static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(next - now) + 1));
    const int r = poll(fds.data(), fds.size(), timeout_ms);
    if (r < 0 && errno != EINTR) break;
    if (r > 0 && fds[0].revents != 0) break;
    if (r > 0 && accepting && (fds[1].revents & POLLIN) != 0) {
      for (;;) {
        if (conns.size() >= kMaxConnections) break;
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        Conn c;
        c.fd = fd;
        c.deadline = absl::Now() + kRequestTimeout;
        conns.push_back(std::move(c));
      }
    }
    const absl::Time after = absl::Now();
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      const int16_t ev = 2 + i < fds.size() && fds[2 + i].fd == c.fd ? fds[2 + i].revents : 0;
      if (!c.responding && (ev & (POLLIN | POLLHUP | POLLERR)) != 0) {
        char buf[4096];
        const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
          close_conn(c);
          continue;
        }
        if (n > 0) c.in.append(buf, static_cast<size_t>(n));
        const bool complete = c.in.find("\r\n\r\n") != std::string::npos ||
                              c.in.find("\n\n") != std::string::npos;
        if (complete || c.in.size() > kMaxRequestBytes) {
          c.out = complete ? Respond(c.in)
                           : HttpResponse("431 Request Header Fields Too Large", "text/plain",
                                          "request head too large\n", true);
          c.responding = true;
          c.deadline = after + kRequestTimeout;
        }
      }
      if (c.fd >= 0 && c.responding && (ev & (POLLOUT | POLLHUP | POLLERR)) != 0) {
        const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        if (n > 0) c.sent += static_cast<size_t>(n);
        if (c.sent == c.out.size() || (n < 0 && errno != EAGAIN && errno != EINTR)) {
          close_conn(c);
          continue;
        }
      }
      if (c.fd >= 0 && after >= c.deadline) close_conn(c);
    }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const Conn& c) { return c.fd < 0; }),
                conns.end());
  }
  for (Conn& c : conns) close_conn(c);
}

std::string MetricsServer::Respond(const std::string& request) const {
  const size_t eol = request.find_first_of("\r\n");
  const std::string line = request.substr(0, eol);
  // "GET /metrics HTTP/1.1" (a query string is ignored).
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
  const std::string method = line.substr(0, sp1);
  std::string path =
      sp1 == std::string::npos
          ? ""
          : line.substr(sp1 + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp1 - 1);
  path = path.substr(0, path.find('?'));
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    return HttpResponse("405 Method Not Allowed", "text/plain", "only GET\n", false);
  }
  if (!bearer_token_.empty() && path != "/healthz" && !HasBearer(request, bearer_token_)) {
    return HttpResponse("401 Unauthorized", "text/plain",
                        "missing or wrong \"Authorization: Bearer <token>\"\n", head);
  }
  if (path == "/metrics") {
    return HttpResponse("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                        prometheus::TextSerializer().Serialize(registry_->Collect()), head);
  }
  if (path == "/" || path == "/healthz") {
    return HttpResponse("200 OK", "text/plain", "ok: metrics at /metrics\n", head);
  }
  return HttpResponse("404 Not Found", "text/plain", "not found; metrics are at /metrics\n",
                      head);
}

std::string MetricsServer::address() const { return JoinHostPort(host_, port_); }

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
