// common/channel_security: option checks and their messages, file errors,
// and channels built from it against an in-process TLS server (trusted and
// untrusted CAs, the server-name override).
#include "common/net/channel_security.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/channel_arguments.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/service_process.h"
#include "tests/testing/test_certs.h"

namespace lockstep::common {
namespace {

class ChannelSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = lockstep::testing::MakeTestCerts();
    ASSERT_TRUE(dir.ok()) << dir.status();
    certs_ = new std::string(*dir);
    std::ofstream(*certs_ + "/not_pem.txt") << "hello\n";
  }
  static void TearDownTestSuite() {
    if (certs_ != nullptr) lockstep::testing::RemoveTree(*certs_);
    delete certs_;
    certs_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(certs_, nullptr); }

  static std::string Cert(const std::string& name) {
    return *certs_ + "/" + name;
  }
  static std::string Read(const std::string& name) {
    std::ifstream in(Cert(name));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // The value of GRPC_SSL_TARGET_NAME_OVERRIDE_ARG in `args`, "" if unset.
  static std::string TargetNameOverride(const grpc::ChannelArguments& args) {
    const grpc_channel_args c = args.c_channel_args();
    for (size_t i = 0; i < c.num_args; ++i) {
      if (std::string(c.args[i].key) == GRPC_SSL_TARGET_NAME_OVERRIDE_ARG) {
        return c.args[i].value.string;
      }
    }
    return "";
  }

  static std::string* certs_;
};
std::string* ChannelSecurityTest::certs_ = nullptr;

ChannelSecurityNames FlagNames() {
  return {"--x_tls", "--x_tls_ca", "--x_tls_cert", "--x_tls_key",
          "--x_tls_server_name"};
}

// The one token reader of every flag: whitespace around the token (CRLF, a
// tab) is stripped; an empty token or a control character inside is
// INVALID_ARGUMENT (gRPC would abort on such a metadata value).
TEST_F(ChannelSecurityTest, TokenFilesAreStrippedAndChecked) {
  const auto write = [](const std::string& name, const std::string& text) {
    std::ofstream(Cert(name), std::ios::binary) << text;
    return Cert(name);
  };
  auto crlf = ReadTokenFile("--t", write("crlf.tok", "s3cret\r\n"));
  ASSERT_TRUE(crlf.ok()) << crlf.status();
  EXPECT_EQ(*crlf, "s3cret");
  EXPECT_EQ(*ReadTokenFile("--t", write("tab.tok", "\t s3cret\t\n")), "s3cret");
  auto empty = ReadTokenFile("--t", write("empty.tok", " \r\n"));
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(empty.status().message(), "--t=")) << empty.status();
  EXPECT_EQ(ReadTokenFile("--t", write("ctl.tok", "s3\rcret\n")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadTokenFile("--t", Cert("missing.tok")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(*CheckBearerToken("x", " tok\n"), "tok");
}

TEST_F(ChannelSecurityTest, DefaultIsPlaintext) {
  absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity({});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->tls());
  EXPECT_FALSE(s->client_certificate());
  EXPECT_NE(s->credentials(), nullptr);
  EXPECT_EQ(s->Describe(), "tls=off");
  grpc::ChannelArguments args;
  s->ApplyToArguments(&args);
  EXPECT_EQ(TargetNameOverride(args), "");
  // A default-constructed value is plaintext too.
  ChannelSecurity plain;
  EXPECT_FALSE(plain.tls());
  EXPECT_NE(plain.credentials(), nullptr);
}

TEST_F(ChannelSecurityTest, EnabledAloneUsesDefaultRoots) {
  ChannelSecurityOptions o;
  o.enabled = true;
  absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls());
  EXPECT_FALSE(s->client_certificate());
  EXPECT_EQ(s->Describe(), "tls=on ca=default client_cert=off");
}

TEST_F(ChannelSecurityTest, FilesImplyTls) {
  ChannelSecurityOptions o;
  o.ca_file = Cert("ca.pem");
  EXPECT_TRUE(o.UsesTls());
  absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls());
  o = ChannelSecurityOptions();
  o.cert_file = Cert("client.pem");
  o.key_file = Cert("client.key");
  o.server_name = "localhost";
  s = MakeChannelSecurity(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls());
  EXPECT_TRUE(s->client_certificate());
  EXPECT_EQ(s->server_name(), "localhost");
  EXPECT_EQ(s->Describe(),
            "tls=on ca=default client_cert=on server_name=localhost");
  grpc::ChannelArguments args;
  s->ApplyToArguments(&args);
  EXPECT_EQ(TargetNameOverride(args), "localhost");
}

TEST_F(ChannelSecurityTest, CertificateAndKeyGoTogether) {
  ChannelSecurityOptions o;
  o.ca_file = Cert("ca.pem");
  o.cert_file = Cert("client.pem");
  absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity(o, FlagNames());
  ASSERT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(),
                                "--x_tls_cert and --x_tls_key must be given "
                                "together"))
      << s.status();
  o.cert_file.clear();
  o.key_file = Cert("client.key");
  s = MakeChannelSecurity(o, FlagNames());
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  // With the default names: the fields.
  s = MakeChannelSecurity(o);
  EXPECT_TRUE(absl::StrContains(s.status().message(),
                                "cert_file and key_file must be given"))
      << s.status();
}

TEST_F(ChannelSecurityTest, ServerNameNeedsTls) {
  ChannelSecurityOptions o;
  o.server_name = "localhost";
  absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity(o, FlagNames());
  ASSERT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(),
                                "--x_tls_server_name=localhost needs TLS"))
      << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), "--x_tls_ca"))
      << s.status();
  o.enabled = true;
  EXPECT_TRUE(MakeChannelSecurity(o).ok());
}

TEST_F(ChannelSecurityTest, FileErrorsNameTheOptionAndTheFile) {
  ChannelSecurityOptions o;
  o.ca_file = Cert("missing-ca.pem");
  absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity(o, FlagNames());
  ASSERT_TRUE(absl::IsNotFound(s.status())) << s.status();
  EXPECT_TRUE(absl::StrContains(
      s.status().message(), absl::StrCat("--x_tls_ca=", Cert("missing-ca.pem"),
                                         ": No such file or directory")))
      << s.status();
  // The key is read after the certificate: a missing key is named as such.
  o.ca_file = Cert("ca.pem");
  o.cert_file = Cert("client.pem");
  o.key_file = Cert("missing.key");
  s = MakeChannelSecurity(o, FlagNames());
  ASSERT_TRUE(absl::IsNotFound(s.status())) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), "--x_tls_key="))
      << s.status();
  // A file that is not PEM.
  o = ChannelSecurityOptions();
  o.ca_file = Cert("not_pem.txt");
  s = MakeChannelSecurity(o, FlagNames());
  ASSERT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_TRUE(absl::StrContains(
      s.status().message(),
      "--x_tls_ca=" + Cert("not_pem.txt") + " holds no PEM block"))
      << s.status();
  // A directory is not a readable file either.
  o.ca_file = *certs_;
  EXPECT_FALSE(MakeChannelSecurity(o).ok());
}

// Channels made from ChannelSecurity against a TLS server for localhost /
// 127.0.0.1: the TLS handshake decides whether the channel becomes ready.
TEST_F(ChannelSecurityTest, ChannelsConnectOnlyWhenTheServerIsTrusted) {
  grpc::SslServerCredentialsOptions server_ssl;
  server_ssl.pem_key_cert_pairs.push_back(
      {Read("server.key"), Read("server.pem")});
  // A service, so that the server starts (every method: UNIMPLEMENTED).
  grpc::CallbackGenericService service;
  grpc::ServerBuilder builder;
  builder.RegisterCallbackGenericService(&service);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0",
                           grpc::SslServerCredentials(server_ssl), &port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);

  auto connects = [&](const ChannelSecurityOptions& o) {
    absl::StatusOr<ChannelSecurity> s = MakeChannelSecurity(o);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return false;
    grpc::ChannelArguments args;
    s->ApplyToArguments(&args);
    // A fresh connection per channel (no subchannel sharing between cases).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                             s->credentials(), args);
    return channel->WaitForConnected(std::chrono::system_clock::now() +
                                     std::chrono::seconds(3));
  };
  ChannelSecurityOptions trusted;
  trusted.ca_file = Cert("ca.pem");
  EXPECT_TRUE(connects(trusted)) << "CA-verified, IP in the certificate";
  trusted.server_name = "localhost";
  EXPECT_TRUE(connects(trusted)) << "CA-verified, server_name localhost";
  trusted.server_name = "not-in-the-cert.example";
  EXPECT_FALSE(connects(trusted)) << "a name the certificate does not hold";
  ChannelSecurityOptions rogue;
  rogue.ca_file = Cert("rogue_ca.pem");
  EXPECT_FALSE(connects(rogue)) << "another CA";
  server->Shutdown();
}

}  // namespace
}  // namespace lockstep::common
