"""`rlcf label`: pairs sampled from a policy, judged by a scorer with optional Bradley-Terry noise."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers.vowel_reward import reward as vowel_reward
from rlcf.cli import main
from rlcf.config import LabelConfig
from rlcf.label import bradley_terry_choice, run_label


def test_noiseless_judge_prefers_the_higher_score_and_marks_ties():
    s1, s2 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 0.3, 2.0])
    assert bradley_terry_choice(s1, s2, 0.0, torch.Generator()).tolist() == [1.0, 0.0, 0.5]


def test_noisy_judge_follows_the_bradley_terry_probability():
    n, gap, temperature = 200_000, 1.0, 2.0
    s1, s2 = torch.full((n,), gap), torch.zeros(n)
    freq = float(bradley_terry_choice(s1, s2, temperature, torch.Generator().manual_seed(0)).mean())
    expected = 1 / (1 + math.exp(-gap / temperature))  # 0.6225
    assert freq == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))
    with pytest.raises(ValueError, match="noise_temperature=-1"):
        bradley_terry_choice(s1, s2, -1.0, torch.Generator())


def label_config(model_dir, prompts_file, out, **kw) -> LabelConfig:
    cfg = LabelConfig(prompts=prompts_file, output=str(out), **{"judge": "helpers.vowel_reward:reward", **kw})
    cfg.model.name_or_path = model_dir
    cfg.rollout.max_new_tokens = 8
    return cfg


def test_label_writes_pairs_the_judge_agrees_with(tiny_model_dir, prompts_file, tmp_path):
    out = run_label(label_config(tiny_model_dir, prompts_file, tmp_path / "pairs.jsonl", drop_ties=False))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert len(rows) + summary["empty_dropped"] == 8  # one pair per prompt, ties kept, empty responses left out
    for r in rows:
        assert r["chosen"].strip() and r["rejected"].strip()  # rows `rlcf rm` and `rlcf dpo` accept
        assert set(r) >= {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
        # the scores stored are the judge's own scores of the stored texts, and the chosen one is not worse
        assert vowel_reward(None, [r["chosen"], r["rejected"]]) == pytest.approx([r["chosen_score"], r["rejected_score"]])
        assert r["chosen_score"] >= r["rejected_score"]
    assert summary["pairs"] == len(rows) and summary["agreement_with_scores"] == 1.0


def test_judged_pairs_all_and_best_worst():
    from rlcf.label import judged_pairs

    scores, keep = torch.tensor([0.3, 0.9, -0.2, 0.5]), torch.tensor([True, True, True, False])
    a, b = judged_pairs(scores, keep, "all")
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (1, 2)]  # sample 3 (empty) is never paired
    a, b = judged_pairs(scores, keep, "best_worst")
    assert (a.tolist(), b.tolist()) == ([1], [2])
    assert judged_pairs(scores, torch.tensor([False, True, False, False]), "all")[0].numel() == 0


def test_label_k4_keeps_every_judged_pair_or_best_against_worst(tiny_model_dir, prompts_file, tmp_path):
    """K = 4: up to 6 pairs per prompt from 4 distinct samples; best_worst keeps, per prompt, the pair of the
    same samples with the largest score gap."""
    from collections import defaultdict

    def run(mode):
        cfg = label_config(tiny_model_dir, prompts_file, tmp_path / f"{mode}.jsonl", pairs=mode, drop_ties=False)
        cfg.rollout.group_size = 4
        out = run_label(cfg)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        return rows, json.loads(out.with_suffix(".summary.json").read_text())

    rows, summary = run("all")
    by_prompt = defaultdict(list)
    for r in rows:
        assert r["chosen_score"] >= r["rejected_score"]
        by_prompt[r["prompt"]].append(r)
    assert len(rows) + summary["empty_dropped"] == 6 * summary["prompts"]
    assert max(len(v) for v in by_prompt.values()) == 6
    for v in by_prompt.values():
        assert len({t for r in v for t in (r["chosen"], r["rejected"])}) <= 4
    best, summary_bw = run("best_worst")
    assert summary_bw["pairs"] == len(best) and len(best) <= summary["prompts"]
    for r in best:  # same seed, same samples: the widest of that prompt's judged pairs
        widest = max(x["chosen_score"] - x["rejected_score"] for x in by_prompt[r["prompt"]])
        assert r["chosen_score"] - r["rejected_score"] == pytest.approx(widest)


def test_label_noise_flips_some_close_calls(tiny_model_dir, prompts_file, tmp_path):
    cfg = label_config(tiny_model_dir, prompts_file, tmp_path / "pairs.jsonl", noise_temperature=10.0)
    cfg.max_prompts = None
    rows = [json.loads(line) for line in run_label(cfg).read_text().splitlines()]
    # with T = 10 and score gaps under 1, P(the lower score wins) >= 0.47 per pair: 8 pairs all agreeing has
    # probability under 0.53^8 = 0.6%, and the generator is seeded
    assert any(r["chosen_score"] < r["rejected_score"] for r in rows)


def test_label_cli_and_bad_judge(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    rc = main(["label", "--model.name-or-path", tiny_model_dir, "--prompts", prompts_file, "--judge",
               "helpers.vowel_reward:reward", "--output", str(out), "--rollout.max-new-tokens", "6", "--max-prompts", "3"])
    assert rc == 0 and len(out.read_text().splitlines()) <= 3
    rc = main(["label", "--model.name-or-path", tiny_model_dir, "--prompts", prompts_file, "--judge", "nope.module:f",
               "--output", str(out)])
    assert rc == 2 and "cannot import module 'nope.module'" in capsys.readouterr().err


def test_label_with_a_reward_model_judge(tiny_model_dir, prompts_file, tmp_path):
    """--judge-model: the pairs are judged by an HF reward model; its stored scores are its own scores."""
    from rlcf.config import PairDataConfig, RMConfig
    from rlcf.rewards import RewardSource
    from rlcf.rm import run_rm

    pairs = [{"prompt": "say something", "chosen": "aeiou aeiou", "rejected": "rhythm myth"}] * 8
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rm = run_rm(RMConfig(model=tiny_model_dir, data=PairDataConfig(path=str(data), eval_fraction=0.0),
                         output_dir=str(tmp_path / "rm"), progress=False, save_every=0))
    cfg = label_config(tiny_model_dir, prompts_file, tmp_path / "labelled.jsonl", judge=None, judge_model=str(rm),
                       drop_ties=False)
    rows = [json.loads(line) for line in run_label(cfg).read_text().splitlines()]
    scorer = RewardSource(model=str(rm))
    for r in rows:
        got = scorer([r["prompt"]] * 2, [r["chosen"], r["rejected"]]).tolist()
        assert got == pytest.approx([r["chosen_score"], r["rejected_score"]], abs=1e-4)
        assert r["chosen_score"] >= r["rejected_score"]

