"""The Python client (lockstep_client) against real services: generate,
stream, score (bitwise equal to the generation logprobs), push weights and
see the version change, submit + train step with the weight push, stats,
health, errors and deadlines, TLS / mTLS / token. Run by ctest under
/usr/bin/python3."""

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from lockstep_client import (CallOptions, ClientOptions, HealthStatus,  # noqa: E402
                             LearnerClient, LockstepError, RetryPolicy, RolloutClient,
                             TlsOptions, common_pb2, make_trajectory, read_safetensors,
                             rollout_pb2, weight_update_messages)
from lockstep_client import weights as lw  # noqa: E402

PROMPTS = [[1, 4, 5, 6], [1, 7, 8]]
EOS = 2


def setUpModule():
    global STACK
    STACK = harness.Stack()


def tearDownModule():
    STACK.close()


class UnitTest(unittest.TestCase):
    def test_crc32c_and_bf16(self):
        self.assertEqual(lw.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(lw.crc32c(b"6789", lw.crc32c(b"12345")), 0xE3069283)
        t = lw.Tensor("x", common_pb2.DTYPE_F32, [2], bytes.fromhex("0000803f" "0000c0bf"))
        b = t.converted_to(common_pb2.DTYPE_BF16)
        self.assertEqual(bytes(b.data), bytes.fromhex("803f" "c0bf"))
        self.assertEqual(bytes(b.converted_to(common_pb2.DTYPE_F32).data), bytes(t.data))
        with self.assertRaises(ValueError):
            lw.Tensor("y", common_pb2.DTYPE_F32, [3], b"1234")

    def test_weight_stream_layout(self):
        t = [lw.Tensor("b", common_pb2.DTYPE_F32, [5], bytes(range(20))),
             lw.Tensor("a", common_pb2.DTYPE_BF16, [1], b"xy")]
        messages = list(weight_update_messages(t, 3, chunk_bytes=8))
        self.assertEqual(len(messages), 1 + 1 + 3)
        self.assertEqual([e.name for e in messages[0].header.tensors], ["a", "b"])
        self.assertEqual(messages[0].header.target_version, 3)
        self.assertEqual([m.chunk.offset for m in messages[2:]], [0, 8, 16])
        for m in messages[1:]:
            self.assertEqual(m.chunk.crc32c, lw.crc32c(m.chunk.data))

    def test_read_sharded_checkpoint(self):
        one = os.path.join(STACK.dir, "model-py-one")
        sharded = os.path.join(STACK.dir, "model-py-sharded")
        harness.make_model(one, seed=3)
        harness.make_model(sharded, seed=3, max_shard_bytes=100000)
        self.assertFalse(os.path.exists(os.path.join(sharded, "model.safetensors")))
        a = read_safetensors(one)
        b = read_safetensors(sharded)
        self.assertEqual([(t.name, t.dtype, list(t.shape), bytes(t.data)) for t in a],
                         [(t.name, t.dtype, list(t.shape), bytes(t.data)) for t in b])
        index = os.path.join(sharded, "model.safetensors.index.json")
        with open(index) as f:
            good = f.read()
        bad = ['{"weight_map": {"a": "../model-py-one/model.safetensors"}}',
               '{"weight_map": []}', '{"metadata": {}}', "{not json",
               '{"weight_map": {"a": "x.safetensors", "a": "x.safetensors"}}']
        for text in bad:
            with open(index, "w") as f:
                f.write(text)
            with self.assertRaises(ValueError, msg=text):
                read_safetensors(sharded)
        with open(index, "w") as f:
            f.write(good)
        os.remove(os.path.join(sharded, "model-00002-of-00005.safetensors"))
        with self.assertRaises(FileNotFoundError):
            read_safetensors(sharded)
        os.remove(index)
        with self.assertRaises(FileNotFoundError):
            read_safetensors(sharded)

    def test_backoff(self):
        p = RetryPolicy(initial_backoff=0.1, max_backoff=0.35, multiplier=2, jitter=0.2)
        self.assertAlmostEqual(p.delay(1, 0.5), 0.1)
        self.assertAlmostEqual(p.delay(2, 0.5), 0.2)
        self.assertAlmostEqual(p.delay(5, 0.5), 0.35)
        self.assertAlmostEqual(p.delay(1, 0.0), 0.08)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.rollout = RolloutClient(STACK.rollout.address, default_timeout=60)
        self.learner = LearnerClient(STACK.learner.address, default_timeout=60)

    def tearDown(self):
        self.rollout.close()
        self.learner.close()

    def test_health_and_info(self):
        self.assertEqual(self.rollout.health(), HealthStatus.SERVING)
        self.assertEqual(self.learner.health(), HealthStatus.SERVING)
        info = self.rollout.get_model_info(timeout=10)
        self.assertEqual(info.config.vocab_size, 64)

    def test_generate_stream_and_score_bitwise(self):
        out = self.rollout.generate(PROMPTS, n=2, max_tokens=6, seed=5, stop_token_ids=[EOS])
        self.assertEqual(len(out.completions), 4)
        streamed = {}
        for m in self.rollout.generate_stream(PROMPTS, n=2, max_tokens=6, seed=5,
                                              stop_token_ids=[EOS]):
            tokens, logprobs = streamed.setdefault((m.prompt_index, m.sample_index), ([], []))
            tokens.extend(m.token_ids)
            logprobs.extend(m.logprobs)
        seqs = []
        for c in out.completions:
            tokens, logprobs = streamed[(c.prompt_index, c.sample_index)]
            self.assertEqual(tokens, list(c.token_ids))
            self.assertEqual(logprobs, list(c.logprobs))  # floats: bitwise
            seqs.append((PROMPTS[c.prompt_index] + list(c.token_ids), len(PROMPTS[c.prompt_index])))
        on_rollout = self.rollout.compute_logprobs(seqs)
        on_learner = self.learner.compute_logprobs(seqs)
        for c, a, b in zip(out.completions, on_rollout.results, on_learner.results):
            self.assertEqual(list(a.logprobs), list(c.logprobs))
            self.assertEqual(list(b.logprobs), list(c.logprobs))
        # A GenerateRequest works too.
        req = RolloutClient.make_request([[1, 4]], max_tokens=2, seed=1)
        self.assertIsInstance(req, rollout_pb2.GenerateRequest)
        self.assertEqual(len(self.rollout.generate(req).completions), 1)

    def test_errors_and_deadline(self):
        with self.assertRaises(LockstepError) as e:
            self.rollout.generate([[1, 999]], max_tokens=2)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        start = time.monotonic()
        with self.assertRaises(LockstepError) as e:
            self.rollout.generate([[1, 4, 5]], n=16, max_tokens=200, ignore_eos=True,
                                  timeout=0.05)
        self.assertEqual(e.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - start, 3)
        dead = RolloutClient("127.0.0.1:1", retry=RetryPolicy(max_attempts=2,
                                                              initial_backoff=0.01))
        with self.assertRaises(LockstepError) as e:
            dead.get_model_info()
        self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(LockstepError) as e:
            dead.get_model_info(call=CallOptions(timeout=0.3, wait_for_ready=True))
        self.assertEqual(e.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_submit_train_step_and_stats(self):
        version = self.learner.get_stats().weight_version
        out = self.rollout.generate(PROMPTS, n=3, max_tokens=6, seed=8, stop_token_ids=[EOS])
        batch = [make_trajectory(PROMPTS[c.prompt_index], c, float(len(c.token_ids) % 2),
                                 "py-%d" % c.prompt_index) for c in out.completions]
        # The first trajectory trains on its first token only (loss_mask).
        first = out.completions[0]
        batch[0] = make_trajectory(PROMPTS[first.prompt_index], first, 0.0,
                                   "py-%d" % first.prompt_index,
                                   loss_mask=[1] + [0] * (len(first.token_ids) - 1))
        # A mask of the wrong length is refused and nothing is buffered.
        with self.assertRaises(LockstepError) as e:
            self.learner.submit_trajectories([make_trajectory(
                PROMPTS[first.prompt_index], first, 0.0, "bad",
                loss_mask=[1] * (len(first.token_ids) + 1))])
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        sub = self.learner.submit_trajectories(batch)
        self.assertEqual(sub.accepted, len(batch))
        step = self.learner.train_step(expected_version=version)
        self.assertEqual(step.weight_version, version + 1)
        self.assertEqual(step.num_tokens,
                         sum(len(c.token_ids) for c in out.completions) - (len(first.token_ids) - 1))
        self.assertGreater(step.mismatch.tokens_compared, 0)
        self.assertEqual(step.mismatch.tokens_mismatched, 0)
        self.assertEqual([p.code for p in step.pushes], [0])
        self.assertEqual(self.rollout.get_model_info().weight_version, version + 1)
        with self.assertRaises(LockstepError) as e:
            self.learner.train_step(expected_version=version)
        self.assertEqual(e.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        stats = self.learner.get_stats()
        self.assertEqual(stats.mismatch_total.tokens_mismatched, 0)

    def test_push_weights_changes_version(self):
        other = os.path.join(STACK.dir, "model-py-2")
        harness.make_model(other, seed=2)
        own = harness.start_rollout(STACK.model)
        try:
            client = RolloutClient(own.address)
            before = client.generate([[1, 4, 5]], max_tokens=3, seed=1)
            r = client.update_weights_from_file(other)
            self.assertEqual((r.previous_version, r.weight_version), (0, 1))
            self.assertEqual(client.get_model_info().weight_version, 1)
            after = client.generate([[1, 4, 5]], max_tokens=3, seed=1)
            self.assertEqual(after.completions[0].weight_version, 1)
            self.assertNotEqual(list(after.completions[0].logprobs),
                                list(before.completions[0].logprobs))
            with self.assertRaises(LockstepError) as e:
                client.update_weights(read_safetensors(other), target_version=1)
            self.assertEqual(e.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
            # Forward the learner's weights as they come.
            messages = self.learner.get_weights()
            messages[0].header.target_version = 9
            self.assertEqual(client.update_weights(messages).weight_version, 9)
            seq = [([1, 4, 5, 6, 7], 2)]
            self.assertEqual(list(client.compute_logprobs(seq).results[0].logprobs),
                             list(self.learner.compute_logprobs(seq).results[0].logprobs))
            client.close()
        finally:
            own.stop()

    def test_retry_reaches_a_restarted_server(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        first = harness.start_rollout(STACK.model, port=port)
        client = RolloutClient("127.0.0.1:%d" % port, default_timeout=90,
                               retry=RetryPolicy(max_attempts=100, initial_backoff=0.05,
                                                 max_backoff=0.3))
        client.get_model_info()
        first.proc.send_signal(signal.SIGSTOP)
        result = {}

        def call():
            try:
                result["out"] = client.generate(PROMPTS, max_tokens=4, seed=3)
            except Exception as e:  # noqa: BLE001
                result["error"] = e
            result["t"] = time.monotonic()

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)
        first.proc.kill()
        first.proc.wait()
        killed = time.monotonic()
        second = harness.start_rollout(STACK.model, port=port)
        try:
            t.join(120)
            self.assertNotIn("error", result)
            self.assertGreater(result["t"], killed)
            self.assertEqual(len(result["out"].completions), 2)
        finally:
            client.close()
            second.stop()


class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="lockstep-py-certs-")
        harness.make_certs(cls.certs)
        with open(os.path.join(cls.certs, "token"), "w") as f:
            f.write("py-token\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs, ignore_errors=True)

    def c(self, name):
        return os.path.join(self.certs, name)

    def options(self, target, cert=True, token=True):
        return ClientOptions(
            target=target, default_timeout=30, retry=RetryPolicy(max_attempts=1),
            auth_token_file=self.c("token") if token else None,
            tls=TlsOptions(ca_file=self.c("ca.pem"),
                           cert_file=self.c("client.pem") if cert else None,
                           key_file=self.c("client.key") if cert else None))

    def test_rollout_mtls_and_token(self):
        own = harness.start_rollout(STACK.model, [
            "--tls_cert=" + self.c("server.pem"), "--tls_key=" + self.c("server.key"),
            "--tls_ca=" + self.c("ca.pem"), "--auth_token_file=" + self.c("token")])
        try:
            good = RolloutClient(self.options(own.address))
            self.assertEqual(len(good.generate([[1, 4]], max_tokens=2, seed=1).completions), 1)
            no_token = RolloutClient(self.options(own.address, token=False))
            with self.assertRaises(LockstepError) as e:
                no_token.generate([[1, 4]], max_tokens=2)
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            self.assertEqual(no_token.health(), HealthStatus.SERVING)
            no_cert = RolloutClient(self.options(own.address, cert=False))
            with self.assertRaises(LockstepError) as e:
                no_cert.get_model_info()
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
            plain = RolloutClient(own.address, retry=RetryPolicy(max_attempts=1))
            with self.assertRaises(LockstepError) as e:
                plain.get_model_info()
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
            for client in (good, no_token, no_cert, plain):
                client.close()
        finally:
            own.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
