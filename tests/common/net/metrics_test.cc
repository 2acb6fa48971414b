// common/metrics (exposer on a picked port, shared metrics) and
// common/grpc_status.
#include "common/net/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

#include "common/wire/grpc_status.h"
#include "gtest/gtest.h"
#include "tests/testing/loopback_http.h"

namespace lockstep::common {
namespace {

std::string HttpGet(int port, const std::string& path) {
  return lockstep::testing::HttpGetResponse(port, path);
}

TEST(MetricsServerTest, ServesOnAPickedPort) {
  auto server = MetricsServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->address(),
            "127.0.0.1:" + std::to_string((*server)->port()));
  RegisterBuildInfo(*(*server)->registry(),
                    {"rollout", kLockstepVersion, "invariant", "cpu"});
  RegisterWeightVersion(*(*server)->registry(), "rollout").Set(42);
  const std::string body = HttpGet((*server)->port(), "/metrics");
  EXPECT_NE(body.find("lockstep_build_info{"), std::string::npos) << body;
  EXPECT_NE(body.find("role=\"rollout\""), std::string::npos);
  EXPECT_NE(body.find("kernels=\"invariant\""), std::string::npos);
  EXPECT_NE(body.find("lockstep_weight_version{role=\"rollout\"} 42"),
            std::string::npos)
      << body;
}

int Connect(int port) { return lockstep::testing::ConnectLoopback(port); }

// 50 idle connections and 5 slowloris clients (a request head dribbled out a
// few bytes at a time) must not delay a scrape; each hostile connection is
// dropped once kRequestTimeout passes; an oversized head gets 431.
TEST(MetricsServerTest, IdleAndSlowClientsCannotBlindTheScrape) {
  auto server = MetricsServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  RegisterWeightVersion(*(*server)->registry(), "rollout").Set(7);
  const int port = (*server)->port();
  std::vector<int> idle, slow;
  for (int i = 0; i < 50; ++i) idle.push_back(Connect(port));
  for (int i = 0; i < 5; ++i) {
    slow.push_back(Connect(port));
    ASSERT_GE(slow.back(), 0);
    (void)!write(slow.back(), "GET /met", 8);
  }
  for (int round = 0; round < 3; ++round) {
    for (int fd : slow) (void)!write(fd, "r", 1);  // never completes the head
    const absl::Time start = absl::Now();
    const std::string body = HttpGet(port, "/metrics");
    const absl::Duration took = absl::Now() - start;
    EXPECT_NE(body.find("lockstep_weight_version{role=\"rollout\"} 7"), std::string::npos)
        << body;
    EXPECT_LT(took, absl::Seconds(1)) << "round " << round;
  }
  // The hostile connections are closed by the server after kRequestTimeout.
  absl::SleepFor(MetricsServer::kRequestTimeout + absl::Seconds(1));
  for (int fd : slow) {
    char c;
    EXPECT_EQ(read(fd, &c, 1), 0) << "slow client still connected";
    close(fd);
  }
  for (int fd : idle) close(fd);

  // An oversized head: 431, connection closed.
  const int big = Connect(port);
  ASSERT_GE(big, 0);
  const std::string junk(MetricsServer::kMaxRequestBytes + 10, 'x');
  (void)!write(big, junk.data(), junk.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(big, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(big);
  EXPECT_NE(out.find("431"), std::string::npos) << out;
  EXPECT_NE(HttpGet(port, "/metrics").find("200 OK"), std::string::npos);
}

// With a bearer token, /metrics answers 401 without it (or with a wrong
// one) and 200 with it (header name and scheme in any case); /healthz stays
// open for probes.
TEST(MetricsServerTest, BearerTokenGuardsTheScrape) {
  auto server = MetricsServer::Start("127.0.0.1", 0, nullptr, "tok3n");
  ASSERT_TRUE(server.ok()) << server.status();
  RegisterWeightVersion(*(*server)->registry(), "learner").Set(3);
  const int port = (*server)->port();
  using lockstep::testing::HttpGetResponse;
  EXPECT_NE(HttpGetResponse(port, "/metrics").find("401"), std::string::npos);
  EXPECT_NE(HttpGetResponse(port, "/metrics", "Authorization: Bearer wrong\r\n").find("401"),
            std::string::npos);
  EXPECT_NE(HttpGetResponse(port, "/metrics", "Authorization: Bearer tok3n!\r\n").find("401"),
            std::string::npos);
  for (const char* h : {"Authorization: Bearer tok3n\r\n", "authorization: bearer tok3n\r\n",
                        "AUTHORIZATION:   BEARER tok3n  \r\n"}) {
    const std::string r = HttpGetResponse(port, "/metrics", h);
    EXPECT_NE(r.find("200 OK"), std::string::npos) << h;
    EXPECT_NE(r.find("lockstep_weight_version{role=\"learner\"} 3"), std::string::npos) << r;
  }
  EXPECT_NE(HttpGetResponse(port, "/healthz").find("200 OK"), std::string::npos);
}

TEST(MetricsServerTest, BadPortsAreErrors) {
  EXPECT_EQ(MetricsServer::Start("127.0.0.1", 70000).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto a = MetricsServer::Start("127.0.0.1", 0);
  ASSERT_TRUE(a.ok());
  auto b = MetricsServer::Start("127.0.0.1", (*a)->port());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
}

TEST(MetricsTest, Buckets) {
  auto b = ExponentialBuckets(1, 2, 4);
  EXPECT_EQ(b, (std::vector<double>{1, 2, 4, 8}));
  auto l = LatencyBuckets();
  EXPECT_TRUE(std::is_sorted(l.begin(), l.end()));
}

TEST(GrpcStatusTest, RoundTripsCodesAndMessages) {
  for (int c = 0; c <= 16; ++c) {
    absl::Status s(static_cast<absl::StatusCode>(c), c == 0 ? "" : "msg");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    absl::Status back = FromGrpcStatus(g);
    EXPECT_EQ(back.code(), s.code());
    if (c != 0) {
      EXPECT_EQ(back.message(), "msg");
    }
  }
  EXPECT_EQ(ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(99), "x"))
                .error_code(),
            grpc::StatusCode::UNKNOWN);
}

}  // namespace
}  // namespace lockstep::common
