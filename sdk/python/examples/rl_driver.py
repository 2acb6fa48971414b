#!/usr/bin/env python3
"""A client-driven RL loop against a lockstep rollout and learner, with a
reward function written here by the user.

Each step: sample prompts, Generate n completions per prompt on the rollout,
score every completion with `reward()`, SubmitTrajectories (one GRPO group
per prompt) and TrainStep on the learner, which pushes the new weights to the
rollout before it answers. The learner compares its own logprob of every
generated token with the rollout's: with the invariant kernels on both
services the mismatch is exactly zero.

    rl_driver.py --rollout=127.0.0.1:50051 --learner=127.0.0.1:50052 --steps=5

Exit status: 0; 2 when --require_exact and any compared token mismatched.
"""

import argparse
import random
import sys

from lockstep_client import (ClientOptions, LearnerClient, LockstepError, RolloutClient,
                             TlsOptions, make_trajectory)

BOS, EOS = 1, 2
DIGITS = list(range(4, 14))  # the digit ids of the learner's character vocabulary


def reward(prompt, completion):
    """The user's reward, in [0, 1]: how well `completion` reverses the digits
    of `prompt` (prompt = <bos> digits...) and then stops with <eos>."""
    target = [t for t in prompt if t in DIGITS][::-1] + [EOS]
    hits = sum(1.0 for i, t in enumerate(target) if i < len(completion) and completion[i] == t)
    return hits / len(target)


def make_prompt(rng, length):
    return [BOS] + [rng.choice(DIGITS) for _ in range(length)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rollout", default="127.0.0.1:50051")
    p.add_argument("--learner", default="127.0.0.1:50052")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (group size)")
    p.add_argument("--max_tokens", type=int, default=6)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_p", type=float, default=0.95,
                   help="the learner trains on the logprobs under this sampling distribution")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of each call (s)")
    p.add_argument("--auth_token_file")
    p.add_argument("--tls_ca")
    p.add_argument("--tls_cert")
    p.add_argument("--tls_key")
    p.add_argument("--no_register", action="store_true",
                   help="the learner already pushes to this rollout (--rollout flag)")
    p.add_argument("--require_exact", action="store_true",
                   help="exit 2 if any compared token's logprobs differ")
    a = p.parse_args(argv)

    def options(target):
        return ClientOptions(target=target, auth_token_file=a.auth_token_file,
                             default_timeout=a.timeout,
                             tls=TlsOptions(ca_file=a.tls_ca, cert_file=a.tls_cert,
                                            key_file=a.tls_key))

    rollout = RolloutClient(options(a.rollout))
    learner = LearnerClient(options(a.learner))
    rng = random.Random(a.seed)
    try:
        info = rollout.get_model_info()
        print("rollout %s: %s, vocab %d, weight version %d" % (
            a.rollout, info.config.model_type, info.config.vocab_size, info.weight_version))
        if not a.no_register:
            learner.register_rollout([a.rollout], push_now=True)
        compared = mismatched = sampled_compared = sampled_mismatched = 0
        for step in range(a.steps):
            prompts = [make_prompt(rng, rng.randint(2, 4)) for _ in range(a.prompts)]
            out = rollout.generate(prompts, n=a.samples, max_tokens=a.max_tokens,
                                   temperature=a.temperature, top_p=a.top_p,
                                   seed=rng.getrandbits(32),
                                   stop_token_ids=[EOS])
            batch, rewards = [], []
            for c in out.completions:
                if not c.token_ids:
                    continue
                prompt = prompts[c.prompt_index]
                r = reward(prompt, list(c.token_ids))
                rewards.append(r)
                batch.append(make_trajectory(prompt, c, r, "s%d-p%d" % (step, c.prompt_index)))
            learner.submit_trajectories(batch)
            version = learner.get_stats().weight_version
            result = learner.train_step(expected_version=version)
            m = result.mismatch
            compared += m.tokens_compared
            mismatched += m.tokens_mismatched
            # The same under the distribution the tokens were drawn from
            # (make_trajectory carries Completion.sampling to the learner).
            sampled_compared += result.sampled_mismatch.tokens_compared
            sampled_mismatched += result.sampled_mismatch.tokens_mismatched
            print("step %d: version %d loss %.4f reward %.3f tokens compared %d mismatched %d"
                  " max|dlogprob| %.3g" % (step + 1, result.weight_version, result.loss,
                                          sum(rewards) / len(rewards), m.tokens_compared,
                                          m.tokens_mismatched, m.max_abs_diff))
        served = rollout.get_model_info().weight_version
        print("summary steps=%d tokens_compared=%d tokens_mismatched=%d rollout_version=%d"
              " sampled_compared=%d sampled_mismatched=%d"
              % (a.steps, compared, mismatched, served, sampled_compared, sampled_mismatched))
    except LockstepError as e:
        print("rl_driver: %s" % e, file=sys.stderr)
        return 1
    finally:
        rollout.close()
        learner.close()
    if a.require_exact and (mismatched > 0 or sampled_mismatched > 0):
        print("rl_driver: %d of %d tokens mismatched (%d under the sampling distribution)"
              % (mismatched, compared, sampled_mismatched), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
