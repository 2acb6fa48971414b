"""Typed Python clients of the lockstep rollout and learner services,
mirroring the C++ SDK (sdk/cpp): every call has a deadline (per-call
`timeout`/`call=CallOptions(...)`, else the client's `default_timeout`), the
whole call including retries; only UNAVAILABLE is retried, with exponential
backoff and jitter; streams are retried only before their first message is
consumed, or when the client side is replayable (weight upload, trajectory
upload); TLS / mTLS and a bearer token (`authorization: Bearer <token>`).
Failures raise LockstepError carrying the gRPC status code."""

import dataclasses
import random
import threading
import time
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc

from lockstep_client import weights as _weights
from lockstep_client._proto.lockstep.v1 import common_pb2
from lockstep_client._proto.lockstep.v1 import learner_pb2
from lockstep_client._proto.lockstep.v1 import learner_pb2_grpc
from lockstep_client._proto.lockstep.v1 import rollout_pb2
from lockstep_client._proto.lockstep.v1 import rollout_pb2_grpc

ROLLOUT_SERVICE = "lockstep.v1.RolloutService"
LEARNER_SERVICE = "lockstep.v1.LearnerService"
_USER_AGENT = "lockstep-client-python/0.1"


class LockstepError(Exception):
    """A failed call: `code` is a grpc.StatusCode, `message` the server's (or
    the client's) message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__("%s: %s" % (code.name, message))
        self.code = code
        self.message = message


@dataclasses.dataclass
class RetryPolicy:
    """Backoff between tries of a call answered UNAVAILABLE: retry k waits
    min(initial_backoff * multiplier**(k-1), max_backoff) seconds, scaled by a
    uniform factor in [1 - jitter, 1 + jitter], never past the deadline."""

    max_attempts: int = 5          # tries in all (1: never retry)
    initial_backoff: float = 0.1   # seconds
    max_backoff: float = 5.0       # seconds
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, retry: int, unit_random: float) -> float:
        d = min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)
        j = min(max(self.jitter, 0.0), 1.0)
        return d * (1.0 + j * (2.0 * unit_random - 1.0))


@dataclasses.dataclass
class TlsOptions:
    """Transport security. `enabled` is implied by any of the files.
    ca_file: PEM roots of the server certificate (None: gRPC's defaults);
    cert_file/key_file: client certificate for mTLS; server_name: name to
    check the server certificate for instead of the target's host."""

    enabled: bool = False
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None


@dataclasses.dataclass
class ClientOptions:
    """How a client connects (see sdk/cpp/client_options.h, the same
    settings): the channel accepts 64 MiB messages, pings the server after
    30 s without activity (the lockstep servers allow pings every 10 s), and
    reconnects with a 0.1-5 s backoff."""

    target: str = "127.0.0.1:50051"
    tls: TlsOptions = dataclasses.field(default_factory=TlsOptions)
    auth_token: Optional[str] = None
    auth_token_file: Optional[str] = None
    default_timeout: float = 60.0
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    max_receive_message_bytes: int = 64 << 20
    max_send_message_bytes: int = 64 << 20
    keepalive_time: float = 30.0
    keepalive_timeout: float = 20.0
    min_reconnect_backoff: float = 0.1
    max_reconnect_backoff: float = 5.0
    # Seconds one connection attempt (TCP + TLS + HTTP/2 handshake) may take;
    # gRPC reads it from grpc.min_reconnect_backoff_ms (see the C++
    # ClientOptions.connect_timeout: 0.1 s there failed calls on a loaded
    # machine with "tcp handshaker shutdown").
    connect_timeout: float = 20.0


@dataclasses.dataclass
class CallOptions:
    """Per-call settings: timeout (seconds) or deadline (time.monotonic()
    value; the earlier wins), tries (0: the client's policy), wait_for_ready
    (wait for the channel instead of failing fast) and extra metadata."""

    timeout: Optional[float] = None
    deadline: Optional[float] = None
    max_attempts: int = 0
    wait_for_ready: bool = False
    metadata: Sequence[Tuple[str, str]] = ()


class HealthStatus:
    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _encode_health_request(service: str) -> bytes:
    raw = service.encode()
    out = bytearray()
    if raw:
        out.append(0x0A)
        n = len(raw)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += raw
    return bytes(out)


def _decode_health_response(data: bytes) -> str:
    i, status = 0, 0

    def varint():
        nonlocal i
        v, shift = 0, 0
        while i < len(data):
            b = data[i]
            i += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7
        raise LockstepError(grpc.StatusCode.INTERNAL, "malformed health response")

    while i < len(data):
        key = varint()
        wire = key & 7
        if wire == 0:
            v = varint()
            if key >> 3 == 1:
                status = v
        elif wire == 2:
            i += varint()
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise LockstepError(grpc.StatusCode.INTERNAL, "malformed health response")
    return {1: HealthStatus.SERVING, 2: HealthStatus.NOT_SERVING}.get(status,
                                                                      HealthStatus.UNKNOWN)


class Connection:
    """One channel with its credentials, token and retry loop; shared by the
    clients (pass `connection=` to share one between clients)."""

    def __init__(self, options: ClientOptions):
        if not options.target:
            raise ValueError("ClientOptions.target is empty")
        if options.retry.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        self.options = options
        token = options.auth_token or ""
        if options.auth_token_file:
            token = _read(options.auth_token_file).decode().strip()
            if not token:
                raise ValueError("token file %s is empty" % options.auth_token_file)
        token = token.strip()
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        tls = options.tls
        use_tls = tls.enabled or bool(tls.ca_file or tls.cert_file or tls.key_file)
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ValueError("TlsOptions: cert_file and key_file go together")
        channel_options = [
            ("grpc.max_receive_message_length", options.max_receive_message_bytes),
            ("grpc.max_send_message_length", options.max_send_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", int(options.min_reconnect_backoff * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(options.connect_timeout * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(options.max_reconnect_backoff * 1000)),
            ("grpc.primary_user_agent", _USER_AGENT),
        ]
        if options.keepalive_time > 0:
            channel_options += [
                ("grpc.keepalive_time_ms", int(options.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout * 1000)),
            ]
        if use_tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca_file) if tls.ca_file else None,
                private_key=_read(tls.key_file) if tls.key_file else None,
                certificate_chain=_read(tls.cert_file) if tls.cert_file else None)
            if tls.server_name:
                channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(options.target, creds, channel_options)
        else:
            self.channel = grpc.insecure_channel(options.target, channel_options)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    @property
    def has_token(self) -> bool:
        return bool(self._metadata)

    def close(self):
        self.channel.close()

    def _deadline(self, call: CallOptions) -> float:
        now = time.monotonic()
        deadline = call.deadline if call.deadline is not None else float("inf")
        if call.timeout is not None and call.timeout > 0:
            deadline = min(deadline, now + call.timeout)
        if deadline == float("inf"):
            deadline = now + self.options.default_timeout
        return deadline

    def _max_attempts(self, call: CallOptions) -> int:
        return call.max_attempts if call.max_attempts > 0 else self.options.retry.max_attempts

    def metadata(self, call: CallOptions):
        return tuple(self._metadata) + tuple(call.metadata)

    def run(self, call: CallOptions, attempt: Callable, retryable: Callable[[], bool] = None):
        """Calls attempt(timeout_seconds, metadata, wait_for_ready) until it
        returns, raises anything but UNAVAILABLE, `retryable()` is false, the
        tries run out, or the deadline passes (DEADLINE_EXCEEDED)."""
        deadline = self._deadline(call)
        attempts = self._max_attempts(call)
        metadata = self.metadata(call)
        last = None
        for i in range(attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return attempt(remaining, metadata, call.wait_for_ready)
            except grpc.RpcError as e:
                last = e
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise LockstepError(e.code(), e.details() or "") from None
                if (retryable is not None and not retryable()) or i + 1 == attempts:
                    suffix = " (gave up after %d tries)" % (i + 1) if i > 0 else ""
                    raise LockstepError(e.code(), (e.details() or "") + suffix) from None
                with self._rng_lock:
                    u = self._rng.random()
                delay = self.options.retry.delay(i + 1, u)
                if time.monotonic() + delay >= deadline:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    break
                time.sleep(delay)
        detail = "" if last is None else "; last error: UNAVAILABLE: %s" % (last.details() or "")
        raise LockstepError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded" + detail)

    def check_health(self, service: str = "", call: CallOptions = None, timeout=None) -> str:
        """grpc.health.v1.Health/Check of `service` ("" = the whole server);
        no token needed. Returns a HealthStatus value."""
        call = _call(call, timeout)
        method = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=_encode_health_request,
            response_deserializer=_decode_health_response)
        return self.run(call, lambda t, md, w: method(service, timeout=t, metadata=md,
                                                      wait_for_ready=w))


def _call(call: Optional[CallOptions], timeout: Optional[float]) -> CallOptions:
    if call is None:
        call = CallOptions()
    if timeout is not None:
        call = dataclasses.replace(call, timeout=timeout)
    return call


def _options(target_or_options, defaults: dict) -> ClientOptions:
    if isinstance(target_or_options, ClientOptions):
        if defaults:
            return dataclasses.replace(target_or_options, **defaults)
        return target_or_options
    return ClientOptions(target=target_or_options, **defaults)


def make_trajectory(prompt_token_ids: Sequence[int], completion: rollout_pb2.Completion,
                    reward: float, group_id: str, loss_mask: Optional[Sequence[int]] = None,
                    advantages: Optional[Sequence[float]] = None) -> learner_pb2.Trajectory:
    """A Trajectory from one Generate completion, its prompt, a reward and
    the GRPO group (one per prompt). Optional, one per completion token:
    `loss_mask` (0: not trained on, e.g. tool output) and `advantages`
    (used as given instead of the group-relative advantage)."""
    t = learner_pb2.Trajectory(
        prompt_token_ids=list(prompt_token_ids),
        completion_token_ids=list(completion.token_ids),
        rollout_logprobs=list(completion.logprobs),
        weight_version=completion.weight_version,
        token_weight_versions=list(completion.token_weight_versions),
        reward=reward,
        group_id=group_id)
    if completion.HasField("sampling"):
        # The distribution the tokens were drawn from: the learner trains on
        # the logprobs under it.
        t.sampling.CopyFrom(completion.sampling)
        t.rollout_sampled_logprobs.extend(completion.sampled_logprobs)
    if loss_mask is not None:
        t.loss_mask.extend(int(m) for m in loss_mask)
    if advantages is not None:
        t.advantages.extend(float(a) for a in advantages)
    return t


def _scored_sequences(sequences) -> List[common_pb2.ScoredSequence]:
    out = []
    for s in sequences:
        if isinstance(s, common_pb2.ScoredSequence):
            out.append(s)
        else:
            tokens, prompt_len = s
            out.append(common_pb2.ScoredSequence(token_ids=list(tokens), prompt_len=prompt_len))
    return out


class _Client:
    def __init__(self, target_or_options, connection: Optional[Connection], **defaults):
        self.connection = connection or Connection(_options(target_or_options, defaults))

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _unary(self, method, request, call, timeout):
        return self.connection.run(
            _call(call, timeout),
            lambda t, md, w: method(request, timeout=t, metadata=md, wait_for_ready=w))


class RolloutClient(_Client):
    """Client of lockstep.v1.RolloutService.

        rollout = RolloutClient("127.0.0.1:50051", default_timeout=30)
        out = rollout.generate([[1, 2, 3]], n=4, max_tokens=16, seed=7)
        for c in out.completions: print(list(c.token_ids), list(c.logprobs))

    The first argument is a target "HOST:PORT" or a ClientOptions; keyword
    arguments override ClientOptions fields. Thread-safe."""

    def __init__(self, target_or_options="127.0.0.1:50051", *, connection=None, **defaults):
        super().__init__(target_or_options, connection, **defaults)
        self.stub = rollout_pb2_grpc.RolloutServiceStub(self.connection.channel)

    @staticmethod
    def make_request(prompts, n=1, max_tokens=16, temperature=None, top_k=0, top_p=None,
                     seed=None, stop_token_ids=(), ignore_eos=False, top_logprobs=0,
                     request_id="", min_p=0.0, repetition_penalty=None, presence_penalty=0.0,
                     frequency_penalty=0.0, logit_bias=None, min_tokens=0,
                     stop_sequences=()) -> rollout_pb2.GenerateRequest:
        """A GenerateRequest: `prompts` is a list of token-id lists (or
        rollout_pb2.Prompt messages, taken as they are: e.g. resume_prompt());
        logit_bias a {token id: bias} dict, stop_sequences lists of ids."""
        sampling = common_pb2.SamplingParams(
            top_k=top_k, max_tokens=max_tokens, stop_token_ids=list(stop_token_ids),
            ignore_eos=ignore_eos, top_logprobs=top_logprobs, min_p=min_p,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            logit_bias=dict(logit_bias or {}), min_tokens=min_tokens,
            stop_sequences=[common_pb2.TokenSequence(token_ids=list(s))
                            for s in stop_sequences])
        if repetition_penalty is not None:
            sampling.repetition_penalty = repetition_penalty
        if temperature is not None:
            sampling.temperature = temperature
        if top_p is not None:
            sampling.top_p = top_p
        if seed is not None:
            sampling.seed = seed
        messages = [p if isinstance(p, rollout_pb2.Prompt)
                    else rollout_pb2.Prompt(token_ids=list(p)) for p in prompts]
        return rollout_pb2.GenerateRequest(prompts=messages, n=n, sampling=sampling,
                                           request_id=request_id)

    @staticmethod
    def resume_prompt(prompt_token_ids, completion: rollout_pb2.Completion) -> rollout_pb2.Prompt:
        """A Prompt that continues `completion`, an unfinished sample of
        `prompt_token_ids` as Generate returned it (FINISH_REASON_ABORT, e.g.
        after abort() or pause("abort")): a partial rollout. Pass it among the
        prompts of generate() / make_request() with n=1; the sample is drawn
        with completion.sampling and completion.stream_key, so with unchanged
        weights it continues exactly as the uninterrupted sample would have.
        The returned Completion holds the earlier tokens (with their logprobs
        and versions) and then the new ones; resumed_tokens says where the
        new ones start."""
        if not isinstance(completion, rollout_pb2.Completion):
            raise TypeError("resume_prompt needs a rollout_pb2.Completion")
        if completion.finish_reason not in (rollout_pb2.FINISH_REASON_UNSPECIFIED,
                                            rollout_pb2.FINISH_REASON_ABORT):
            raise ValueError("only an unfinished sample (FINISH_REASON_ABORT) can be resumed; "
                             "this one ended with %s"
                             % rollout_pb2.FinishReason.Name(completion.finish_reason))
        return rollout_pb2.Prompt(token_ids=list(prompt_token_ids), resume=completion)

    def generate(self, prompts_or_request, *, timeout=None, call=None,
                 **sampling) -> rollout_pb2.GenerateResponse:
        """Generates n samples of every prompt (a GenerateRequest, or token-id
        lists plus make_request's keyword arguments). Retried on UNAVAILABLE."""
        request = prompts_or_request
        if not isinstance(request, rollout_pb2.GenerateRequest):
            request = self.make_request(prompts_or_request, **sampling)
        return self._unary(self.stub.Generate, request, call, timeout)

    def generate_stream(self, prompts_or_request, *, timeout=None, call=None,
                        **sampling) -> Iterator[rollout_pb2.GenerateStreamResponse]:
        """Yields GenerateStreamResponse messages as tokens are sampled.
        Retried on UNAVAILABLE only before the first message; closing the
        generator cancels the call."""
        request = prompts_or_request
        if not isinstance(request, rollout_pb2.GenerateRequest):
            request = self.make_request(prompts_or_request, **sampling)
        call = _call(call, timeout)
        conn = self.connection
        deadline = conn._deadline(call)
        attempts = conn._max_attempts(call)
        received = False
        for i in range(attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockstepError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            stream = self.stub.GenerateStream(request, timeout=remaining,
                                              metadata=conn.metadata(call),
                                              wait_for_ready=call.wait_for_ready)
            try:
                for message in stream:
                    received = True
                    yield message
                return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or received or i + 1 == attempts:
                    raise LockstepError(e.code(), e.details() or "") from None
                delay = conn.options.retry.delay(i + 1, random.random())
                if time.monotonic() + delay >= deadline:
                    raise LockstepError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        "deadline exceeded; last error: UNAVAILABLE: %s"
                                        % (e.details() or "")) from None
                time.sleep(delay)
            finally:
                stream.cancel()

    def compute_logprobs(self, sequences, *, top_logprobs=0, weight_version=None,
                         timeout=None, call=None) -> common_pb2.ComputeLogprobsResponse:
        """Logprobs of (token_ids, prompt_len) pairs (or ScoredSequence)."""
        request = common_pb2.ComputeLogprobsRequest(sequences=_scored_sequences(sequences),
                                                    top_logprobs=top_logprobs)
        if weight_version is not None:
            request.weight_version = weight_version
        return self._unary(self.stub.ComputeLogprobs, request, call, timeout)

    def get_model_info(self, *, timeout=None, call=None) -> rollout_pb2.ModelInfo:
        return self._unary(self.stub.GetModelInfo, rollout_pb2.GetModelInfoRequest(), call,
                           timeout)

    def update_weights(self, messages_or_tensors, *, target_version=0,
                       source="lockstep python client",
                       chunk_bytes=_weights.DEFAULT_CHUNK_BYTES, timeout=None,
                       call=None) -> common_pb2.UpdateWeightsResponse:
        """Uploads weights: a list of weights.Tensor (encoded here, as
        `target_version`, 0 = served + 1) or an already encoded list of
        WeightUpdate messages (e.g. LearnerClient.get_weights()). The stream is
        replayed on UNAVAILABLE."""
        call = _call(call, timeout)
        items = list(messages_or_tensors)
        if items and isinstance(items[0], common_pb2.WeightUpdate):
            def produce():
                return iter(items)
        else:
            if target_version == 0:
                call = dataclasses.replace(call, deadline=self.connection._deadline(call),
                                           timeout=None)
                target_version = self.get_model_info(call=call).weight_version + 1

            def produce():
                return _weights.weight_update_messages(items, target_version, source,
                                                       chunk_bytes)
        return self.connection.run(
            call, lambda t, md, w: self.stub.UpdateWeights(produce(), timeout=t, metadata=md,
                                                           wait_for_ready=w))

    def update_weights_from_file(self, path, *, target_version=0, convert_dtype=True,
                                 source="lockstep python client",
                                 chunk_bytes=_weights.DEFAULT_CHUNK_BYTES, timeout=None,
                                 call=None) -> common_pb2.UpdateWeightsResponse:
        """Uploads a .safetensors file or a checkpoint directory
        (DIR/model.safetensors, or DIR/model.safetensors.index.json and its
        shards; see read_safetensors), converted to the served storage dtype
        when `convert_dtype`."""
        tensors = _weights.read_safetensors(path)
        call = _call(call, timeout)
        call = dataclasses.replace(call, deadline=self.connection._deadline(call), timeout=None)
        if convert_dtype or target_version == 0:
            info = self.get_model_info(call=call)
            if target_version == 0:
                target_version = info.weight_version + 1
            if convert_dtype and info.config.dtype in (common_pb2.DTYPE_F32,
                                                       common_pb2.DTYPE_BF16):
                tensors = [t.converted_to(info.config.dtype) for t in tensors]
        return self.update_weights(tensors, target_version=target_version, source=source,
                                   chunk_bytes=chunk_bytes, call=call)

    def get_load(self, *, timeout=None, call=None) -> rollout_pb2.RolloutLoad:
        """The engine's load now (queue, running sequences, KV usage, calls in
        flight, served version, paused, sleep_level); never waits for a step."""
        return self._unary(self.stub.GetLoad, rollout_pb2.GetLoadRequest(), call, timeout)

    # Generation control. Every call below is idempotent on the server, so
    # the retry on UNAVAILABLE is safe.

    def abort(self, request_ids=(), *, all=False, timeout=None,
              call=None) -> rollout_pb2.AbortResponse:
        """Stops the Generate / GenerateStream calls with these
        GenerateRequest.request_id values (or, with all=True, every call in
        flight) at the next engine step; they return what they generated, the
        unfinished samples with FINISH_REASON_ABORT (see resume_prompt).
        `aborted` counts the calls stopped."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        request = rollout_pb2.AbortRequest(request_ids=list(request_ids), all=all)
        return self._unary(self.stub.Abort, request, call, timeout)

    def pause(self, mode="keep", *, timeout=None, call=None) -> rollout_pb2.PauseResponse:
        """Pauses generation at the next step boundary and returns once paused.
        mode: "keep" (running samples keep their KV and continue on resume()),
        "retract" (their KV is freed; recomputed on resume(), same tokens),
        "abort" (every call in flight returns, as abort(all=True)), or a
        rollout_pb2.PauseMode value. Calls that arrive meanwhile wait;
        ComputeLogprobs and weight updates keep working."""
        return self._unary(self.stub.Pause, rollout_pb2.PauseRequest(mode=_pause_mode(mode)),
                           call, timeout)

    def resume(self, *, timeout=None, call=None) -> rollout_pb2.ResumeResponse:
        """Continues generation after pause() (was_paused says whether it was)."""
        return self._unary(self.stub.Resume, rollout_pb2.ResumeRequest(), call, timeout)

    def sleep(self, level=1, *, timeout=None, call=None) -> rollout_pb2.SleepResponse:
        """Frees the rollout's memory for a colocated trainer and returns once
        it is back with the device's driver: level 1 (SLEEP_LEVEL_KV_CACHE)
        the KV cache and CUDA graphs, level 2
        (SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS) the weights too. Running samples
        are retracted and recomputed after wake_up(); Generate calls wait. After
        level 2, push weights (update_weights*, or the learner's push) before
        wake_up()."""
        if level not in (rollout_pb2.SLEEP_LEVEL_KV_CACHE,
                         rollout_pb2.SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS):
            raise ValueError("sleep level must be 1 (KV cache) or 2 (KV cache and weights), "
                             "not %r" % (level,))
        return self._unary(self.stub.Sleep, rollout_pb2.SleepRequest(level=level), call,
                           timeout)

    def wake_up(self, *, timeout=None, call=None) -> rollout_pb2.WakeUpResponse:
        """Allocates the KV cache again and continues generation
        (FAILED_PRECONDITION after sleep(2) until weights were pushed)."""
        return self._unary(self.stub.WakeUp, rollout_pb2.WakeUpRequest(), call, timeout)

    def health(self, *, timeout=None, call=None) -> str:
        return self.connection.check_health(ROLLOUT_SERVICE, call=call, timeout=timeout)


_PAUSE_MODES = {"abort": rollout_pb2.PAUSE_MODE_ABORT, "keep": rollout_pb2.PAUSE_MODE_KEEP,
                "retract": rollout_pb2.PAUSE_MODE_RETRACT}


def _pause_mode(mode) -> int:
    if isinstance(mode, str):
        if mode.lower() not in _PAUSE_MODES:
            raise ValueError("pause mode must be one of %s, not %r"
                             % (", ".join(sorted(_PAUSE_MODES)), mode))
        return _PAUSE_MODES[mode.lower()]
    if mode not in _PAUSE_MODES.values():
        raise ValueError("not a PauseMode: %r" % (mode,))
    return mode


class LearnerClient(_Client):
    """Client of lockstep.v1.LearnerService (default target 127.0.0.1:50052).

    TrainStep is retried on UNAVAILABLE like every call; pass
    expected_version so that the retry of a step that did apply fails with
    FAILED_PRECONDITION instead of taking a second step."""

    def __init__(self, target_or_options="127.0.0.1:50052", *, connection=None, **defaults):
        super().__init__(target_or_options, connection, **defaults)
        self.stub = learner_pb2_grpc.LearnerServiceStub(self.connection.channel)

    def submit_trajectories(self, trajectories: Iterable[learner_pb2.Trajectory], *,
                            max_message_bytes=4 << 20, timeout=None,
                            call=None) -> learner_pb2.SubmitTrajectoriesResponse:
        """Streams the trajectories in one call (all or nothing on the
        server); replayed on UNAVAILABLE."""
        trajectories = list(trajectories)
        if not trajectories:
            raise LockstepError(grpc.StatusCode.INVALID_ARGUMENT, "no trajectories to submit")
        messages, current, size = [], [], 0
        for t in trajectories:
            n = t.ByteSize()
            if current and size + n > max_message_bytes:
                messages.append(learner_pb2.SubmitTrajectoriesRequest(trajectories=current))
                current, size = [], 0
            current.append(t)
            size += n + 8
        messages.append(learner_pb2.SubmitTrajectoriesRequest(trajectories=current))
        # The total, so a message lost in transit fails the call instead of
        # committing part of it.
        messages[0].stream_trajectories = len(trajectories)
        return self.connection.run(
            _call(call, timeout),
            lambda t, md, w: self.stub.SubmitTrajectories(iter(messages), timeout=t,
                                                          metadata=md, wait_for_ready=w))

    def train_step(self, *, group_ids=(), expected_version=None, skip_push=False,
                   timeout=None, call=None) -> learner_pb2.TrainStepResponse:
        request = learner_pb2.TrainStepRequest(group_ids=list(group_ids), skip_push=skip_push)
        if expected_version is not None:
            request.expected_version = expected_version
        return self._unary(self.stub.TrainStep, request, call, timeout)

    def compute_logprobs(self, sequences, *, top_logprobs=0, weight_version=None,
                         timeout=None, call=None) -> common_pb2.ComputeLogprobsResponse:
        request = common_pb2.ComputeLogprobsRequest(sequences=_scored_sequences(sequences),
                                                    top_logprobs=top_logprobs)
        if weight_version is not None:
            request.weight_version = weight_version
        return self._unary(self.stub.ComputeLogprobs, request, call, timeout)

    def register_rollout(self, endpoints, *, push_now=True, timeout=None,
                         call=None) -> learner_pb2.RegisterRolloutResponse:
        request = learner_pb2.RegisterRolloutRequest(endpoints=list(endpoints),
                                                     push_now=push_now)
        return self._unary(self.stub.RegisterRollout, request, call, timeout)

    def unregister_rollout(self, endpoints, *, timeout=None,
                           call=None) -> learner_pb2.UnregisterRolloutResponse:
        request = learner_pb2.UnregisterRolloutRequest(endpoints=list(endpoints))
        return self._unary(self.stub.UnregisterRollout, request, call, timeout)

    def push_weights(self, *, timeout=None, call=None) -> learner_pb2.PushWeightsResponse:
        return self._unary(self.stub.PushWeights, learner_pb2.PushWeightsRequest(), call,
                           timeout)

    def get_weights(self, *, chunk_bytes=0, timeout=None,
                    call=None) -> List[common_pb2.WeightUpdate]:
        """The current weights in the UpdateWeights format (header first)."""
        request = learner_pb2.GetWeightsRequest(chunk_bytes=chunk_bytes)
        return self.connection.run(
            _call(call, timeout),
            lambda t, md, w: list(self.stub.GetWeights(request, timeout=t, metadata=md,
                                                       wait_for_ready=w)))

    def save_checkpoint(self, name="", *, timeout=None,
                        call=None) -> learner_pb2.SaveCheckpointResponse:
        return self._unary(self.stub.SaveCheckpoint, learner_pb2.SaveCheckpointRequest(name=name),
                           call, timeout)

    def load_checkpoint(self, name, *, timeout=None,
                        call=None) -> learner_pb2.LoadCheckpointResponse:
        return self._unary(self.stub.LoadCheckpoint, learner_pb2.LoadCheckpointRequest(name=name),
                           call, timeout)

    def get_stats(self, *, timeout=None, call=None) -> learner_pb2.LearnerStats:
        return self._unary(self.stub.GetStats, learner_pb2.GetStatsRequest(), call, timeout)

    def health(self, *, timeout=None, call=None) -> str:
        return self.connection.check_health(LEARNER_SERVICE, call=call, timeout=timeout)
