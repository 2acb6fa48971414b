"""Runs the examples of docs/sdk.md against real services, so that what the
README shows works as written. Blocks are marked by a preceding comment:
  <!-- sdk-doc-test: bash -->            run with bash -euo pipefail
  <!-- sdk-doc-test: python -->          run with this interpreter
  <!-- sdk-doc-test: cpp-source PATH -->  must equal the file PATH (built and
                                          run by a later bash block)
Blocks run in document order, in a scratch directory where build/ and sdk/
point at the build and source trees; 127.0.0.1:50051 / :50052 and
$LOCKSTEP_ROLLOUT / $LOCKSTEP_LEARNER are the test's services, and /tmp/ paths
move into the scratch directory."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BLOCK = re.compile(r"<!-- sdk-doc-test: (\S+)(?: (\S+))? -->\s*\n```\w*\n(.*?)```", re.S)


def main():
    source = harness.env("LOCKSTEP_SOURCE_DIR")
    build = harness.env("LOCKSTEP_BUILD_DIR")
    with open(os.path.join(source, "docs", "sdk.md")) as f:
        doc = f.read()
    blocks = BLOCK.findall(doc)
    kinds = [k for k, _, _ in blocks]
    for needed in ("bash", "python", "cpp-source"):
        if needed not in kinds:
            sys.exit("docs/sdk.md has no '%s' example block" % needed)
    stack = harness.Stack()
    scratch = tempfile.mkdtemp(prefix="lockstep-doc-")
    failures = 0
    try:
        os.symlink(build, os.path.join(scratch, "build"))
        os.symlink(os.path.join(source, "sdk"), os.path.join(scratch, "sdk"))
        tmp = os.path.join(scratch, "tmp") + "/"
        os.makedirs(tmp)
        envs = dict(os.environ, LOCKSTEP_ROLLOUT=stack.rollout.address,
                    LOCKSTEP_LEARNER=stack.learner.address)

        def localize(text):
            return (text.replace("127.0.0.1:50051", stack.rollout.address)
                    .replace("127.0.0.1:50052", stack.learner.address)
                    .replace("/tmp/", tmp))

        for i, (kind, arg, body) in enumerate(blocks):
            print("== docs/sdk.md example %d (%s %s)" % (i + 1, kind, arg or ""), flush=True)
            if kind == "cpp-source":
                with open(os.path.join(source, arg)) as f:
                    if f.read() != body:
                        print("FAIL: the block differs from %s" % arg)
                        failures += 1
                continue
            if kind == "bash":
                cmd = ["bash", "-euo", "pipefail", "-c", localize(body)]
            elif kind == "python":
                cmd = [sys.executable, "-c", localize(body)]
            else:
                print("FAIL: unknown block kind %s" % kind)
                failures += 1
                continue
            r = subprocess.run(cmd, cwd=scratch, env=envs, capture_output=True, text=True,
                               timeout=300)
            sys.stdout.write(r.stdout)
            sys.stdout.write(r.stderr)
            if r.returncode != 0:
                print("FAIL: exit status %d" % r.returncode)
                failures += 1
    finally:
        stack.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        sys.exit("%d docs/sdk.md example(s) failed" % failures)
    print("all %d docs/sdk.md examples passed" % len(blocks))


if __name__ == "__main__":
    main()
