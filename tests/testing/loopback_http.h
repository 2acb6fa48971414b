// Plain HTTP/1.0 on 127.0.0.1 for the tests of the metrics endpoints.
#ifndef LOCKSTEP_TESTS_TESTING_LOOPBACK_HTTP_H_
#define LOCKSTEP_TESTS_TESTING_LOOPBACK_HTTP_H_

#include <string>

namespace lockstep::testing {

// A TCP connection to 127.0.0.1:port (blocking), or -1.
int ConnectLoopback(int port);

// GET path from 127.0.0.1:port: the whole response (status line, headers,
// body), read until the server closes; "" when the connection fails.
// `headers`: extra request header lines, each ending in "\r\n".
std::string HttpGetResponse(int port, const std::string& path, const std::string& headers = "");

// The body of HttpGetResponse ("" on failure).
std::string HttpGetBody(int port, const std::string& path = "/metrics");

}  // namespace lockstep::testing

#endif  // LOCKSTEP_TESTS_TESTING_LOOPBACK_HTTP_H_
