// `make demo`'s script, shortened (DEMO_STEPS=3): both modes run, the
// per-step lines and the two-row summary are printed, invariant mode is
// bit-identical (exit 0) and standard mode is not.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

TEST(DemoTest, ScriptRunsBothModes) {
  const std::string source = lockstep::testing::SourceDir();
  const std::string build = lockstep::testing::BuildDir();
  ASSERT_FALSE(source.empty());
  ASSERT_FALSE(build.empty());
  TempDir dir("demo-test");
  const std::string out = dir.Sub("demo.out");
  const std::string cmd =
      absl::StrCat("DEMO_STEPS=3 LOCKSTEP_NUM_THREADS=2 ", source,
                   "/scripts/demo.sh ", build, " > ", out, " 2>&1");
  const int rc = std::system(cmd.c_str());
  std::ifstream in(out);
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  std::fprintf(stderr, "%s\n", s.c_str());
  ASSERT_EQ(rc, 0) << s;
  for (const char* want :
       {"== invariant kernels", "== standard kernels", "== summary",
        "learner_service grpc=127.0.0.1:", "metrics=http://127.0.0.1:",
        "reward", "exact%", "push_ms", "invariant: all ",
        "temperature 0.8, top_p 0.95", "raw and under the sampling distribution"}) {
    EXPECT_NE(s.find(want), std::string::npos) << "missing '" << want << "'";
  }
  // Three step lines per mode: "    1     1 ..." .. "    3     3 ...".
  size_t steps = 0;
  std::istringstream lines(s);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream f(line);
    long step = 0, ver = 0;
    double reward = 0;
    if (f >> step >> ver >> reward && step >= 1 && step <= 3 && ver == step) ++steps;
  }
  EXPECT_EQ(steps, 6u) << s;
  // The twin inside the demo: the summary's standard row must show
  // mismatches (the invariant row's zero is what exit code 0 checks), or the
  // demo could not tell the modes apart.
  std::istringstream rows(s);
  bool standard_row = false;
  while (std::getline(rows, line)) {
    std::istringstream f(line);
    std::string mode;
    long compared = -1, mismatched = -1;
    if (f >> mode >> compared >> mismatched && mode == "standard") {
      standard_row = true;
      EXPECT_GT(compared, 0) << line;
      EXPECT_GT(mismatched, 0) << "standard kernels matched on every token: " << line;
      // The last column: mismatches under the sampling distribution.
      const std::string last = line.substr(line.find_last_of(' ') + 1);
      EXPECT_GT(std::stol(last), 0) << "standard kernels matched every sampled logprob: " << line;
    }
  }
  EXPECT_TRUE(standard_row) << s;
}

}  // namespace
}  // namespace lockstep::learner::itest
