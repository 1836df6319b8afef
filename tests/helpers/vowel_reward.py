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
