"""Runs sdk/python/examples/rl_driver.py (a user-written reward function
driving the RL loop) against real services under /usr/bin/python3."""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class RlDriverTest(unittest.TestCase):
    def test_driver_trains_on_policy(self):
        stack = harness.Stack()
        try:
            driver = os.path.join(harness.env("LOCKSTEP_SOURCE_DIR"), "sdk", "python",
                                  "examples", "rl_driver.py")
            r = subprocess.run([sys.executable, driver, "--rollout=" + stack.rollout.address,
                                "--learner=" + stack.learner.address, "--steps=3",
                                "--require_exact"], capture_output=True, text=True,
                               timeout=300)
            sys.stderr.write(r.stdout + r.stderr)
            self.assertEqual(r.returncode, 0)
            m = re.search(r"summary steps=3 tokens_compared=(\d+) tokens_mismatched=(\d+) "
                          r"rollout_version=(\d+) sampled_compared=(\d+) "
                          r"sampled_mismatched=(\d+)", r.stdout)
            self.assertIsNotNone(m, r.stdout)
            self.assertGreater(int(m.group(1)), 0)
            self.assertEqual(int(m.group(2)), 0)
            self.assertEqual(int(m.group(3)), 3)  # the learner pushed every step
            # At temperature 0.8 / top_p 0.95 both kinds match bit for bit.
            self.assertGreater(int(m.group(4)), 0)
            self.assertEqual(int(m.group(5)), 0)
        finally:
            stack.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
