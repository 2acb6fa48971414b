"""sdk/python packages: builds a wheel from a copy of sdk/python (+ proto/)
with pip, offline, installs it into a fresh virtualenv that sees Debian's
grpcio/protobuf, and imports the installed client."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest


class PackagingTest(unittest.TestCase):
    def test_wheel_builds_and_imports(self):
        source = os.environ["LOCKSTEP_SOURCE_DIR"]
        with tempfile.TemporaryDirectory(prefix="lockstep-pkg-") as tmp:
            src = os.path.join(tmp, "src")
            shutil.copytree(os.path.join(source, "sdk", "python"), src,
                            ignore=shutil.ignore_patterns("_proto", "build", "*.egg-info",
                                                          "__pycache__"))
            shutil.copytree(os.path.join(source, "proto"), os.path.join(src, "proto"))
            wheels = os.path.join(tmp, "wheels")
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--no-index", "-w", wheels, src],
                           check=True, stdout=subprocess.DEVNULL)
            [wheel] = os.listdir(wheels)
            self.assertTrue(wheel.startswith("lockstep_client-0.1.0-"), wheel)
            venv = os.path.join(tmp, "venv")
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                            "--without-pip", venv], check=True)
            py = os.path.join(venv, "bin", "python")
            subprocess.run([sys.executable, "-m", "pip", "--python", py, "install",
                            "--no-deps", "--no-index", os.path.join(wheels, wheel)],
                           check=True, stdout=subprocess.DEVNULL)
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            out = subprocess.run(
                [py, "-c", "import lockstep_client as l; "
                           "print(l.__version__, l.__file__, "
                           "l.RolloutClient.make_request([[1, 2]], seed=3).sampling.seed)"],
                check=True, capture_output=True, text=True, env=env, cwd=tmp).stdout
            version, path, seed = out.split()
            self.assertEqual(version, "0.1.0")
            self.assertTrue(path.startswith(venv), path)
            self.assertEqual(seed, "3")


if __name__ == "__main__":
    unittest.main(verbosity=2)
