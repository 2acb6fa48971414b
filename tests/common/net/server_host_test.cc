// common/net/server_host: health starts NOT_SERVING, follows SetServing, stays
// NOT_SERVING after Shutdown began; a second server on the bound port fails
// with UNAVAILABLE; bad security options are INVALID_ARGUMENT; Shutdown is
// idempotent and closes the port.
#include "common/net/server_host.h"

#include <memory>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "sdk/cpp/connection.h"

namespace lockstep::common {
namespace {

constexpr char kName[] = "lockstep.v1.Test";

absl::StatusOr<client::HealthStatus> Health(const std::string& target, const std::string& name) {
  client::ClientOptions o;
  o.target = target;
  auto c = client::Connection::Create(o);
  if (!c.ok()) return c.status();
  client::CallOptions call;
  call.timeout = absl::Seconds(5);
  call.max_attempts = 1;
  return (*c)->CheckHealth(name, call);
}

TEST(ServerHostTest, HealthFollowsSetServingAndShutdown) {
  ServerHostOptions o;
  o.host = "127.0.0.1";
  auto host = ServerHost::Start(o, {}, {kName});
  ASSERT_TRUE(host.ok()) << host.status();
  ASSERT_GT((*host)->port(), 0);
  const std::string target = (*host)->address();
  EXPECT_EQ(target, "127.0.0.1:" + std::to_string((*host)->port()));

  auto h = Health(target, kName);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, client::HealthStatus::kNotServing);
  (*host)->SetServing(true);
  EXPECT_EQ(*Health(target, kName), client::HealthStatus::kServing);
  EXPECT_EQ(*Health(target, ""), client::HealthStatus::kServing);
  EXPECT_EQ(Health(target, "no.such.Service").status().code(), absl::StatusCode::kNotFound);
  (*host)->SetServing(false);
  EXPECT_EQ(*Health(target, kName), client::HealthStatus::kNotServing);

  // The port is taken while the host runs.
  ServerHostOptions same = o;
  same.port = (*host)->port();
  auto second = ServerHost::Start(same, {}, {kName});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();

  (*host)->Shutdown(absl::ZeroDuration());
  (*host)->Shutdown(absl::ZeroDuration());  // idempotent
  (*host)->SetServing(true);                // ignored after Shutdown
  EXPECT_FALSE(Health(target, kName).ok());
}

TEST(ServerHostTest, BadSecurityIsInvalidArgument) {
  ServerHostOptions o;
  o.host = "127.0.0.1";
  o.security.tls_cert_file = "/nonexistent/cert.pem";  // a cert without a key
  auto host = ServerHost::Start(o, {}, {kName});
  EXPECT_EQ(host.status().code(), absl::StatusCode::kInvalidArgument) << host.status();
}

TEST(ServerHostTest, JoinHostPortBracketsIpv6) {
  EXPECT_EQ(JoinHostPort("::1", 5), "[::1]:5");
  EXPECT_EQ(JoinHostPort("localhost", 80), "localhost:80");
}

}  // namespace
}  // namespace lockstep::common
