// Throw-away TLS certificates for tests of TLS / mTLS clients and servers
// (tests/testing/make_test_certs.sh).
#ifndef LOCKSTEP_TESTS_TESTING_TEST_CERTS_H_
#define LOCKSTEP_TESTS_TESTING_TEST_CERTS_H_

#include <string>

#include "absl/status/statusor.h"

namespace lockstep::testing {

// Runs tests/testing/make_test_certs.sh (found through $LOCKSTEP_SOURCE_DIR,
// else the working directory) into a fresh temporary directory and returns
// its path; the caller removes it (RemoveTree). It holds, all PEM:
//   ca.pem ca.key            a test CA
//   server.pem server.key    server certificate signed by the CA, for
//                            DNS:localhost and IP:127.0.0.1
//   client.pem client.key    client certificate signed by the CA (mTLS)
//   rogue_ca.pem             another CA, and
//   rogue_client.pem/.key    a client certificate it signed (to be refused)
// INTERNAL when the script (openssl) fails.
absl::StatusOr<std::string> MakeTestCerts();

}  // namespace lockstep::testing

#endif  // LOCKSTEP_TESTS_TESTING_TEST_CERTS_H_
