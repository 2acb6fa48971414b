#!/usr/bin/python3
"""A stand-in for rollout_service / learner_service that honours the deploy contract only.

It lets tests/deploy/e2e_observe_test.py exercise its whole harness (Prometheus, the blackbox
exporter, every dashboard query, promtool check metrics, the drain) before the real services exist,
and proves that the dashboard's queries return data for the metrics of tests/deploy/lockstep_metrics.json.

  fake_service.py --role=rollout|learner --port=0 --metrics_port=0 [--kernels=...] [--device=...]
                  [--drive --steps=N] [--drain_seconds=1.0] [other service flags, ignored]

- prints `listening grpc=127.0.0.1:P metrics=127.0.0.1:M` when ready;
- serves grpc.health.v1.Health/Check ("" and lockstep.v1.<Role>Service) with python3-grpcio;
- serves /metrics in the Prometheus text format, the counters advancing like a training run;
- on SIGTERM answers NOT_SERVING for --drain_seconds, then exits 0.
"""
import argparse
import http.server
import math
import random
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", required=True, choices=["rollout", "learner"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--metrics_port", type=int, default=0)
    ap.add_argument("--kernels", default="invariant")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--drive", action="store_true")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--step_seconds", type=float, default=0.4)
    ap.add_argument("--drain_seconds", type=float, default=1.0)
    args, _ = ap.parse_known_args()
    return args


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.serving = True
        self.steps = 0
        self.started = time.time()
        self.rng = random.Random(1)


def health_handler(state):
    own = "lockstep.v1.RolloutService" if state.args.role == "rollout" else "lockstep.v1.LearnerService"

    def check(request, context):
        # HealthCheckRequest {string service = 1;} / HealthCheckResponse {ServingStatus status = 1;}
        service = ""
        if len(request) >= 2 and request[0] == 0x0A:
            service = request[2:2 + request[1]].decode()
        if service not in ("", own):
            status = SERVICE_UNKNOWN
        else:
            status = SERVING if state.serving else NOT_SERVING
        return bytes([0x08, status])

    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check),
    })


def histogram(name, help_, buckets, observations, labels=""):
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    sep = "," if labels else ""
    for b in buckets:
        le = "+Inf" if b == math.inf else repr(float(b)).rstrip("0").rstrip(".") if b else "0"
        lines.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {sum(1 for o in observations if o <= b)}')
    lines.append(f"{name}_sum{{{labels}}} {sum(observations)}" if labels else f"{name}_sum {sum(observations)}")
    lines.append(f"{name}_count{{{labels}}} {len(observations)}" if labels else f"{name}_count {len(observations)}")
    return lines


def counter(name, help_, value, labels=""):
    series = f"{name}{{{labels}}}" if labels else name
    return [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{series} {value}"]


def gauge(name, help_, value, labels=""):
    series = f"{name}{{{labels}}}" if labels else name
    return [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{series} {value}"]


def metrics(state):
    a = state.args
    with state.lock:
        steps = state.steps
    std = a.kernels != "invariant"
    out = gauge("lockstep_build_info", "Build and run mode.", 1,
                f'role="{a.role}",version="0.1.0",kernels="{a.kernels}",device="{a.device}"')
    out += gauge("lockstep_weight_version", "Weight version in use.", steps, f'role="{a.role}"')
    if a.role == "learner":
        compared = 512 * steps
        mismatched = (37 * steps) if std else 0
        diffs = [0.0] * (compared - mismatched) + [1e-3] * mismatched
        out += histogram("lockstep_logprob_abs_diff", "|learner - rollout| logprob per token.",
                         [0, 1e-6, 1e-4, 1e-2, 1, math.inf], diffs)
        out += counter("lockstep_tokens_compared_total", "Tokens compared.", compared)
        out += counter("lockstep_tokens_mismatched_total", "Tokens with a logprob difference.", mismatched)
        out += counter("lockstep_tokens_stale_total", "Tokens from older weights.", 0)
        out += gauge("lockstep_logprob_abs_diff_max", "Max |diff| of the last step.", 1e-3 if std else 0)
        out += gauge("lockstep_mismatch_kl_k3", "k3 KL of the last step.", 1e-7 if std else 0)
        # The same families for the logprobs under the sampling distribution.
        out += histogram("lockstep_sampled_logprob_abs_diff", "|learner - rollout| sampled logprob.",
                         [0, 1e-6, 1e-4, 1e-2, 1, math.inf], diffs)
        out += counter("lockstep_sampled_tokens_compared_total", "Sampled tokens compared.", compared)
        out += counter("lockstep_sampled_tokens_mismatched_total", "Sampled mismatches.", mismatched)
        out += gauge("lockstep_sampled_logprob_abs_diff_max", "Max sampled |diff|.", 1e-3 if std else 0)
        out += gauge("lockstep_sampled_mismatch_kl_k3", "Sampled k3 KL.", 1e-7 if std else 0)
        out += histogram("lockstep_learner_step_duration_seconds", "Training step duration.",
                         [0.1, 0.5, 1, 5, math.inf], [a.step_seconds] * steps)
        out += gauge("lockstep_learner_loss", "Loss of the last step.", 1.0 / (1 + steps))
        out += gauge("lockstep_learner_reward_mean", "Mean reward of the last step.", steps / (steps + 5.0))
        out += histogram("lockstep_weight_push_duration_seconds", "Weight push duration.",
                         [0.01, 0.1, 1, math.inf], [0.02] * steps)
        out += counter("lockstep_weight_push_bytes_total", "Bytes pushed.", 65536 * steps)
        out += counter("lockstep_weight_push_failures_total", "Failed pushes.", 0)
        out += counter("lockstep_weight_push_retries_total", "Push retries.", steps // 4)
        out += counter("lockstep_learner_generate_retries_total", "Generate retries.", steps // 5)
    else:
        requests = 4 * steps
        out += ["# HELP lockstep_rollout_requests_total Requests by code.",
                "# TYPE lockstep_rollout_requests_total counter",
                f'lockstep_rollout_requests_total{{code="OK"}} {requests}']
        out += counter("lockstep_rollout_generated_tokens_total", "Generated tokens.", 512 * steps)
        out += histogram("lockstep_rollout_batch_size", "Sequences per decode step.",
                         [1, 2, 4, 8, 16, math.inf], [8] * (16 * steps))
        out += histogram("lockstep_rollout_time_to_first_token_seconds", "TTFT.",
                         [0.001, 0.01, 0.1, 1, math.inf], [0.005] * requests)
        out += histogram("lockstep_rollout_inter_token_latency_seconds", "ITL.",
                         [0.0001, 0.001, 0.01, math.inf], [0.0005] * (128 * steps))
        out += histogram("lockstep_rollout_request_duration_seconds", "Request duration.",
                         [0.01, 0.1, 1, 10, math.inf], [0.2] * requests)
        out += gauge("lockstep_rollout_kv_cache_usage_ratio", "KV cache in use.", 0.25 if steps else 0)
        out += gauge("lockstep_rollout_queue_depth", "Queued requests.", 0)
        out += histogram("lockstep_weight_update_duration_seconds", "Weight update duration.",
                         [0.01, 0.1, 1, math.inf], [0.03] * steps)
        out += counter("lockstep_rollout_selfcheck_sequences_total", "Sequences re-scored.", steps)
        out += counter("lockstep_rollout_selfcheck_mismatch_total", "Self-check mismatches.", steps if std else 0)
    return ("\n".join(out) + "\n").encode()


def main():
    args = parse_args()
    state = State(args)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((health_handler(state),))
    gport = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = metrics(state)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", args.metrics_port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    stop = threading.Event()

    def on_term(signum, frame):
        state.serving = False
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    # Rollouts advance with the learner's steps; a learner advances only while driving.
    print(f"listening grpc=127.0.0.1:{gport} metrics=127.0.0.1:{httpd.server_address[1]}", flush=True)
    while not stop.wait(args.step_seconds):
        with state.lock:
            if args.role == "rollout" or (args.drive and state.steps < args.steps):
                state.steps += 1
    time.sleep(args.drain_seconds)   # NOT_SERVING while draining
    server.stop(grace=1).wait()
    httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
