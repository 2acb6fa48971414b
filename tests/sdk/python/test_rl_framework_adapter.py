"""Runs sdk/python/examples/rl_framework_adapter.py (the verl-style adapter:
generate, abort + resume of a partial rollout, pause / resume, sleep /
wake_up, weight updates) against real services under /usr/bin/python3: once
against a rollout alone (weights pushed from the model directory), once with a
learner that trains a step and pushes its weights."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SUMMARY = re.compile(r"summary generate=(\d+) resumed_tokens=(\d+) pause=(\d+) sleep=(\d+) "
                     r"weights=(\d+) version=(\d+) checks=(\d+) failed=(\d+)")


def example():
    return os.path.join(harness.env("LOCKSTEP_SOURCE_DIR"), "sdk", "python", "examples",
                        "rl_framework_adapter.py")


class RlFrameworkAdapterTest(unittest.TestCase):
    def run_example(self, args):
        r = subprocess.run([sys.executable, example()] + args, capture_output=True, text=True,
                           timeout=300)
        sys.stderr.write(r.stdout + r.stderr)
        self.assertEqual(r.returncode, 0)
        m = SUMMARY.search(r.stdout)
        self.assertIsNotNone(m, r.stdout)
        generate, resumed, pause, sleep, weights, version, checks, failed = map(int, m.groups())
        self.assertEqual(generate, 8)  # 2 prompts x 4 samples
        self.assertGreater(resumed, 0)  # the aborted sample had tokens to resume from
        self.assertEqual((pause, sleep, weights), (2, 1, 1))
        self.assertGreater(checks, 0)
        self.assertEqual(failed, 0)
        return version

    def test_against_a_rollout(self):
        directory = tempfile.mkdtemp(prefix="lockstep-py-adapter-")
        rollout = None
        try:
            model = os.path.join(directory, "model")
            harness.make_model(model)
            rollout = harness.start_rollout(model)
            version = self.run_example(["--rollout=" + rollout.address, "--model_dir=" + model])
            self.assertEqual(version, 1)  # the checkpoint pushed once, as served + 1
        finally:
            if rollout is not None:
                rollout.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def test_with_the_learner(self):
        stack = harness.Stack()
        try:
            version = self.run_example(["--rollout=" + stack.rollout.address,
                                        "--learner=" + stack.learner.address])
            self.assertEqual(version, 1)  # one train step, pushed while the rollout slept
        finally:
            stack.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
