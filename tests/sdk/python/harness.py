"""Starts real lockstep services for the Python SDK tests.

Paths come from the environment (set by tests/sdk/CMakeLists.txt):
LOCKSTEP_ROLLOUT_BINARY, LOCKSTEP_LEARNER_BINARY, LOCKSTEP_MAKE_MODEL_BINARY,
LOCKSTEP_CLI_BINARY, LOCKSTEP_BUILD_DIR, LOCKSTEP_SOURCE_DIR; PYTHONPATH
holds the assembled lockstep_client package.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

LISTENING = re.compile(r"^listening grpc=(\S+) metrics=(\S+)")


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError("%s is not set (run through ctest)" % name)
    return value


class Service:
    """A service process; its output goes to stderr, prefixed."""

    def __init__(self, args, name, timeout=120):
        self.name = name
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        deadline = time.monotonic() + timeout
        self.address = None
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = LISTENING.match(line)
            if m:
                self.address, self.metrics = m.group(1), m.group(2)
                break
        if self.address is None:
            self.proc.kill()
            raise RuntimeError("%s did not start:\n%s" % (name, "".join(lines)))
        self._drain = threading.Thread(target=self._copy, daemon=True)
        self._drain.start()

    def _copy(self):
        for line in self.proc.stdout:
            sys.stderr.write("[%s] %s" % (self.name, line))

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_model(directory, seed=1, max_shard_bytes=0):
    subprocess.run([env("LOCKSTEP_MAKE_MODEL_BINARY"), "--preset", "tiny", "--seed", str(seed),
                    "--out", directory, "--max_shard_bytes=%d" % max_shard_bytes],
                   check=True, stdout=subprocess.DEVNULL)


def start_rollout(model_dir, extra=(), port=0):
    return Service([env("LOCKSTEP_ROLLOUT_BINARY"), "--host=127.0.0.1", "--port=%d" % port,
                    "--metrics_port=0", "--model_dir=" + model_dir, "--kernels=invariant",
                    "--device=cpu", "--num_threads=2", "--drain_grace_seconds=2",
                    "--kv_cache_bytes=33554432"] + list(extra),
                   "rollout")


def start_learner(model_dir, rollout=None, extra=()):
    args = [env("LOCKSTEP_LEARNER_BINARY"), "--host=127.0.0.1", "--port=0", "--metrics_port=0",
            "--model_dir=" + model_dir, "--kernels=invariant", "--device=cpu",
            "--num_threads=2"]
    if rollout:
        args.append("--rollout=" + rollout)
    return Service(args + list(extra), "learner")


class Stack:
    """A temp dir with a tiny model, a rollout and a learner pushing to it."""

    def __init__(self, rollout_extra=(), learner_extra=()):
        self.dir = tempfile.mkdtemp(prefix="lockstep-py-")
        self.model = os.path.join(self.dir, "model")
        make_model(self.model)
        self.rollout = start_rollout(self.model, rollout_extra)
        try:
            self.learner = start_learner(self.model, self.rollout.address, learner_extra)
        except Exception:
            self.rollout.stop()
            raise

    def close(self):
        self.learner.stop()
        self.rollout.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_certs(directory):
    subprocess.run(["bash", os.path.join(env("LOCKSTEP_SOURCE_DIR"), "tests", "testing",
                                         "make_test_certs.sh"), directory], check=True)
