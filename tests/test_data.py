"""Prompt preparation: prompts over the token limit stop the run naming the row, or are left out when asked."""

from __future__ import annotations

import pytest


def test_long_prompts_stop_the_run_or_are_left_out(tiny_model_dir):
    from rlcf.data import DataError, Prompt, prepare_prompts
    from rlcf.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    prompts = [Prompt("a cat", None), Prompt("the cat sat on the mat " * 20, None), Prompt("a dog", None)]
    with pytest.raises(DataError, match=r"prompts, row 2: prompt is \d+ tokens, over the limit of 32"):
        prepare_prompts(prompts, tok, 32)
    kept, ids = prepare_prompts(prompts, tok, 32, long_prompts="skip")
    assert [p.text for p in kept] == ["a cat", "a dog"] and all(len(x) <= 32 for x in ids) and len(ids) == 2
    with pytest.raises(DataError, match="all 3 prompts are over 2 tokens"):
        prepare_prompts(prompts, tok, 2, long_prompts="skip")
