#!/usr/bin/env python3
"""A verl-style rollout adapter over a lockstep rollout (docs/rl_frameworks.md).

`LockstepRollout` gives an RL framework the calls it makes on its inference
engine -- generate_sequences, update_weights, sleep / wake_up (verl's
release / resume), abort, pause / resume and the resumption of partial
rollouts -- on top of lockstep's RolloutService (and, optionally, the
learner's weight push). main() exercises every one of them against a running
rollout and checks what the wire API promises:

  1. generate at temperature 0.8 / top_p 0.95: both logprob kinds (raw and
     sampled), per-token weight versions, and ComputeLogprobs of the same
     tokens equal to them bit for bit;
  2. a long GenerateStream aborted by request id ends FINISH_REASON_ABORT; it
     is resumed with Prompt.resume, and the resumed sample starts with the
     aborted tokens and equals, bit for bit, the same sample run
     uninterrupted;
  3. pause("keep") and pause("retract") stop generation until resume(), and
     the sample continues exactly as uninterrupted;
  4. sleep(1) / wake_up(): a Generate sent while asleep waits, and what is
     generated after waking equals what was generated before sleeping, bit
     for bit;
  5. sleep(2) (the weights released too) refuses wake_up() until weights are
     pushed -- from --model_dir with UpdateWeights, or by the --learner after
     a train step (PushWeights); then generation resumes at the new version.

    rl_framework_adapter.py --rollout=127.0.0.1:50051 --model_dir=/tmp/lockstep-model
    rl_framework_adapter.py --rollout=127.0.0.1:50051 --learner=127.0.0.1:50052

Exit status: 0; 1 on a failed call; 2 when a check failed.
"""

import argparse
import math
import struct
import sys
import threading
import time

import grpc

from lockstep_client import (ClientOptions, LearnerClient, LockstepError, RolloutClient,
                             TlsOptions, common_pb2, make_trajectory, rollout_pb2)

BOS, EOS = 1, 2


def float_bits(values):
    """The IEEE-754 binary32 bit patterns of `values` (what "bitwise equal"
    compares: -0.0 != 0.0, NaN patterns kept)."""
    values = list(values)
    return list(struct.unpack("<%dI" % len(values), struct.pack("<%df" % len(values), *values)))


class StreamCollector:
    """Consumes one GenerateStream call in a thread and assembles its samples
    into Completions the way Generate returns them (sampling with the seed
    filled in, stream_key, prompt_tokens), so that a sample stopped by an
    abort can be resumed with Prompt.resume."""

    def __init__(self, rollout: RolloutClient, request: rollout_pb2.GenerateRequest):
        self.request = request
        self.error = None
        self.done = False
        self._samples = {}
        self._tokens = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(rollout,), daemon=True)
        self._thread.start()

    def _new_completion(self, m):
        prompt = self.request.prompts[m.prompt_index]
        if prompt.HasField("resume"):
            # The stream sends the new tokens only: start from the earlier ones.
            c = rollout_pb2.Completion()
            c.CopyFrom(prompt.resume)
            c.resumed_tokens = len(prompt.resume.token_ids)
            c.finish_reason = rollout_pb2.FINISH_REASON_UNSPECIFIED
            return c
        c = rollout_pb2.Completion(prompt_index=m.prompt_index, sample_index=m.sample_index,
                                   seed=m.seed, prompt_tokens=len(prompt.token_ids))
        c.sampling.CopyFrom(prompt.sampling if prompt.HasField("sampling")
                            else self.request.sampling)
        c.sampling.seed = m.seed
        return c

    def _run(self, rollout):
        try:
            for m in rollout.generate_stream(self.request):
                with self._cond:
                    key = (m.prompt_index, m.sample_index)
                    c = self._samples.get(key)
                    if c is None:
                        c = self._samples[key] = self._new_completion(m)
                    c.token_ids.extend(m.token_ids)
                    c.logprobs.extend(m.logprobs)
                    c.sampled_logprobs.extend(m.sampled_logprobs)
                    c.token_weight_versions.extend(m.token_weight_versions)
                    c.top_logprobs.extend(m.top_logprobs)
                    if c.token_weight_versions:
                        c.weight_version = c.token_weight_versions[-1]
                    if m.HasField("stream_key"):
                        c.stream_key = m.stream_key
                    if m.finish_reason != rollout_pb2.FINISH_REASON_UNSPECIFIED:
                        c.finish_reason = m.finish_reason
                    self._tokens += len(m.token_ids)
                    self._cond.notify_all()
        except LockstepError as e:
            self.error = e
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def tokens(self) -> int:
        """Tokens received so far (all samples)."""
        with self._cond:
            return self._tokens

    def wait_tokens(self, count, timeout) -> bool:
        """Waits until `count` tokens arrived or the call ended."""
        with self._cond:
            return self._cond.wait_for(lambda: self._tokens >= count or self.done, timeout)

    def join(self, timeout):
        """The completions, prompt-major, once the call ended (raises its error)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LockstepError(grpc.StatusCode.DEADLINE_EXCEEDED, "the stream did not end")
        if self.error is not None:
            raise self.error
        return [self._samples[k] for k in sorted(self._samples)]


class LockstepRollout:
    """The rollout interface of verl (BaseRollout / its server adapters:
    generate_sequences, update_weights, release / resume(tags)), with the
    engine controls of vLLM / SGLang-based frameworks (abort, pause / resume,
    sleep / wake_up, partial rollouts), over one lockstep rollout.

    Weights come from the learner, not from the caller's tensors on the same
    GPU: update_weights() either uploads tensors or a safetensors checkpoint
    over UpdateWeights (gRPC stream, or shared memory on one host), or asks
    the lockstep learner to push its current weights (PushWeights)."""

    def __init__(self, rollout: RolloutClient, learner: LearnerClient = None, endpoint=""):
        self.rollout = rollout
        self.learner = learner
        self.endpoint = endpoint or rollout.connection.options.target

    # -- generation -------------------------------------------------------

    def generate_sequences(self, prompts, n=1, request_id="", **sampling):
        """verl's generate_sequences: n samples of every prompt (token-id
        lists) as columns of plain lists -- prompts, responses,
        rollout_log_probs (raw, temperature 1: what the learner compares),
        rollout_sampled_log_probs (under the sampling distribution: the
        behaviour policy), token_weight_versions, finish_reasons -- plus the
        Completion messages themselves (for make_trajectory / resume)."""
        out = self.rollout.generate(prompts, n=n, request_id=request_id, **sampling)
        batch = {"prompts": [], "responses": [], "rollout_log_probs": [],
                 "rollout_sampled_log_probs": [], "token_weight_versions": [],
                 "finish_reasons": [], "completions": list(out.completions)}
        for c in out.completions:
            batch["prompts"].append(list(prompts[c.prompt_index]))
            batch["responses"].append(list(c.token_ids))
            batch["rollout_log_probs"].append(list(c.logprobs))
            batch["rollout_sampled_log_probs"].append(list(c.sampled_logprobs))
            batch["token_weight_versions"].append(list(c.token_weight_versions))
            batch["finish_reasons"].append(rollout_pb2.FinishReason.Name(c.finish_reason))
        return batch

    def generate_stream(self, prompts, n=1, request_id="", **sampling) -> StreamCollector:
        """Starts a GenerateStream call in the background (token-level
        streaming, e.g. for an agent loop); abort(request_id) stops it."""
        request = self.rollout.make_request(prompts, n=n, request_id=request_id, **sampling)
        return StreamCollector(self.rollout, request)

    def resume_partial(self, prompt_ids, completion, request_id=""):
        """Continues a sample that abort() / pause("abort") stopped (slime's
        and AReaL's partial rollouts): the returned Completion holds the
        earlier tokens, then the new ones (from completion.resumed_tokens on),
        each with the weight version that sampled it."""
        prompt = RolloutClient.resume_prompt(prompt_ids, completion)
        return self.rollout.generate([prompt], n=1, request_id=request_id).completions[0]

    # -- weights ----------------------------------------------------------

    def update_weights(self, weights=None, *, path=None, target_version=0):
        """verl's update_weights: `weights` (lockstep_client.Tensor list) or
        `path` (a safetensors file or checkpoint directory) uploaded to the
        rollout as version `target_version` (0: served + 1); with neither,
        the learner pushes its current weights (PushWeights) and this returns
        its answer after checking this rollout's push. Either way the swap is
        atomic between two engine steps, and works while paused or asleep."""
        if weights is not None:
            return self.rollout.update_weights(list(weights), target_version=target_version)
        if path is not None:
            return self.rollout.update_weights_from_file(path, target_version=target_version)
        if self.learner is None:
            raise ValueError("update_weights needs weights, a path or a learner")
        response = self.learner.push_weights()
        for push in response.pushes:
            if push.endpoint == self.endpoint and push.code != 0:
                raise LockstepError(_status_code(push.code),
                                    "push to %s: %s" % (push.endpoint, push.message))
        if not any(p.endpoint == self.endpoint for p in response.pushes):
            raise LockstepError(grpc.StatusCode.FAILED_PRECONDITION,
                                "the learner does not push to %s (register it)" % self.endpoint)
        return response

    # -- memory (colocated trainer) -----------------------------------------

    def sleep(self, level=1):
        """vLLM's sleep(level) / SGLang's release_memory_occupation: 1 frees
        the KV cache (and CUDA graphs), 2 the weights too."""
        return self.rollout.sleep(level)

    def wake_up(self):
        """vLLM's wake_up() / SGLang's resume_memory_occupation()."""
        return self.rollout.wake_up()

    def release(self, level=2):
        """verl's BaseRollout.release(). Level 2 by default: verl updates the
        weights on every resume, and lockstep installs weights pushed while
        asleep (vLLM's level 1 keeps a CPU copy of the weights instead)."""
        return self.sleep(level)

    def resume_memory(self, tags=("weights", "kv_cache")):
        """verl's BaseRollout.resume(tags): lockstep has no separate "weights"
        stage -- pushed weights are installed while asleep -- so only
        "kv_cache" does something (WakeUp)."""
        if "kv_cache" in tags:
            return self.wake_up()
        return None

    # -- engine control -----------------------------------------------------

    def abort(self, request_ids=(), all=False):
        """SGLang's abort_request(rid / abort_all)."""
        return self.rollout.abort(request_ids, all=all)

    def pause(self, mode="keep"):
        """SGLang's pause_generation(mode) / vLLM's pause_generation: "keep"
        (SGLang in_place), "retract" or "abort"."""
        return self.rollout.pause(mode)

    def resume(self):
        """SGLang's continue_generation / vLLM's resume_generation."""
        return self.rollout.resume()

    def load(self):
        """GetLoad: queue, running sequences, KV usage, paused, sleep_level."""
        return self.rollout.get_load()


def _status_code(code: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number."""
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c
    return grpc.StatusCode.UNKNOWN


class Checks:
    """Records named checks; main() exits 2 if any failed."""

    def __init__(self):
        self.passed = 0
        self.failed = []

    def __call__(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
            print("CHECK FAILED: %s" % what, flush=True)
        return ok


def same_sample(a, b, prefix=None, versions=True):
    """Tokens, both logprob kinds (bit patterns) and, when `versions`, the
    tokens' weight versions equal over the first `prefix` tokens (all, and
    equal lengths, when None)."""
    def cut(values):
        values = list(values)
        return values if prefix is None else values[:prefix]
    if prefix is None and len(a.token_ids) != len(b.token_ids):
        return False
    return (cut(a.token_ids) == cut(b.token_ids)
            and float_bits(cut(a.logprobs)) == float_bits(cut(b.logprobs))
            and float_bits(cut(a.sampled_logprobs)) == float_bits(cut(b.sampled_logprobs))
            and (not versions or cut(a.token_weight_versions) == cut(b.token_weight_versions)))


def same_batch(a, b, versions=True):
    return (len(a["completions"]) == len(b["completions"])
            and all(same_sample(x, y, versions=versions)
                    for x, y in zip(a["completions"], b["completions"])))


def scored(batch):
    """ScoredSequences of a generate_sequences batch, each with the sampling
    parameters that drew it (so both logprob kinds are recomputed)."""
    out = []
    for prompt, c in zip(batch["prompts"], batch["completions"]):
        s = common_pb2.ScoredSequence(token_ids=prompt + list(c.token_ids),
                                      prompt_len=len(prompt))
        s.sampling.CopyFrom(c.sampling)
        out.append(s)
    return out


def scores_match(batch, response):
    return (len(response.results) == len(batch["completions"])
            and all(float_bits(r.logprobs) == float_bits(c.logprobs)
                    and float_bits(r.sampled_logprobs) == float_bits(c.sampled_logprobs)
                    for r, c in zip(response.results, batch["completions"])))


def reward(completion):
    """The user's reward: here, the fraction of even token ids."""
    ids = list(completion.token_ids)
    return sum(t % 2 == 0 for t in ids) / max(len(ids), 1)


def run(a, adapter, check):
    rollout, learner = adapter.rollout, adapter.learner
    info = rollout.get_model_info()
    limit = info.max_context_tokens or info.config.max_position_embeddings
    print("rollout %s: %s, vocab %d, context %d, weight version %d, host %s"
          % (a.rollout, info.config.model_type, info.config.vocab_size, limit,
             info.weight_version, info.host_id or "?"), flush=True)
    if learner is not None and not a.no_register:
        learner.register_rollout([adapter.endpoint], push_now=True)
        info = rollout.get_model_info()
    version = info.weight_version
    wait = a.timeout
    stats = {}

    # 1. generate_sequences at temperature 0.8 / top_p 0.95.
    prompts = [[BOS, 4, 5, 6], [BOS, 7, 8, 9, 10]]
    sampling = dict(max_tokens=a.max_tokens, temperature=0.8, top_p=0.95, seed=a.seed,
                    stop_token_ids=[EOS])
    ref = adapter.generate_sequences(prompts, n=a.samples, **sampling)
    check(len(ref["completions"]) == len(prompts) * a.samples, "n samples of every prompt")
    for c in ref["completions"]:
        k = len(c.token_ids)
        check(k > 0 and len(c.logprobs) == k and len(c.sampled_logprobs) == k
              and len(c.token_weight_versions) == k, "one logprob of each kind and one "
              "version per token")
        check(all(v == version for v in c.token_weight_versions), "tokens carry version %d"
              % version)
        check(all(math.isfinite(x) and x <= 0 for x in c.sampled_logprobs),
              "sampled logprobs are finite and <= 0")
        check(c.HasField("sampling") and c.sampling.HasField("seed")
              and abs(c.sampling.temperature - 0.8) < 1e-6, "Completion.sampling reported")
    check(scores_match(ref, rollout.compute_logprobs(scored(ref))),
          "ComputeLogprobs = Generate logprobs, raw and sampled, bit for bit")
    stats["generate"] = len(ref["completions"])
    print("generate: %d samples, e.g. %s -> %s" % (len(ref["completions"]), ref["prompts"][0],
                                                  ref["responses"][0]), flush=True)

    # 2. Abort a long stream by request id, then resume the partial rollout.
    long_prompt = [BOS, 5, 9, 3]
    long_sampling = dict(max_tokens=min(a.long_tokens, limit - len(long_prompt)),
                         temperature=0.8, top_p=0.95, seed=a.seed + 1, ignore_eos=True)
    m = long_sampling["max_tokens"]
    whole = rollout.generate([long_prompt], n=1, **long_sampling).completions[0]
    check(whole.finish_reason == rollout_pb2.FINISH_REASON_LENGTH and len(whole.token_ids) == m,
          "the uninterrupted sample runs to max_tokens")
    partial = None
    for attempt in range(5):
        rid = "adapter-abort-%d" % attempt
        stream = adapter.generate_stream([long_prompt], n=1, request_id=rid, **long_sampling)
        stream.wait_tokens(4, wait)
        aborted = adapter.abort([rid])
        partial = stream.join(wait)[0]
        if partial.finish_reason == rollout_pb2.FINISH_REASON_ABORT:
            check(aborted.aborted == 1, "Abort stopped one call")
            break
        print("abort: attempt %d finished before the abort arrived; again" % attempt)
    k = len(partial.token_ids)
    check(partial.finish_reason == rollout_pb2.FINISH_REASON_ABORT, "the aborted sample ends "
          "FINISH_REASON_ABORT")
    check(0 < k < m and partial.HasField("stream_key"), "the aborted sample has some tokens "
          "and a stream_key")
    check(same_sample(partial, whole, prefix=k), "the aborted tokens are the uninterrupted "
          "sample's")
    resumed = adapter.resume_partial(long_prompt, partial, request_id="adapter-resume")
    check(resumed.resumed_tokens == k, "resumed_tokens = the aborted sample's length")
    check(same_sample(resumed, partial, prefix=k), "the resumed sample starts with the aborted "
          "tokens (same logprob bits)")
    check(resumed.finish_reason == rollout_pb2.FINISH_REASON_LENGTH
          and same_sample(resumed, whole), "aborted + resumed = uninterrupted, bit for bit")
    stats["resumed_tokens"] = k
    print("abort/resume: aborted after %d of %d tokens, resumed to %d" % (
        k, m, len(resumed.token_ids)), flush=True)

    def generation_stopped(stream, what):
        # Give the messages already sent time to arrive, then watch.
        time.sleep(0.2)
        before = stream.tokens()
        time.sleep(0.3)
        return check(stream.tokens() == before, "no token is generated while %s" % what)

    # 3. pause(keep) / pause(retract) ... resume().
    for mode in ("keep", "retract"):
        stream = adapter.generate_stream([long_prompt], n=1, request_id="adapter-pause-" + mode,
                                         **long_sampling)
        stream.wait_tokens(4, wait)
        paused = adapter.pause(mode)
        check(not paused.was_paused and paused.weight_version == version,
              "pause(%s) pauses a running engine" % mode)
        check(adapter.load().paused, "GetLoad reports paused")
        generation_stopped(stream, "paused (%s)" % mode)
        check(adapter.resume().was_paused, "resume() after pause(%s)" % mode)
        check(not adapter.load().paused, "GetLoad reports running")
        c = stream.join(wait)[0]
        check(c.finish_reason == rollout_pb2.FINISH_REASON_LENGTH and same_sample(c, whole),
              "pause(%s) + resume = uninterrupted, bit for bit" % mode)
    stats["pause"] = 2
    print("pause: keep and retract resumed bit-identically", flush=True)

    # 4. sleep(1) / wake_up(): verl's release() / resume(["kv_cache"]).
    stream = adapter.generate_stream([long_prompt], n=1, request_id="adapter-sleep",
                                     **long_sampling)
    stream.wait_tokens(4, wait)
    slept = adapter.sleep(1)
    check(slept.level == rollout_pb2.SLEEP_LEVEL_KV_CACHE and slept.kv_cache_bytes > 0,
          "sleep(1) released the KV cache")
    check(adapter.load().sleep_level == rollout_pb2.SLEEP_LEVEL_KV_CACHE,
          "GetLoad reports sleep level 1")
    generation_stopped(stream, "asleep")
    waiting = {}
    thread = threading.Thread(target=lambda: waiting.update(
        batch=adapter.generate_sequences(prompts, n=a.samples, **sampling)), daemon=True)
    thread.start()
    time.sleep(0.3)
    check(thread.is_alive(), "a Generate sent while asleep waits")
    woke = adapter.wake_up()
    check(woke.was_asleep and woke.kv_cache_bytes > 0, "wake_up() re-allocated the KV cache")
    check(adapter.load().sleep_level == rollout_pb2.SLEEP_LEVEL_UNSPECIFIED,
          "GetLoad reports awake")
    thread.join(wait)
    check("batch" in waiting and same_batch(waiting["batch"], ref),
          "after sleep(1) / wake_up() the seeded batch is bit-identical to the one before")
    c = stream.join(wait)[0]
    check(same_sample(c, whole), "a sample retracted by sleep(1) continues bit-identically")
    stats["sleep"] = 1
    print("sleep(1): released %d KV bytes (%d device bytes back), woke in %.3f s"
          % (slept.kv_cache_bytes, slept.device_bytes_freed, woke.seconds), flush=True)

    # 5. sleep(2): weights released too; a weight push is the way back.
    slept = adapter.sleep(2)
    check(slept.level == rollout_pb2.SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS
          and slept.weight_bytes > 0, "sleep(2) released the weights")
    try:
        adapter.wake_up()
        check(False, "wake_up() after sleep(2) waits for weights")
    except LockstepError as e:
        check(e.code == grpc.StatusCode.FAILED_PRECONDITION,
              "wake_up() after sleep(2) without weights: FAILED_PRECONDITION (got %s)"
              % e.code.name)
    if learner is not None:
        # The colocated step: train while the rollout sleeps, then push.
        batch = [make_trajectory(p, c, reward(c), "adapter-p%d" % c.prompt_index)
                 for p, c in zip(ref["prompts"], ref["completions"])]
        learner.submit_trajectories(batch)
        step = learner.train_step(expected_version=learner.get_stats().weight_version,
                                  skip_push=True)
        check(step.mismatch.tokens_compared > 0 and step.mismatch.tokens_mismatched == 0
              and step.sampled_mismatch.tokens_mismatched == 0,
              "the learner's logprobs of the trained tokens equal the rollout's")
        pushed = adapter.update_weights()
        print("update_weights: learner step %d pushed version %d" % (step.step,
                                                                    pushed.weight_version))
    else:
        pushed = adapter.update_weights(path=a.model_dir)
        check(pushed.path in (common_pb2.WEIGHT_PATH_STREAM,
                              common_pb2.WEIGHT_PATH_SHARED_MEMORY), "UpdateWeights path")
        print("update_weights: %s -> version %d (%d bytes via %s)" % (
            a.model_dir, pushed.weight_version, pushed.bytes,
            common_pb2.WeightPath.Name(pushed.path)), flush=True)
    check(pushed.weight_version > version, "the weight version grew")
    version = pushed.weight_version
    woke = adapter.wake_up()
    check(woke.was_asleep and woke.weight_version == version, "wake_up() after the push")
    new = adapter.generate_sequences(prompts, n=a.samples, **sampling)
    check(all(v == version for vs in new["token_weight_versions"] for v in vs),
          "the new tokens carry version %d" % version)
    if learner is not None:
        scores = learner.compute_logprobs(scored(new))
        check(scores.weight_version == version and scores_match(new, scores),
              "learner ComputeLogprobs = rollout logprobs of the new policy, bit for bit")
    else:
        # The same weights again: the same samples, bit for bit, at a new version.
        check(same_batch(new, ref, versions=False),
              "the same weights pushed as a new version give the same samples, bit for bit")
    stats["weights"] = 1
    stats["version"] = version
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rollout", default="127.0.0.1:50051")
    p.add_argument("--learner", help="also train a step and push weights from this learner")
    p.add_argument("--model_dir", help="checkpoint (safetensors) to push when there is no "
                   "learner: the served model's own directory keeps the samples identical")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt")
    p.add_argument("--max_tokens", type=int, default=8)
    p.add_argument("--long_tokens", type=int, default=100000,
                   help="length of the sample that is aborted (capped by the context)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of each call (s)")
    p.add_argument("--auth_token_file")
    p.add_argument("--tls_ca")
    p.add_argument("--tls_cert")
    p.add_argument("--tls_key")
    p.add_argument("--no_register", action="store_true",
                   help="the learner already pushes to this rollout")
    a = p.parse_args(argv)
    if not a.learner and not a.model_dir:
        p.error("give --model_dir (weights to push) or --learner")

    def options(target):
        return ClientOptions(target=target, auth_token_file=a.auth_token_file,
                             default_timeout=a.timeout,
                             tls=TlsOptions(ca_file=a.tls_ca, cert_file=a.tls_cert,
                                            key_file=a.tls_key))

    rollout = RolloutClient(options(a.rollout))
    learner = LearnerClient(options(a.learner)) if a.learner else None
    adapter = LockstepRollout(rollout, learner, endpoint=a.rollout)
    check = Checks()
    try:
        stats = run(a, adapter, check)
    except LockstepError as e:
        print("rl_framework_adapter: %s" % e, file=sys.stderr)
        return 1
    finally:
        rollout.close()
        if learner is not None:
            learner.close()
    print("summary generate=%d resumed_tokens=%d pause=%d sleep=%d weights=%d version=%d "
          "checks=%d failed=%d" % (stats["generate"], stats["resumed_tokens"], stats["pause"],
                                   stats["sleep"], stats["weights"], stats["version"],
                                   check.passed, len(check.failed)))
    if check.failed:
        print("rl_framework_adapter: %d checks failed: %s" % (len(check.failed),
                                                            "; ".join(check.failed)),
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
