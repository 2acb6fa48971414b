#!/usr/bin/python3
"""Finds lockstep services running on this machine and writes Prometheus file_sd targets for them.

`make demo` starts its services on ports picked at run time (--port=0 --metrics_port=0); scripts/observe.sh
runs this helper, without explicit targets, so that its Prometheus follows whatever runs now:
  - processes whose command line matches --match (default: a rollout_service or learner_service binary;
    the role is the regex group `role`);
  - their listening TCP sockets (from /proc); a port that answers `GET /metrics` with Prometheus text is
    the metrics port, the other one the gRPC port (0.0.0.0/:: are reached on 127.0.0.1);
  - writes DIR/rollout.json, DIR/learner.json (metrics) and DIR/grpc-<role>-<module>.json (gRPC health
    probes through the blackbox exporter at --blackbox), atomically and only when they change.

Usage: discover_local_targets.py --dir TARGETS_DIR [--blackbox HOST:PORT] [--interval 2] [--once]
                                 [--match REGEX]
"""
import argparse
import json
import os
import re
import socket
import sys
import time
import urllib.request

DEFAULT_MATCH = r"(^|/)(?P<role>rollout|learner)_service(\s|$)"
MODULES = {"rollout": "grpc_rollout", "learner": "grpc_learner"}


def listening_sockets():
    """{inode: (ip, port)} of listening TCP sockets."""
    out = {}
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "0A":  # TCP_LISTEN
                continue
            ip_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(ip_hex)
            if v6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out[f[9]] = (ip, int(port_hex, 16))
    return out


def services(match):
    """[(pid, role)] of matching processes."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        m = match.search(cmd.strip())
        if m and m.groupdict().get("role") in MODULES:
            found.append((int(pid), m.group("role")))
    return found


def socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
    return inodes


def local(ip, port):
    if ip.startswith("::ffff:"):  # IPv4-mapped (gRPC listens on IPv6 sockets)
        ip = ip[len("::ffff:"):]
    if ip in ("0.0.0.0", "::", "127.0.0.1") or ip.startswith("127."):
        return f"{ip if ip.startswith('127.') else '127.0.0.1'}:{port}"
    if ip == "::1":
        return f"[::1]:{port}"
    return None  # bound to a non-loopback address only: not ours to scrape


_kind = {}


def is_metrics(pid, addr):
    key = (pid, addr)
    if key not in _kind:
        try:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=1) as r:
                _kind[key] = r.status == 200 and b"# TYPE" in r.read(65536)
        except Exception:  # noqa: BLE001 - anything but a Prometheus page means "not metrics"
            _kind[key] = False
    return _kind[key]


def discover(match):
    """{role: {"metrics": [...], "grpc": [...]}}"""
    socks = listening_sockets()
    found = {r: {"metrics": [], "grpc": []} for r in MODULES}
    for pid, role in services(match):
        for inode in socket_inodes(pid):
            if inode in socks:
                addr = local(*socks[inode])
                if addr:
                    found[role]["metrics" if is_metrics(pid, addr) else "grpc"].append(addr)
    for r in found.values():
        for k in r:
            r[k] = sorted(set(r[k]))
    return found


def write(path, groups):
    text = json.dumps(groups, indent=1) + "\n"
    try:
        if open(path).read() == text:
            return False
    except OSError:
        pass
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return True


def write_all(directory, found, blackbox):
    changed = False
    for role, r in found.items():
        changed |= write(os.path.join(directory, f"{role}.json"), [{"targets": r["metrics"], "labels": {}}])
        if blackbox:
            for module in (MODULES[role], "grpc_health"):
                changed |= write(os.path.join(directory, f"grpc-{role}-{module}.json"),
                                 [{"targets": r["grpc"],
                                   "labels": {"role": role, "module": module, "blackbox": blackbox}}])
    return changed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--blackbox", default="")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--match", default=DEFAULT_MATCH)
    ap.add_argument("--once", action="store_true", help="write once, print what was found, exit")
    a = ap.parse_args()
    match = re.compile(a.match)
    os.makedirs(a.dir, exist_ok=True)
    last = None
    while True:
        found = discover(match)
        write_all(a.dir, found, a.blackbox)
        if a.once:
            print(json.dumps(found, sort_keys=True))
            return 0
        if found != last:
            summary = "; ".join(f"{role} metrics {r['metrics'] or '-'} grpc {r['grpc'] or '-'}"
                                for role, r in sorted(found.items()))
            print(f"observe: targets now {summary}", flush=True)
            last = found
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
