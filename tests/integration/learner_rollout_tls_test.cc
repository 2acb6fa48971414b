// The learner against rollouts that serve TLS (rollout_service --tls_cert
// --tls_key) and mutual TLS (--tls_ca): the learner's rollout client
// (ConnectRollout over common::MakeChannelSecurity) pushes weights only
// when it trusts the rollout's CA (and, for mTLS, presents a client
// certificate the rollout trusts); a plaintext or untrusting client fails with
// UNAVAILABLE and the rollout keeps its version. Then the learner_service
// binary end to end
// (--rollout_tls_ca / --rollout_tls_cert / --rollout_tls_key /
// --rollout_tls_server_name with --drive), and its start-up errors for bad
// flag combinations.
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/net/channel_security.h"
#include "gtest/gtest.h"
#include "learner_service/weight_push.h"
#include "tests/learner_service/integration_util.h"
#include "tests/rollout_service/integration_util.h"
#include "tests/testing/test_certs.h"

namespace lockstep::learner::itest {
namespace {

class LearnerRolloutTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("learner-rollout-tls");
    MakeTinyModel(dir_->Sub("tiny"), 1);
    MakeTinyModel(dir_->Sub("tiny2"), 2);
    absl::StatusOr<std::string> certs = lockstep::testing::MakeTestCerts();
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = new std::string(*certs);
  }
  static void TearDownTestSuite() {
    if (certs_ != nullptr) lockstep::testing::RemoveTree(*certs_);
    delete certs_;
    certs_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(certs_, nullptr);
    tensors_ = rollout::itest::LoadTensors(dir_->Sub("tiny2"));
    ASSERT_FALSE(tensors_.empty());
  }

  static std::string C(const std::string& name) { return *certs_ + "/" + name; }

  // rollout_service over the tiny model serving TLS (mTLS with `mtls`).
  static std::unique_ptr<ServiceProcess> StartTlsRollout(bool mtls) {
    std::vector<std::string> flags = {"--tls_cert=" + C("server.pem"),
                                      "--tls_key=" + C("server.key")};
    if (mtls) flags.push_back("--tls_ca=" + C("ca.pem"));
    return StartRollout(dir_->Sub("tiny"), "invariant", flags);
  }

  // The learner's client of `address` secured by `o`.
  static std::shared_ptr<client::RolloutClient> Client(
      const std::string& address, const common::ChannelSecurityOptions& o) {
    absl::StatusOr<common::ChannelSecurity> security =
        common::MakeChannelSecurity(o);
    EXPECT_TRUE(security.ok()) << security.status();
    if (!security.ok()) return nullptr;
    absl::StatusOr<std::shared_ptr<client::RolloutClient>> c =
        ConnectRollout(address, "", *security);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // GetModelInfo as registration calls it: one try that waits up to 30 s
  // for the rollout.
  static absl::StatusOr<v1::ModelInfo> ModelInfo(client::RolloutClient& c) {
    client::CallOptions call = client::CallOptions::Timeout(absl::Seconds(30));
    call.wait_for_ready = true;
    call.max_attempts = 1;
    return c.GetModelInfo(call);
  }

  static common::ChannelSecurityOptions TrustingCa() {
    common::ChannelSecurityOptions o;
    o.ca_file = C("ca.pem");
    return o;
  }

  static common::ChannelSecurityOptions WithClientCert(
      common::ChannelSecurityOptions o, const std::string& name = "client") {
    o.cert_file = C(name + ".pem");
    o.key_file = C(name + ".key");
    return o;
  }

  // Pushes the seed-2 weights as `version` with two tries.
  PushResult Push(client::RolloutClient& client, uint64_t version) {
    PushOptions o;
    o.retry.max_attempts = 2;
    o.retry.initial_backoff = absl::Milliseconds(50);
    o.attempt_timeout = absl::Seconds(30);
    return PushWeights(client, tensors_, version, "learner_rollout_tls_test",
                       o);
  }

  // The rollout's served version as a trusted client sees it.
  static int64_t ServedVersion(const std::string& address,
                               const common::ChannelSecurityOptions& o) {
    std::shared_ptr<client::RolloutClient> client = Client(address, o);
    if (client == nullptr) return -1;
    absl::StatusOr<v1::ModelInfo> info = ModelInfo(*client);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? static_cast<int64_t>(info->weight_version()) : -1;
  }

  struct Run {
    int exit_code = -1;
    std::string out;
    std::string err;
  };

  // Runs learner_service over the tiny model on 127.0.0.1 with `flags`.
  static Run RunLearner(const std::vector<std::string>& flags) {
    static int runs = 0;
    const std::string out = dir_->Sub(absl::StrCat("learner", runs, ".out"));
    const std::string err = dir_->Sub(absl::StrCat("learner", runs, ".err"));
    ++runs;
    std::vector<std::string> argv = {LearnerBinary(),
                                     "--model_dir=" + dir_->Sub("tiny"),
                                     "--host=127.0.0.1",
                                     "--port=0",
                                     "--metrics_port=0",
                                     "--num_threads=1",
                                     "--drain_announce_seconds=0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::vector<std::string> quoted;
    for (const std::string& a : argv) quoted.push_back("'" + a + "'");
    const std::string cmd = absl::StrCat(absl::StrJoin(quoted, " "), " > '",
                                         out, "' 2> '", err, "'");
    const int status = std::system(cmd.c_str());
    Run r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    auto slurp = [](const std::string& path) {
      std::ifstream in(path);
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    };
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::string* certs_ = nullptr;
  common::TensorMap tensors_;
};

TEST_F(LearnerRolloutTlsTest, PushesToATlsRolloutOnlyWhenItTrustsTheCa) {
  auto rollout = StartTlsRollout(/*mtls=*/false);
  ASSERT_NE(rollout, nullptr);
  const std::string address = rollout->grpc_address();
  ASSERT_TRUE(absl::StartsWith(address, "127.0.0.1:")) << address;

  // Without the CA: plaintext, TLS with the default roots, another CA.
  common::ChannelSecurityOptions default_roots;
  default_roots.enabled = true;
  common::ChannelSecurityOptions rogue;
  rogue.ca_file = C("rogue_ca.pem");
  for (const auto& [what, o] :
       std::vector<std::pair<std::string, common::ChannelSecurityOptions>>{
           {"plaintext", {}},
           {"default roots", default_roots},
           {"rogue CA", rogue}}) {
    std::shared_ptr<client::RolloutClient> client = Client(address, o);
    ASSERT_NE(client, nullptr);
    PushResult r = Push(*client, 1);
    EXPECT_TRUE(absl::IsUnavailable(r.status)) << what << ": " << r.status;
    EXPECT_EQ(r.attempts, 2) << what;
  }
  EXPECT_EQ(ServedVersion(address, TrustingCa()), 0);

  // Trusting the CA: through the IP in the certificate, then with the
  // server name override (as learner_service --rollout_tls_server_name).
  std::shared_ptr<client::RolloutClient> client = Client(address, TrustingCa());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::ModelInfo> info = ModelInfo(*client);
  ASSERT_TRUE(info.ok()) << info.status();
  PushResult r = Push(*client, 1);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.rollout_version, 1u);
  EXPECT_EQ(r.attempts, 1);
  EXPECT_GT(r.bytes, 0u);
  common::ChannelSecurityOptions named = TrustingCa();
  named.server_name = "localhost";
  client = Client(address, named);
  ASSERT_NE(client, nullptr);
  r = Push(*client, 2);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.rollout_version, 2u);
  EXPECT_EQ(ServedVersion(address, TrustingCa()), 2);
  // A name the certificate does not hold is refused.
  named.server_name = "rollout.example.com";
  client = Client(address, named);
  ASSERT_NE(client, nullptr);
  r = Push(*client, 3);
  EXPECT_TRUE(absl::IsUnavailable(r.status)) << r.status;
  EXPECT_EQ(ServedVersion(address, TrustingCa()), 2);
  ASSERT_TRUE(rollout->Stop(30).ok());
}

TEST_F(LearnerRolloutTlsTest, MutualTlsNeedsATrustedClientCertificate) {
  auto rollout = StartTlsRollout(/*mtls=*/true);
  ASSERT_NE(rollout, nullptr);
  const std::string address = rollout->grpc_address();
  for (const auto& [what, o] :
       std::vector<std::pair<std::string, common::ChannelSecurityOptions>>{
           {"no client certificate", TrustingCa()},
           {"rogue client certificate",
            WithClientCert(TrustingCa(), "rogue_client")},
           {"plaintext", {}}}) {
    std::shared_ptr<client::RolloutClient> client = Client(address, o);
    ASSERT_NE(client, nullptr);
    PushResult r = Push(*client, 1);
    EXPECT_TRUE(absl::IsUnavailable(r.status)) << what << ": " << r.status;
  }
  const common::ChannelSecurityOptions good = WithClientCert(TrustingCa());
  EXPECT_EQ(ServedVersion(address, good), 0);
  std::shared_ptr<client::RolloutClient> client = Client(address, good);
  ASSERT_NE(client, nullptr);
  PushResult r = Push(*client, 1);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.rollout_version, 1u);
  EXPECT_EQ(ServedVersion(address, good), 1);
  ASSERT_TRUE(rollout->Stop(30).ok());
}

// learner_service --drive against an mTLS rollout: registration, Generate
// and the push after every step go over mTLS; without the TLS flags the
// learner cannot register the rollout (UNAVAILABLE) and exits 1.
TEST_F(LearnerRolloutTlsTest, LearnerServiceDrivesAnMtlsRollout) {
  auto rollout = StartTlsRollout(/*mtls=*/true);
  ASSERT_NE(rollout, nullptr);
  const std::string address = rollout->grpc_address();
  const std::vector<std::string> drive = {"--rollout=" + address,
                                          "--drive",
                                          "--steps=2",
                                          "--prompts_per_step=2",
                                          "--samples_per_prompt=2",
                                          "--max_tokens=6",
                                          "--push_attempts=2"};
  std::vector<std::string> flags = drive;
  for (const std::string& f :
       {"--rollout_tls_ca=" + C("ca.pem"),
        "--rollout_tls_cert=" + C("client.pem"),
        "--rollout_tls_key=" + C("client.key"),
        std::string("--rollout_tls_server_name=localhost")}) {
    flags.push_back(f);
  }
  Run run = RunLearner(flags);
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_TRUE(absl::StrContains(run.out, "summary ")) << run.out;
  EXPECT_TRUE(
      absl::StrContains(run.err, "rollout channels: tls=on ca=" + C("ca.pem") +
                                     " client_cert=on server_name=localhost"))
      << run.err;
  // Two steps, each followed by a push.
  EXPECT_EQ(ServedVersion(address, WithClientCert(TrustingCa())), 2);

  // Without the TLS flags (plaintext), and with the CA but no client
  // certificate: the rollout cannot be reached.
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{},
        std::vector<std::string>{"--rollout_tls_ca=" + C("ca.pem")}}) {
    flags = drive;
    flags.insert(flags.end(), extra.begin(), extra.end());
    run = RunLearner(flags);
    EXPECT_EQ(run.exit_code, 1) << run.out << run.err;
    EXPECT_TRUE(absl::StrContains(run.err, "UNAVAILABLE")) << run.err;
    EXPECT_FALSE(absl::StrContains(run.out, "listening ")) << run.out;
  }
  EXPECT_EQ(ServedVersion(address, WithClientCert(TrustingCa())), 2);
  ASSERT_TRUE(rollout->Stop(30).ok());
}

TEST_F(LearnerRolloutTlsTest, BadRolloutTlsFlagsFailAtStartup) {
  struct Case {
    std::vector<std::string> flags;
    std::string code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--rollout_tls_cert=" + C("client.pem")},
       "INVALID_ARGUMENT",
       "--rollout_tls_cert and --rollout_tls_key must be given together"},
      {{"--rollout_tls_key=" + C("client.key"),
        "--rollout_tls_ca=" + C("ca.pem")},
       "INVALID_ARGUMENT",
       "--rollout_tls_cert and --rollout_tls_key must be given together"},
      {{"--rollout_tls_server_name=localhost"},
       "INVALID_ARGUMENT",
       "--rollout_tls_server_name=localhost needs TLS"},
      {{"--rollout_tls_ca=" + C("missing.pem")},
       "NOT_FOUND",
       "--rollout_tls_ca=" + C("missing.pem") + ": No such file"},
      {{"--rollout_tls_ca=" + C("ca.pem"),
        "--rollout_tls_cert=" + C("client.pem"),
        "--rollout_tls_key=" + dir_->Sub("tiny/config.json")},
       "INVALID_ARGUMENT",
       "--rollout_tls_key=" + dir_->Sub("tiny/config.json") +
           " holds no PEM block"},
  };
  for (const Case& c : cases) {
    // A rollout address that nothing serves: the flags must fail first.
    std::vector<std::string> flags = c.flags;
    flags.push_back("--rollout=127.0.0.1:1");
    Run run = RunLearner(flags);
    const std::string what = absl::StrJoin(c.flags, " ");
    EXPECT_EQ(run.exit_code, 1) << what << "\n" << run.err;
    EXPECT_TRUE(absl::StrContains(run.err, c.code)) << what << "\n" << run.err;
    EXPECT_TRUE(absl::StrContains(run.err, c.message)) << what << "\n"
                                                       << run.err;
    EXPECT_FALSE(absl::StrContains(run.out, "listening ")) << what;
  }
}

}  // namespace
}  // namespace lockstep::learner::itest
