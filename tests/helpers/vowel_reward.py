"""A reward a tiny random model can learn in a few steps: the share of vowels in the response."""


def reward(prompts, responses):
    out = []
    for r in responses:
        letters = [c for c in r.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out


def wrong_count(prompts, responses):
    return [0.0] * (len(responses) - 1)


def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)


CALLS = {"n": 0, "signal_at": 2}


def signal_on_second_call(prompts, responses):
    """The vowel reward; on its second call the process sends itself SIGTERM (a preempted cluster job)."""
    import os
    import signal

    CALLS["n"] += 1
    if CALLS["n"] == CALLS["signal_at"]:
        os.kill(os.getpid(), signal.SIGTERM)
    return reward(prompts, responses)


def hangs(prompts, responses):
    """A reward server that never answers (within the test's patience)."""
    import time

    time.sleep(10)
    return reward(prompts, responses)
