"""Tests of the built-in demo task (prompts + positivity reward). No model needed."""

from __future__ import annotations

import math

import pytest

from rlcf.demo.task import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    brevity,
    load_prompts,
    positivity,
    reward,
    word_count,
)

POSITIVE = "What a wonderful, sunny morning! I feel happy and grateful."
NEUTRAL = "The train arrived at the station at nine and we got on."
NEGATIVE = "The delay was awful and I felt tired, angry and miserable."


def test_positive_above_neutral_above_negative():
    p, n, q = positivity(POSITIVE), positivity(NEUTRAL), positivity(NEGATIVE)
    assert n == 0.0
    assert p > 0.5
    assert q < -0.5
    assert p > n > q


def test_reward_orders_texts_like_positivity():
    r = reward(["x"] * 3, [POSITIVE, NEUTRAL, NEGATIVE])
    assert r[0] > r[1] > r[2]


def test_score_is_bounded_and_saturates():
    many = " ".join(sorted(POSITIVE_WORDS)[:25])
    assert 0.9 < positivity(many) < 1.0
    assert -1.0 < positivity(" ".join(sorted(NEGATIVE_WORDS)[:25])) < -0.9


def test_more_positive_words_score_higher():
    assert positivity("good") < positivity("good and kind") < positivity("good, kind and lovely")


def test_negation_flips_sign():
    assert positivity("The food was good.") > 0
    assert positivity("The food was not good.") < 0
    assert positivity("The food was bad.") < 0
    assert positivity("The food was not bad.") > 0
    assert positivity("It wasn't great.") < 0
    assert positivity("It wasn’t great.") < 0  # curly apostrophe
    assert positivity("I never felt happy there.") < 0
    assert positivity("No problem at all.") > 0


def test_negation_is_weaker_than_plain_word():
    assert 0 < positivity("not bad") < positivity("good")
    assert positivity("bad") < positivity("not good") < 0


def test_negation_scope_ends_at_punctuation_and_window():
    # "no" ends its clause at the comma, so "happy" is not negated
    assert positivity("No, I am happy.") > 0
    # more than 3 words between the negator and the polarity word: not negated
    assert positivity("I did not expect the day to be so lovely") > 0


def test_repetition_is_not_rewarded():
    assert positivity("great great great great") == pytest.approx(positivity("great"))


def test_case_insensitive():
    assert positivity("WONDERFUL") == pytest.approx(positivity("wonderful"))


def test_brevity_free_range_and_penalties():
    assert brevity("Short and sweet.") == 0.0
    assert brevity(" ".join(["word"] * 30)) == 0.0
    assert brevity(" ".join(["word"] * 45)) == pytest.approx(-0.25)
    assert brevity(" ".join(["word"] * 60)) == pytest.approx(-0.5)
    assert brevity(" ".join(["word"] * 500)) == pytest.approx(-0.5)
    assert brevity("") == -1.0
    assert brevity("   \n ") == -1.0
    assert brevity("...!?") == -1.0


def test_long_and_empty_responses_penalised_in_reward():
    short = "A lovely day."
    long = "A lovely day. " + " ".join(["and then"] * 40)
    assert word_count(long) > 60
    r_short, r_long, r_empty = reward(["p"] * 3, [short, long, ""])
    assert r_long < r_short
    assert r_long == pytest.approx(r_short - 0.5)
    assert r_empty == -1.0
    assert r_empty < reward(["p"], [NEUTRAL])[0]


def test_reward_returns_one_float_per_response():
    responses = [POSITIVE, NEUTRAL, NEGATIVE, "", "ok"]
    r = reward(["prompt"] * len(responses), responses)
    assert len(r) == len(responses)
    assert all(type(x) is float and math.isfinite(x) for x in r)
    assert all(-2.0 < x < 1.0 for x in r)
    assert reward([], []) == []


def test_reward_is_deterministic():
    responses = [POSITIVE, NEGATIVE, NEUTRAL]
    assert reward(["a"] * 3, responses) == reward(["b"] * 3, responses)


def test_reward_length_mismatch_raises():
    with pytest.raises(ValueError):
        reward(["a", "b"], ["only one"])


def test_lexicons_disjoint_and_sizable():
    assert not POSITIVE_WORDS & NEGATIVE_WORDS
    assert len(POSITIVE_WORDS) >= 150
    assert len(NEGATIVE_WORDS) >= 150


def test_prompts_load():
    prompts = load_prompts("all")
    train, test = load_prompts("train"), load_prompts("test")
    assert not set(train) & set(test) and len(train) + len(test) == len(prompts) and len(test) == len(prompts) // 5
    assert isinstance(prompts, list)
    assert len(prompts) >= 300
    assert len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and p.strip() == p and p for p in prompts)
