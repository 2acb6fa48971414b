#!/usr/bin/python3
"""Keeps the container images of deploy/docker/ in step with what the services link.

No container engine runs here, so the images are checked where they can go wrong:

  static (always):
    - each service Dockerfile has build stages that run scripts/install-deps.sh, a `cpu` stage that
      installs runtime-packages.txt + runtime-packages-cpu.txt, a CUDA 13 runtime base and a default
      `cuda` stage that installs runtime-packages.txt, a numeric non-root USER, the service's binary as
      ENTRYPOINT and EXPOSEs the ports of the Helm chart's values.yaml;
    - every package of the runtime lists is installed on this machine and is provided by
      scripts/install-deps.sh (one of its packages or their Depends), so the lists cannot drift from it;
    - self-test: the check rejects a binary that links libraries outside the lists (grpc_cpp_plugin
      against the lists without runtime-packages.txt).
  ldd (when binaries are given, i.e. when CMake has the service targets):
    - CPU image: every library `ldd` resolves for the binary is owned by a package in the Depends
      closure of runtime-packages.txt + runtime-packages-cpu.txt, or is one of the project's own
      libraries in the build tree (the Dockerfiles copy lib*.so* from it); nothing is "not found";
    - CUDA image: every library the binary NEEDs directly is in the closure of runtime-packages.txt or
      belongs to a runtime-packages-cpu.txt package (LibTorch, replaced by LibTorch with CUDA there).

Usage: docker_runtime_libs_test.py [--build-dir DIR] [BINARY ...]
Ends with 'N passed, N failed'; exit status 1 on a failure.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKER = os.path.join(ROOT, "deploy", "docker")
SERVICES = {
    # service: (Dockerfile, values.yaml key)
    "rollout_service": ("rollout.Dockerfile", "rollout"),
    "learner_service": ("learner.Dockerfile", "learner"),
}

passed = 0
failed = 0


def ok(msg):
    global passed
    passed += 1
    print(f"ok   {msg}")


def fail(msg):
    global failed
    failed += 1
    print(f"FAIL {msg}")


def check(cond, msg, detail=""):
    if cond:
        ok(msg)
    else:
        fail(msg + (f": {detail}" if detail else ""))
    return cond


def read_list(name):
    pkgs = []
    with open(os.path.join(DOCKER, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                pkgs.extend(line.split())
    return pkgs


def install_deps_packages():
    text = open(os.path.join(ROOT, "scripts", "install-deps.sh")).read()
    m = re.search(r"^PACKAGES=\((.*?)^\)", text, re.S | re.M)
    if not m:
        return []
    body = re.sub(r"#.*", "", m.group(1))
    return body.split()


# --- dpkg database ---------------------------------------------------------------------------------
class Dpkg:
    """Installed packages: their Depends/Pre-Depends, Provides and the files they own."""

    def __init__(self):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Abbrev}\t${Depends}\t${Pre-Depends}\t${Provides}\n"],
            capture_output=True, text=True, check=True).stdout
        self.installed = set()
        self.depends = {}
        self.providers = {}
        for line in out.splitlines():
            name, status, dep, pre, prov = (line.split("\t") + [""] * 5)[:5]
            if not status.startswith("ii"):
                continue
            self.installed.add(name)
            self.depends[name] = [self._alternatives(d) for d in (dep + "," + pre).split(",") if d.strip()]
            for p in prov.split(","):
                p = self._name(p)
                if p:
                    self.providers.setdefault(p, set()).add(name)
        self.owner = {}
        for f in glob.glob("/var/lib/dpkg/info/*.list"):
            pkg = os.path.basename(f)[:-len(".list")].split(":")[0]
            with open(f, errors="replace") as fh:
                for path in fh:
                    self.owner.setdefault(path.rstrip("\n"), pkg)

    @staticmethod
    def _name(dep):
        dep = re.sub(r"\(.*?\)", "", dep).strip()
        return dep.split(":")[0].strip()

    def _alternatives(self, dep):
        return [self._name(a) for a in dep.split("|") if self._name(a)]

    def resolve(self, name):
        """Installed packages that satisfy `name` (a real or a virtual package)."""
        got = {name} & self.installed
        return got | (self.providers.get(name, set()) & self.installed)

    def closure(self, roots):
        seen = set()
        todo = [p for r in roots for p in self.resolve(r)]
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            for alts in self.depends.get(p, []):
                for a in alts:  # an alternative apt may pick: every installed one counts
                    todo.extend(self.resolve(a) - seen)
        return seen

    def owner_of(self, path):
        cands = [path, os.path.realpath(path)]
        for c in list(cands):
            if c.startswith("/lib/"):
                cands.append("/usr" + c)
            elif c.startswith("/usr/lib/"):
                cands.append(c[len("/usr"):])
        for c in cands:
            if c in self.owner:
                return self.owner[c]
        return None


def ldd(binary):
    """[(soname, path or None)] of every library the dynamic loader resolves for `binary`."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, rest = [x.strip() for x in line.split("=>", 1)]
            path = rest.split("(")[0].strip()
            libs.append((name, None if path in ("not found", "") else path))
    return libs, out.returncode


def needed(binary):
    out = subprocess.run(["objdump", "-p", binary], capture_output=True, text=True).stdout
    return [l.split()[1] for l in out.splitlines() if l.strip().startswith("NEEDED")]


def check_binary(dpkg, binary, cpu_ok, cuda_ok, torch_pkgs, build_dir, label=None, quiet=False):
    """Returns the problems found; reports them unless quiet."""
    label = label or os.path.basename(binary)
    libs, rc = ldd(binary)
    problems = []
    if rc != 0:
        problems.append(f"ldd failed on {binary}")
    paths = {}
    for name, path in libs:
        paths[name] = path
        if path is None:
            problems.append(f"cpu image: {name} not found by the loader")
            continue
        real = os.path.realpath(path)
        if build_dir and real.startswith(build_dir + os.sep):
            continue  # the project's own library, copied from the build stage
        if real.startswith("/usr/local/cuda"):
            # A CUDA build (nvcc found) links the toolkit's cudart/NCCL: the
            # cuda image's base provides them, and the cpu image is built
            # with -DLOCKSTEP_CUDA=OFF, so it never needs them.
            continue
        pkg = dpkg.owner_of(path)
        if pkg is None:
            problems.append(f"cpu image: {path} is owned by no Debian package")
        elif pkg not in cpu_ok:
            problems.append(f"cpu image: {name} comes from package {pkg}, which "
                            "deploy/docker/runtime-packages*.txt do not provide")
    for name in needed(binary):
        path = paths.get(name)
        if path is None:
            continue
        if build_dir and os.path.realpath(path).startswith(build_dir + os.sep):
            continue
        pkg = dpkg.owner_of(path)
        if pkg is not None and pkg not in cuda_ok and pkg not in torch_pkgs:
            problems.append(f"cuda image: directly linked {name} comes from package {pkg}, which "
                            "deploy/docker/runtime-packages.txt does not provide")
    if not quiet:
        if problems:
            for p in problems:
                fail(f"{label}: {p}")
        else:
            ok(f"{label}: all {len(libs)} libraries from ldd are in the cpu image's packages, and its "
               f"{len(needed(binary))} direct ones in the cuda image's")
    return problems


# --- static checks of the Dockerfiles ----------------------------------------------------------------
def stages(text):
    """{stage name: body} of a Dockerfile."""
    out, name, body = {}, None, []
    for line in text.splitlines():
        m = re.match(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            if name:
                out[name] = "\n".join(body)
            name, body = (m.group(1) or f"stage{len(out)}"), [line]
        elif name:
            body.append(line)
    if name:
        out[name] = "\n".join(body)
    return out


def chart_ports():
    ports = {}
    text = open(os.path.join(ROOT, "deploy", "helm", "lockstep", "values.yaml")).read()
    for comp in ("rollout", "learner"):
        m = re.search(rf"^{comp}:\n(.*?)^\S", text, re.S | re.M)
        block = m.group(1) if m else ""
        g = re.search(r"^\s+ports:\n(?:\s+#.*\n)*\s+grpc: (\d+)\n(?:\s+#.*\n)*\s+metrics: (\d+)", block, re.M)
        ports[comp] = (g.group(1), g.group(2)) if g else None
    return ports


def static_checks():
    ports = chart_ports()
    for service, (dockerfile, comp) in SERVICES.items():
        text = open(os.path.join(DOCKER, dockerfile)).read()
        st = stages(text)
        names = list(st)
        check(names[-1:] == ["cuda"], f"{dockerfile}: the default (last) stage is `cuda`", f"stages {names}")
        for s in ("build-cpu", "build-cuda", "cpu", "cuda-runtime-base", "cuda"):
            check(s in st, f"{dockerfile}: has stage {s}")
        for s in ("build-cpu", "build-cuda"):
            body = st.get(s, "")
            check("scripts/install-deps.sh" in body and re.search(r"RUN .*install-deps\.sh", body),
                  f"{dockerfile}: {s} runs scripts/install-deps.sh")
            check(f"--target {service}" in body, f"{dockerfile}: {s} builds {service}")
            check("lockstep_make_model --preset tiny" in body, f"{dockerfile}: {s} makes the tiny model")
        check("runtime-packages.txt" in st.get("cpu", "") and "runtime-packages-cpu.txt" in st.get("cpu", ""),
              f"{dockerfile}: cpu installs runtime-packages.txt and runtime-packages-cpu.txt")
        check("runtime-packages.txt" in st.get("cuda", "") and "runtime-packages-cpu.txt" not in st.get("cuda", ""),
              f"{dockerfile}: cuda installs runtime-packages.txt (not the CPU LibTorch)")
        check("runtime-packages-cuda.txt" in st.get("cuda-runtime-base", ""),
              f"{dockerfile}: cuda-runtime-base installs runtime-packages-cuda.txt")
        check(re.search(r"^FROM cuda-runtime-base AS cuda$", text, re.M),
              f"{dockerfile}: cuda builds on cuda-runtime-base")
        for s in ("cpu", "cuda"):
            body = st.get(s, "")
            user = re.findall(r"^USER\s+(\S+)", body, re.M)
            check(user and re.match(r"^[1-9][0-9]*(:[0-9]+)?$", user[-1]),
                  f"{dockerfile}: {s} runs as a numeric non-root USER", f"USER {user}")
            check(f'ENTRYPOINT ["/opt/lockstep/bin/{service}"]' in body, f"{dockerfile}: {s} runs {service}")
            expose = re.findall(r"^EXPOSE\s+(.*)$", body, re.M)
            want = ports.get(comp)
            got = tuple(expose[-1].split()) if expose else None
            check(want and got == want, f"{dockerfile}: {s} exposes the chart's gRPC and metrics ports",
                  f"EXPOSE {got}, values.yaml {want}")
            check(f"--port={want[0]}" in body and f"--metrics_port={want[1]}" in body if want else False,
                  f"{dockerfile}: {s} CMD listens on the exposed ports")
            check("/opt/lockstep/models/tiny" in body, f"{dockerfile}: {s} ships the tiny model")
        check(os.path.exists(os.path.join(DOCKER, dockerfile + ".dockerignore")),
              f"{dockerfile}: has a .dockerignore beside it")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", help="CMake build tree (its libraries are copied into the images)")
    ap.add_argument("binaries", nargs="*")
    a = ap.parse_args()
    build_dir = os.path.realpath(a.build_dir) if a.build_dir else None

    static_checks()

    dpkg = Dpkg()
    common, cpu_only = read_list("runtime-packages.txt"), read_list("runtime-packages-cpu.txt")
    deps = install_deps_packages()
    check(deps, "scripts/install-deps.sh has a PACKAGES array")
    deps_closure = dpkg.closure(deps)
    for p in common + cpu_only:
        if check(dpkg.resolve(p), f"runtime package {p} is installed here"):
            check(p in deps_closure, f"runtime package {p} comes with scripts/install-deps.sh",
                  "not one of its PACKAGES nor their Depends")
    cpu_ok = dpkg.closure(common + cpu_only)
    cuda_ok = dpkg.closure(common)
    torch_pkgs = set(cpu_only)

    # Self-test: with runtime-packages.txt left out, grpc_cpp_plugin (libprotoc, libgrpc_plugin_support)
    # must fail both checks, naming the package to add.
    plugin = shutil.which("grpc_cpp_plugin")
    if plugin:
        problems = check_binary(dpkg, plugin, dpkg.closure(cpu_only), dpkg.closure([]), set(), None, quiet=True)
        check(any(p.startswith("cpu image: libprotoc.so") and "libprotoc32" in p for p in problems) and
              any(p.startswith("cuda image: directly linked libprotoc.so") for p in problems),
              "self-test: a binary linking libraries outside the lists is rejected", str(problems))
    else:
        print("skip self-test: grpc_cpp_plugin not installed")

    if not a.binaries:
        print("skip ldd check: no service binaries given (CMake passes them once the targets exist)")
    for b in a.binaries:
        if check(os.access(b, os.X_OK), f"{b} exists (build it first: cmake --build)"):
            check_binary(dpkg, b, cpu_ok, cuda_ok, torch_pkgs, build_dir)

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
