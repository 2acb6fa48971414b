// common/metrics (exposer on a picked port, shared metrics) and
// common/grpc_status.
#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "common/grpc_status.h"
#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: x\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
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
