#!/usr/bin/python3
"""End-to-end test of the observe layer against the real services, all on 127.0.0.1.

  1. makes the tiny model (lockstep_make_model --preset tiny --seed 1);
  2. starts rollout_service, then Prometheus and prometheus-blackbox-exporter through scripts/observe.sh
     (scrape interval 1s), then learner_service driving the RL loop (--drive) against the rollout;
     observe.sh's target discovery (deploy/prometheus/discover_local_targets.py) finds both;
  3. while the learner has done at least --min-steps steps and both services are up:
       - the blackbox exporter's grpc prober reads SERVING from each service's health ("" and its own
         lockstep.v1.*Service), as the Helm chart's Kubernetes probes would;
       - a live scrape of each service passes `promtool check metrics` and holds its role's metrics of
         the contract (tests/deploy/lockstep_metrics.json) with the labels the dashboard relies on;
       - EVERY PromQL query of deploy/grafana/lockstep.json (variables substituted: All = .*), and the
         selector of each query variable, returns a non-empty result from that Prometheus;
       - every alert rule of deploy/prometheus/lockstep-rules.yml evaluates without error, and
         LockstepLogprobMismatch is silent (invariant kernels on both sides);
  4. sends SIGTERM to both services while the loop runs: each must answer NOT_SERVING to the blackbox
     probe while it drains, then exit by itself (not hang, not crash).

Usage: e2e_observe_test.py --build-dir BUILD [--min-steps 3] [--timeout 300] [--keep]
       e2e_observe_test.py --fake        (the harness against tests/deploy/fake_service.py)
Extra flags for the services: LOCKSTEP_E2E_ROLLOUT_ARGS, LOCKSTEP_E2E_LEARNER_ARGS (shell words).
Ends with 'N passed, N failed'; exit 1 on a failure. Logs stay in the work directory on a failure.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
LISTENING = re.compile(r"listening grpc=(\S+):(\d+) metrics=(\S+):(\d+)")


class Failed(Exception):
    """A fatal failure: the remaining checks cannot run."""


class Run:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.timeout
        self.passed = 0
        self.failed = 0
        self.procs = {}      # name -> Popen
        self.work = tempfile.mkdtemp(prefix="lockstep-e2e-")
        self.ready = {}      # name -> (grpc, metrics) addresses

    # --- reporting -------------------------------------------------------------------------------
    def ok(self, msg):
        self.passed += 1
        print(f"ok   {msg}", flush=True)

    def fail(self, msg):
        self.failed += 1
        print(f"FAIL {msg}", flush=True)

    def check(self, cond, msg, detail=""):
        if cond:
            self.ok(msg)
        else:
            self.fail(msg + (f": {detail}" if detail else ""))
        return cond

    def left(self):
        return self.deadline - time.monotonic()

    def log_tail(self, name, n=25):
        path = os.path.join(self.work, f"{name}.log")
        try:
            with open(path, errors="replace") as f:
                lines = f.readlines()[-n:]
        except OSError:
            return ""
        return "".join(f"     | {l}" for l in lines)

    # --- processes -------------------------------------------------------------------------------
    def start(self, name, cmd, wait_listening=True, timeout=120):
        """Starts `cmd` in its own process group, output to <work>/<name>.log; with wait_listening,
        waits for its `listening grpc=... metrics=...` line and returns the two addresses."""
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        print(f"     $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True, cwd=self.work)
        except OSError as e:
            raise Failed(f"cannot start {name}: {e}")
        self.procs[name] = p
        found = threading.Event()
        result = {}

        def pump():
            for line in p.stdout:
                log.write(line)
                log.flush()
                m = LISTENING.search(line)
                if m and not found.is_set():
                    result["grpc"] = f"{m.group(1)}:{m.group(2)}"
                    result["metrics"] = f"{m.group(3)}:{m.group(4)}"
                    found.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        if not wait_listening:
            return None
        end = time.monotonic() + min(timeout, self.left())
        while time.monotonic() < end and not found.is_set():
            if p.poll() is not None:
                time.sleep(0.2)  # let the pump drain
                raise Failed(f"{name} exited with {p.returncode} before printing its `listening` line\n"
                             + self.log_tail(name))
            found.wait(0.2)
        if not found.is_set():
            raise Failed(f"{name} printed no `listening grpc=HOST:PORT metrics=HOST:PORT` line within "
                         f"{timeout}s\n" + self.log_tail(name))
        for k in ("grpc", "metrics"):
            host = result[k].rsplit(":", 1)[0]
            if host in ("0.0.0.0", "[::]", "::", ""):
                result[k] = "127.0.0.1:" + result[k].rsplit(":", 1)[1]
        self.ready[name] = (result["grpc"], result["metrics"])
        return result["grpc"], result["metrics"]

    def stop_all(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 10
        for name, p in self.procs.items():
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    # --- HTTP ------------------------------------------------------------------------------------
    @staticmethod
    def get(url, timeout=5):
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()

    def prom(self, path, **params):
        url = f"http://{self.prom_addr}{path}?{urllib.parse.urlencode(params)}"
        try:
            return json.loads(self.get(url, timeout=10))
        except urllib.error.HTTPError as e:
            return json.loads(e.read().decode() or "{}") or {"status": "error", "error": str(e)}

    def query(self, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.prom("/api/v1/query", **params)

    def probe(self, module, target):
        """Blackbox grpc probe: (probe_success, serving_status or None)."""
        try:
            text = self.get(f"http://{self.bb_addr}/probe?module={module}&target={target}", timeout=5)
        except (urllib.error.URLError, OSError, TimeoutError):
            return None, None
        success = re.search(r"^probe_success (\S+)$", text, re.M)
        status = re.findall(r'^probe_grpc_healthcheck_response\{serving_status="(\w+)"\} 1$', text, re.M)
        return (success and float(success.group(1)) == 1), (status[0] if status else None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(expr, rate="20s", rng="5m"):
    expr = re.sub(r"\$\{?__rate_interval\}?", rate, expr)
    expr = re.sub(r"\$\{?__interval\}?", "5s", expr)
    expr = re.sub(r"\$\{?__range\}?", rng, expr)
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)


def dashboard_queries():
    d = json.load(open(os.path.join(ROOT, "deploy", "grafana", "lockstep.json")))
    panels = []
    for p in d.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    queries = [(p.get("title"), t.get("refId"), t["expr"]) for p in panels for t in p.get("targets", [])
               if t.get("expr")]
    variables = []
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"^label_values\((.*),\s*(\w+)\)$", q or "")
            if m:
                variables.append((v["name"], m.group(1), m.group(2)))
    return queries, variables


def resolve_bins(args):
    if args.fake:
        fake = [sys.executable, os.path.join(HERE, "fake_service.py")]
        return fake + ["--role=rollout"], fake + ["--role=learner"], None
    b = args.build_dir
    rollout = args.rollout_bin or os.path.join(b, "rollout_service", "rollout_service")
    learner = args.learner_bin or os.path.join(b, "learner_service", "learner_service")
    make_model = args.make_model_bin or os.path.join(b, "common", "lockstep_make_model")
    for p in (rollout, learner, make_model):
        if not os.access(p, os.X_OK):
            raise Failed(f"{p} is missing: build it first (cmake --build {b})")
    return [rollout], [learner], make_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rollout-bin")
    ap.add_argument("--learner-bin")
    ap.add_argument("--make-model-bin")
    ap.add_argument("--fake", action="store_true", help="use tests/deploy/fake_service.py")
    ap.add_argument("--min-steps", type=int, default=3, help="RL steps before the checks")
    ap.add_argument("--max-steps", type=int, default=1000, help="--steps of the learner (it is stopped)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    run = Run(args)
    print(f"     work directory {run.work}", flush=True)
    try:
        body(run, args)
    except Failed as e:
        run.fail(str(e))
    except KeyboardInterrupt:
        run.fail("interrupted")
    except Exception:  # noqa: BLE001 - a harness bug still reports, cleans up and fails
        import traceback
        run.fail("unexpected error in the test harness:\n" + traceback.format_exc())
    finally:
        run.stop_all()
        if run.failed or args.keep:
            print(f"     logs kept in {run.work}")
            for name in list(run.procs):
                if run.failed:
                    print(f"     --- {name}.log (tail)\n{run.log_tail(name, 15)}", end="")
        else:
            shutil.rmtree(run.work, ignore_errors=True)
    print(f"{run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


def body(run, args):
    for tool in ("prometheus", "promtool", "prometheus-blackbox-exporter"):
        if not shutil.which(tool):
            raise Failed(f"{tool} not found: run scripts/install-deps.sh")
    rollout_cmd, learner_cmd, make_model = resolve_bins(args)
    extra_r = shlex.split(os.environ.get("LOCKSTEP_E2E_ROLLOUT_ARGS", ""))
    extra_l = shlex.split(os.environ.get("LOCKSTEP_E2E_LEARNER_ARGS", ""))

    # 1. model
    model = os.path.join(run.work, "model")
    if make_model:
        r = subprocess.run([make_model, "--preset", "tiny", "--seed", "1", "--out", model],
                           capture_output=True, text=True, timeout=min(120, run.left()))
        if r.returncode != 0:
            raise Failed(f"lockstep_make_model failed ({r.returncode}): {r.stdout}{r.stderr}")
        run.ok("tiny model made")
    else:
        os.makedirs(model)
    # Loopback only (the services bind 0.0.0.0 by default).
    common = ["--host=127.0.0.1", f"--model_dir={model}", "--device=cpu", "--kernels=invariant"]

    # 2. rollout, Prometheus + blackbox exporter, learner
    rg, rm = run.start("rollout", rollout_cmd + ["--port=0", f"--metrics_port={free_port()}"] + common + extra_r)
    run.ok(f"rollout_service listening grpc={rg} metrics={rm}")
    lm_port = free_port()
    lm = f"127.0.0.1:{lm_port}"
    for attempt in range(3):
        run.prom_addr = f"127.0.0.1:{free_port()}"
        run.bb_addr = f"127.0.0.1:{free_port()}"
        state = os.path.join(run.work, f"observe{attempt}")
        # The learner's gRPC port is known only once it listens: its probe targets are written below.
        run.start(f"observe{attempt}",
                  [os.path.join(ROOT, "scripts", "observe.sh"), "--state-dir", state,
                   "--listen", run.prom_addr, "--blackbox-listen", run.bb_addr, "--scrape-interval", "1s",
                   "--retention", "1h", "--rollout", rm, "--learner", lm,
                   "--grpc-rollout", rg], wait_listening=False)
        end = time.monotonic() + 30
        up = False
        while time.monotonic() < end and run.procs[f"observe{attempt}"].poll() is None:
            try:
                up = "Ready" in run.get(f"http://{run.prom_addr}/-/ready", timeout=2)
                if up and run.probe("grpc_health", rg)[0] is not None:
                    break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        if up:
            break
        print(f"     Prometheus did not come up on {run.prom_addr} (port taken?), retrying\n"
              + run.log_tail(f"observe{attempt}", 5) + "", flush=True)
    else:
        raise Failed("Prometheus (scripts/observe.sh) did not become ready")
    run.ok(f"Prometheus ready on {run.prom_addr}, blackbox exporter on {run.bb_addr}")

    lg, lm2 = run.start("learner", learner_cmd + [
        "--port=0", f"--metrics_port={lm_port}", f"--rollout={rg}", "--drive", f"--steps={args.max_steps}",
        f"--checkpoint_dir={os.path.join(run.work, 'checkpoints')}"] + common + extra_l)
    run.check(lm2.endswith(f":{lm_port}"), f"learner_service listening grpc={lg} metrics={lm2}",
              f"metrics on {lm2}, asked for port {lm_port}")
    for m in ("grpc_learner", "grpc_health"):
        path = os.path.join(state, "targets", f"grpc-learner-{m}.json")
        with open(path + ".tmp", "w") as f:
            json.dump([{"targets": [lg], "labels": {"role": "learner", "module": m, "blackbox": run.bb_addr}}], f)
        os.replace(path + ".tmp", path)

    # `make observe` without targets finds the services and their ports itself.
    disc = [sys.executable, os.path.join(ROOT, "deploy", "prometheus", "discover_local_targets.py"),
            "--once", "--dir", os.path.join(run.work, "discovered")]
    if args.fake:
        disc += ["--match", r"fake_service\.py --role=(?P<role>rollout|learner)"]
    r = subprocess.run(disc, capture_output=True, text=True, timeout=30)
    try:
        found = json.loads(r.stdout)
    except ValueError:
        found = None
    want = {"rollout": {"grpc": [rg], "metrics": [rm]}, "learner": {"grpc": [lg], "metrics": [lm]}}
    run.check(found and all(a in found.get(role, {}).get(kind, []) for role, kinds in want.items()
                            for kind, addrs in kinds.items() for a in addrs),
              "observe.sh's discovery finds both services' gRPC and metrics ports",
              f"found {found or r.stdout + r.stderr}, want {want}")

    # 3. wait for a few RL steps, scraped by Prometheus while both services are up
    t_eval = None
    steps = 0
    while run.left() > 0:
        for name in ("rollout", "learner"):
            p = run.procs[name]
            if p.poll() is not None:
                raise Failed(f"{name}_service exited with {p.returncode} during the RL loop\n" + run.log_tail(name))
        r = run.query("sum(lockstep_learner_step_duration_seconds_count)")
        res = r.get("data", {}).get("result", [])
        steps = float(res[0]["value"][1]) if res else 0
        ups = run.query('up{job=~"lockstep-rollout|lockstep-learner"}').get("data", {}).get("result", [])
        if steps >= args.min_steps and len(ups) == 2 and all(u["value"][1] == "1" for u in ups):
            time.sleep(3)  # a few more scrapes, so that rate() windows hold several samples
            if all(run.procs[n].poll() is None for n in ("rollout", "learner")):
                t_eval = time.time() - 0.5
                break
        time.sleep(1)
    if t_eval is None:
        raise Failed(f"the learner did not reach {args.min_steps} steps (Prometheus sees {steps:g}) within "
                     f"{args.timeout:.0f}s\n" + run.log_tail("learner"))
    run.ok(f"{steps:g} RL steps scraped (learner --drive); checks at t={t_eval:.1f}")

    # 3a. gRPC health as Kubernetes probes it
    for name, addr, own in (("rollout", rg, "grpc_rollout"), ("learner", lg, "grpc_learner")):
        for module in ("grpc_health", own):
            success, status = run.probe(module, addr)
            run.check(success and status == "SERVING", f"blackbox {module} probe of {name} {addr}: SERVING",
                      f"probe_success={success} status={status}")

    # 3b. live scrapes: promtool check metrics, the contract's metrics and labels
    contract = json.load(open(os.path.join(HERE, "lockstep_metrics.json")))["metrics"]
    for name, addr in (("rollout", rm), ("learner", lm)):
        try:
            text = run.get(f"http://{addr}/metrics", timeout=10)
        except (urllib.error.URLError, OSError) as e:
            run.fail(f"scrape of {name} /metrics on {addr}: {e}")
            continue
        with open(os.path.join(run.work, f"{name}.metrics.txt"), "w") as f:
            f.write(text)
        pt = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        run.check(pt.returncode == 0, f"promtool check metrics on a live scrape of {name}",
                  (pt.stdout + pt.stderr).strip())
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        missing = [m["name"] for m in contract if m["role"] in (name, "both") and m["name"] not in types]
        wrong = [f'{m["name"]} is {types[m["name"]]}' for m in contract
                 if m["role"] in (name, "both") and m["name"] in types and types[m["name"]] != m["type"]]
        run.check(not missing and not wrong, f"{name} exports its {sum(m['role'] in (name, 'both') for m in contract)} "
                  "contract metrics with their types", f"missing {missing}, {wrong}")
        info = re.findall(r"^lockstep_build_info\{([^}]*)\} (\S+)", text, re.M)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', info[0][0])) if info else {}
        run.check(info and labels.get("role") == name and labels.get("kernels") == "invariant" and
                  labels.get("device") == "cpu" and labels.get("version") and float(info[0][1]) == 1,
                  f"{name} lockstep_build_info{{role,version,kernels,device}} = 1", str(info))
        run.check(re.search(rf'^lockstep_weight_version\{{[^}}]*role="{name}"', text, re.M),
                  f'{name} lockstep_weight_version{{role="{name}"}}')
        if name == "learner":
            run.check(re.search(r'^lockstep_logprob_abs_diff_bucket\{[^}]*le="0"', text, re.M),
                      'learner lockstep_logprob_abs_diff has a le="0" bucket')

    # 3c. every dashboard query returns data
    queries, variables = dashboard_queries()
    empty = []
    for title, ref, expr in queries:
        q = substitute(expr)
        r = run.query(q, at=t_eval)
        if r.get("status") != "success":
            empty.append(f'"{title}" {ref}: error {r.get("error")}: {q}')
        elif not r["data"]["result"]:
            empty.append(f'"{title}" {ref}: empty: {q}')
    run.check(not empty, f"all {len(queries)} dashboard queries return data", "\n       " + "\n       ".join(empty))
    for name, selector, label in variables:
        q = f"count by ({label}) ({substitute(selector)})"
        r = run.query(q, at=t_eval)
        res = r.get("data", {}).get("result", [])
        if label == "namespace":
            run.check(r.get("status") == "success", f"dashboard variable ${name} query runs (empty outside "
                      "Kubernetes: All = .*)", str(r.get("error")))
        else:
            run.check(res and all(x["metric"].get(label) for x in res),
                      f"dashboard variable ${name} lists values ({', '.join(x['metric'].get(label, '?') for x in res)})",
                      q)

    # 3d. rules evaluate; the mismatch alert is silent in invariant mode
    groups = run.prom("/api/v1/rules").get("data", {}).get("groups", [])
    rules = [r for g in groups for r in g.get("rules", [])]
    bad = [f'{r.get("name")}: {r.get("health")} {r.get("lastError", "")}' for r in rules if r.get("health") != "ok"]
    run.check(rules and not bad, f"{len(rules)} alert rules loaded and evaluated without error", "; ".join(bad))
    firing = run.query('ALERTS{alertname=~"LockstepLogprobMismatch|LockstepRolloutSelfCheckMismatch"}')
    run.check(not firing.get("data", {}).get("result"), "no mismatch alert in invariant mode",
              json.dumps(firing.get("data", {}).get("result")))
    probes = run.query('probe_success{job="lockstep-grpc-health"}').get("data", {}).get("result", [])
    run.check(len(probes) == 4 and all(p["value"][1] == "1" for p in probes),
              "Prometheus' blackbox job sees all 4 gRPC health probes succeed",
              json.dumps([(p["metric"].get("instance"), p["metric"].get("module"), p["value"][1]) for p in probes]))

    # 4. drain: SIGTERM both while the loop runs; each must answer NOT_SERVING before it exits
    seen = {"rollout": set(), "learner": set()}
    t_term = {}
    t_exit = {}

    def watch(name, addr, module):
        p = run.procs[name]
        while p.poll() is None and time.monotonic() < run.deadline:
            ok_, status = run.probe(module, addr)
            if status:
                seen[name].add(status)
            time.sleep(0.01)
        t_exit[name] = time.monotonic()

    threads = [threading.Thread(target=watch, args=a) for a in
               (("rollout", rg, "grpc_rollout"), ("learner", lg, "grpc_learner"))]
    for name in ("learner", "rollout"):
        t_term[name] = time.monotonic()
        run.procs[name].send_signal(signal.SIGTERM)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1, min(90, run.left())))
    for name in ("rollout", "learner"):
        p = run.procs[name]
        try:
            rc = p.wait(timeout=max(1, min(30, run.left())))
        except subprocess.TimeoutExpired:
            rc = None
        ms = (t_exit.get(name, time.monotonic()) - t_term[name]) * 1000
        run.check("NOT_SERVING" in seen[name], f"{name} answers NOT_SERVING while draining after SIGTERM",
                  f"saw {sorted(seen[name]) or 'no answer'} in the {ms:.0f} ms before it exited; the health "
                  "service must keep answering NOT_SERVING during the drain (Kubernetes stops routing on it)")
        # Exit 0 is expected; a non-zero status may come from the peer draining at the same time (the
        # learner's last push), so only a hang or a death by signal (a crash) fails.
        run.check(rc is not None and rc >= 0, f"{name} exits by itself after draining (status {rc})",
                  "still running 30s after SIGTERM" if rc is None else f"killed by signal {-rc}")


if __name__ == "__main__":
    sys.exit(main())
