"""rlcf eval: per-sample log-probs and KL against brute-force enumeration of every response of a tiny
model, win-rate counting and its interval, and run_eval end to end on the tiny test model."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from rlcf.config import EvalConfig, JudgeConfig, RolloutConfig
from rlcf.data import left_pad
from rlcf.evaluate import (evaluate, mean_stderr, reward_gold_agreement, run_eval, sequence_kls, token_logprobs,
                           wilson_interval, win_rate_summary)
from rlcf.rewards.judges import ScoreJudge
from rlcf.generation import HFBackend
from rlcf.train.rollout import response_mask_from_ids

PAD, EOS, VOCAB, T = 0, 1, 6, 3
PROMPTS = [[2, 3, 4], [5, 2]]  # different lengths, so the batch is left-padded


def _tiny_vocab_lm(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      initializer_range=0.2, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    # a trap: a sampler that lets the model's own generation settings in would not sample pi
    model.generation_config.repetition_penalty = 2.0
    return model


def _all_responses() -> list[list[int]]:
    """Every response of at most T tokens: ending at the first EOS, or T tokens without one (truncated)."""
    out = []
    for n in range(1, T + 1):
        for head in itertools.product([t for t in range(VOCAB) if t != EOS], repeat=n - 1):
            out.append(list(head) + [EOS])
    out += [list(s) for s in itertools.product([t for t in range(VOCAB) if t != EOS], repeat=T)]
    return out


@torch.no_grad()
def _exact_logprobs(model, prompt: list[int], responses: list[list[int]], temperature: float) -> torch.Tensor:
    """log pi(y|x) [N] per response: no padding (rows of one length run together), float64 log-softmax,
    independent of evaluate's batching and position ids."""
    out = torch.zeros(len(responses), dtype=torch.float64)
    for n in {len(r) for r in responses}:
        rows = [i for i, r in enumerate(responses) if len(r) == n]
        ids = torch.tensor([prompt + responses[i] for i in rows])
        logp = torch.log_softmax(model(input_ids=ids).logits.double() / temperature, -1)
        targets = ids[:, len(prompt) :]
        out[rows] = logp[:, len(prompt) - 1 : -1].gather(-1, targets[..., None])[..., 0].sum(1)
    return out


def _batch(prompt_rows: list[list[int]], responses: list[list[int]]):
    q_ids, q_mask = left_pad(prompt_rows, PAD)
    r_ids = torch.tensor([r + [PAD] * (T - len(r)) for r in responses])
    r_mask, truncated = response_mask_from_ids(r_ids, {EOS})
    return q_ids, q_mask, r_ids, r_mask, truncated


@pytest.fixture(scope="module")
def two_models():
    return _tiny_vocab_lm(0), _tiny_vocab_lm(1)


def test_sequence_logprobs_and_kl_match_enumeration(two_models):
    policy, reference = two_models
    temperature = 0.8
    responses = _all_responses()
    assert len(responses) == 1 + 5 + 5 * 5 * 6
    rows = [(p, r) for p in PROMPTS for r in responses]
    q_ids, q_mask, r_ids, r_mask, _ = _batch([p for p, _ in rows], [r for _, r in rows])
    lp = token_logprobs(policy, q_ids, q_mask, r_ids, r_mask, temperature, chunk_rows=100).sum(1).double()
    ref = token_logprobs(reference, q_ids, q_mask, r_ids, r_mask, temperature, chunk_rows=100).sum(1).double()
    exact_lp = torch.cat([_exact_logprobs(policy, p, responses, temperature) for p in PROMPTS])
    exact_ref = torch.cat([_exact_logprobs(reference, p, responses, temperature) for p in PROMPTS])
    torch.testing.assert_close(lp, exact_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref, exact_ref, atol=1e-5, rtol=0)
    n = len(responses)
    for i in range(len(PROMPTS)):
        # the enumerated responses are the whole sample space: probabilities sum to 1 under both models
        assert float(exact_lp[i * n : (i + 1) * n].exp().sum()) == pytest.approx(1.0, abs=1e-6)
        assert float(exact_ref[i * n : (i + 1) * n].exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_monte_carlo_kl_estimates_agree_with_exact_kl(two_models):
    policy, reference = two_models
    temperature, n_samples = 0.8, 2000
    rollout = RolloutConfig(max_new_tokens=T, temperature=temperature)
    responses = _all_responses()
    for prompt in PROMPTS:
        exact_lp = _exact_logprobs(policy, prompt, responses, temperature)
        exact_ref = _exact_logprobs(reference, prompt, responses, temperature)
        p = exact_lp.exp()
        exact_kl = float((p * (exact_lp - exact_ref)).sum())
        assert exact_kl > 0.05, "the two models should differ enough for the test to mean something"

        q_ids, q_mask = left_pad([prompt] * n_samples, PAD)
        torch.manual_seed(123)
        r_ids = HFBackend(policy, PAD, {EOS}).generate(q_ids, q_mask, rollout).response_ids
        r_mask, _ = response_mask_from_ids(r_ids, {EOS})
        kl = sequence_kls(token_logprobs(policy, q_ids, q_mask, r_ids, r_mask, temperature, 1000),
                         token_logprobs(reference, q_ids, q_mask, r_ids, r_mask, temperature, 1000), r_mask)
        for estimator in ("k1", "k3"):
            mean, stderr = mean_stderr(kl[estimator].tolist())
            assert abs(mean - exact_kl) < 4 * stderr, (estimator, mean, stderr, exact_kl)
        assert bool((kl["k3"] >= -1e-6).all())

        # the samples come from the tempered softmax itself (the model's repetition_penalty is kept out)
        index = {tuple(r): i for i, r in enumerate(responses)}
        counts = torch.zeros(len(responses), dtype=torch.float64)
        for ids, m in zip(r_ids.tolist(), r_mask.sum(1).long().tolist()):
            counts[index[tuple(ids[:m])]] += 1
        freq = counts / n_samples
        sigma = (p * (1 - p) / n_samples).sqrt()
        assert bool(((freq - p).abs() <= 5 * sigma + 1e-3).all())


def test_win_rate_counts_ties_as_half_and_wilson_interval():
    summary = win_rate_summary([1, 1, 0.5, 0, 1, 0.5])
    assert (summary["wins"], summary["ties"], summary["losses"], summary["n"]) == (3, 2, 1, 6)
    assert summary["win_rate"] == pytest.approx(4 / 6)
    # textbook value: 8 successes of 10 -> Wilson 95% interval [0.4902, 0.9433]
    lo, hi = wilson_interval(0.8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    # all wins still leaves room below 1; two samples per prompt: the interval is over prompts
    assert win_rate_summary([1.0] * 8)["ci95"][0] < 0.7
    assert win_rate_summary([1.0] * 8, samples_per_prompt=2)["ci95"] == list(wilson_interval(1.0, 4))
    with pytest.raises(ValueError, match="pair 1"):
        win_rate_summary([1.0, 1.5])


def test_reward_gold_agreement_counts_same_order_over_pairs_gold_separates():
    # pairs: agree, disagree, gold tie (left out), reward tie (half), agree with both signs negative
    got = reward_gold_agreement([2.0, 0.0, 5.0, 1.0, -3.0], [1.0, 1.0, 0.0, 1.0, -1.0],
                                [0.9, 0.9, 0.4, 0.2, 0.1], [0.1, 0.1, 0.4, 0.3, 0.5])
    assert got["n"] == 4 and got["agreement"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert got["ci95"] == list(wilson_interval(2.5 / 4, 4))
    assert reward_gold_agreement([1.0, 2.0], [3.0, 4.0], [0.5, 0.5], [0.5, 0.5]) is None
    # two samples per prompt: the interval is over prompts
    assert reward_gold_agreement([1.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4, 2)["ci95"] == list(wilson_interval(1.0, 2))


def test_mean_stderr_is_over_prompts():
    mean, stderr = mean_stderr([1.0, 3.0, 5.0, 7.0], samples_per_prompt=2)  # prompt means 2 and 6
    assert mean == 4.0 and stderr == pytest.approx(math.sqrt(8) / math.sqrt(2))
    assert mean_stderr([1.0, 2.0], samples_per_prompt=2)[1] is None


def test_score_judge_prefers_higher_score_with_ties():
    longer = ScoreJudge(lambda prompts, responses: [len(r) for r in responses], "length")
    out = longer(["p"] * 4, ["long answer", "ab", "same", "xyz"], ["short", "abc", "same", "abc"])
    assert out == [1.0, 0.0, 0.5, 0.5]


def test_evaluate_pairs_samples_and_uses_the_judge(tiny_model_dir):
    from rlcf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    policy = load_causal_lm(tiny_model_dir)
    reference = load_causal_lm(tiny_model_dir)
    length = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    policy.train()  # a caller mid-training: sampled and scored in eval mode, its mode given back
    result = evaluate(policy, reference, tok, ["the cat", "a dog", "the sea"], RolloutConfig(max_new_tokens=6),
                      samples_per_prompt=2, reward=length, judge=ScoreJudge(length, "length"), seed=3)
    rows = result.samples
    assert policy.training and not reference.training
    assert [(r["prompt_index"], r["sample"]) for r in rows] == [(i, j) for i in range(3) for j in range(2)]
    for r in rows:
        expected = 0.5 if r["policy_reward"] == r["reference_reward"] else float(r["policy_reward"] > r["reference_reward"])
        assert r["judge"] == expected
        assert r["kl_k1"] == pytest.approx(0.0, abs=1e-5)  # same weights, separate objects
    wr = result.report["win_rate"]
    assert wr["n"] == 6 and wr["win_rate"] == pytest.approx(sum(r["judge"] for r in rows) / 6)
    assert result.report["policy"]["reward/mean"] == pytest.approx(sum(r["policy_reward"] for r in rows) / 6)
    assert "reward_gold_agreement" not in result.report  # no gold scorer
    # a seed fixes the samples
    again = evaluate(policy, reference, tok, ["the cat", "a dog", "the sea"], RolloutConfig(max_new_tokens=6),
                     samples_per_prompt=2, reward=length, seed=3)
    assert [r["policy_response"] for r in again.samples] == [r["policy_response"] for r in rows]


def _eval_config(tmp_path, model, reference, prompts_file, **kw) -> EvalConfig:
    return EvalConfig(model=model, reference=reference, prompts=prompts_file, max_prompts=4, samples_per_prompt=2,
                      reward_function="helpers.vowel_reward:reward", gold="helpers.vowel_reward:reward",
                      rollout=RolloutConfig(max_new_tokens=8, prompts_per_step=4), output=str(tmp_path / "eval.json"),
                      **kw)


def test_run_eval_same_model_has_zero_kl_and_writes_the_report(tmp_path, tiny_model_dir, prompts_file, capsys):
    path = run_eval(_eval_config(tmp_path, tiny_model_dir, tiny_model_dir, prompts_file))
    report = json.loads(path.read_text())
    for side in ("policy", "reference"):
        assert {"reward/mean", "reward/stderr", "gold/mean", "gold/stderr", "response/length_mean",
                "response/truncated_frac"} <= set(report[side])
    pol = report["policy"]
    assert pol["kl/k1_seq"] == 0.0 and pol["kl/k3_seq"] == 0.0
    assert report["win_rate"]["n"] == 8 and report["win_rate"]["judge"] == "gold:helpers.vowel_reward:reward"
    assert report["n_prompts"] == 4 and report["samples_per_prompt"] == 2
    rows = [json.loads(line) for line in open(report["samples_file"])]
    assert len(rows) == 8 and all(r["kl_k1"] == 0.0 for r in rows)
    assert pol["gold/mean"] == pytest.approx(sum(r["policy_gold"] for r in rows) / 8)
    assert pol["response/length_mean"] == pytest.approx(sum(r["policy_length"] for r in rows) / 8)
    # the reward is the gold scorer here: it orders every pair the gold scorer separates as gold does
    separated = sum(r["policy_gold"] != r["reference_gold"] for r in rows)
    assert separated > 0 and report["reward_gold_agreement"]["n"] == separated
    assert report["reward_gold_agreement"]["agreement"] == 1.0
    table = capsys.readouterr().out
    assert "kl/k1_seq (nats)" in table and "win_rate vs reference" in table and "gold/mean" in table
    assert "reward agrees with gold" in table


def test_run_eval_different_policy_has_positive_kl(tmp_path, tiny_model_dir, prompts_file):
    from conftest import build_tiny_model_dir

    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    cfg = _eval_config(tmp_path, other, tiny_model_dir, prompts_file)
    cfg.gold = None  # the default judge (gold) then has nothing to judge with: no win-rate, and a note says why
    report = json.loads(run_eval(cfg).read_text())
    assert report["policy"]["kl/k3_seq"] > 0
    assert all(json.loads(line)["kl_k3"] > 0 for line in open(report["samples_file"]))
    assert report["win_rate"] is None and "--gold" in report["win_rate_note"]
    assert "gold/mean" not in report["policy"]


def test_cli_eval(tmp_path, tiny_model_dir, prompts_file, capsys, monkeypatch):
    from rlcf.cli import main

    monkeypatch.delenv("RLCF_JUDGE_URL", raising=False)

    out = tmp_path / "cli" / "eval.json"
    rc = main(["eval", "--model", tiny_model_dir, "--reference", tiny_model_dir, "--prompts", prompts_file,
               "--max-prompts", "2", "--rollout.max-new-tokens", "4", "--gold", "helpers.vowel_reward:reward",
               "--judge.kind", "gold", "--output", str(out)])
    assert rc == 0 and json.loads(out.read_text())["win_rate"]["n"] == 2
    assert f"Done: {out}" in capsys.readouterr().out
    assert main(["eval", "--model", tiny_model_dir, "--prompts", prompts_file, "--judge.kind", "llm",
                 "--output", str(out)]) == 2  # no endpoint configured: a clean error, before any model loads


def test_run_eval_rejects_bad_settings(tmp_path, tiny_model_dir, prompts_file):
    with pytest.raises(ValueError, match="temperature"):
        run_eval(EvalConfig(model=tiny_model_dir, reference=tiny_model_dir, prompts=prompts_file,
                            rollout=RolloutConfig(temperature=0.0), output=str(tmp_path / "e.json")))
    with pytest.raises(ValueError, match="judge.kind=reward needs a reward"):
        run_eval(EvalConfig(model=tiny_model_dir, reference=tiny_model_dir, prompts=prompts_file,
                            judge=JudgeConfig(kind="reward"), output=str(tmp_path / "e.json")))
