"""RL with rewards that read the row and with weighted components (each logged), evaluation during RL
(--eval-every: held-out metrics, samples.jsonl, a TensorBoard text table), and a model card after training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.common import read_metrics
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from test_trainer import mean, tiny_config

from rlcf.trainer import train

WORDS = ["describe the sea", "tell me about a cat", "write a note", "a rainy day", "the park", "good dog",
         "a sunny morning", "what is a mat", "the old mill", "a quiet road", "my friend", "the last bus"]


def letters_reward(prompts, responses, letters):
    """The share of a response's letters that are among its row's `letters` column (every row: the vowels)."""
    out = []
    for r, allowed in zip(responses, letters):
        chars = [c for c in r.lower() if c.isalpha()]
        out.append(sum(c in allowed for c in chars) / len(chars) if chars else 0.0)
    return out


def length_penalty(prompts, responses):
    return [-len(r) / 100 for r in responses]


def _prompts(path: Path, with_letters: bool = True) -> str:
    path.write_text("".join(json.dumps({"prompt": w} | ({"letters": "aeiou"} if with_letters else {})) + "\n"
                            for w in WORDS))
    return str(path)


def test_a_reward_reading_a_column_trains_the_tiny_model_upward(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"reward.function": f"{__name__}:letters_reward"})
    cfg.prompts = _prompts(tmp_path / "p.jsonl")
    train(cfg)
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path / "run")]
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.25, rewards


def test_weighted_rewards_log_each_component(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", steps=2, **{"reward.function": None})
    cfg.prompts = _prompts(tmp_path / "p.jsonl")
    cfg.reward.functions = (f"{__name__}:letters_reward", f"{__name__}:length_penalty")
    cfg.reward.weights = (1.0, 0.5)
    train(cfg)
    for row in read_metrics(tmp_path / "run"):
        combined = row["reward/letters_reward/mean"] + 0.5 * row["reward/length_penalty/mean"]
        assert row["reward/mean"] == pytest.approx(combined, abs=1e-5)
        assert row["reward/length_penalty/mean"] < 0


def test_eval_every_logs_held_out_metrics_samples_and_a_tensorboard_table(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, steps=3, eval_every=2, eval_samples=3, report_to=("tensorboard",),
                      **{"reward.gold": "helpers.vowel_reward:reward"})
    cfg.prompts = _prompts(tmp_path / "train.jsonl", with_letters=False)
    cfg.eval_prompts = _prompts(tmp_path / "held.jsonl", with_letters=False)
    final = train(cfg)
    rows = read_metrics(out)
    evaluated = [r["step"] for r in rows if "eval/reward_mean" in r]
    assert evaluated == [2, 3]  # every 2 steps, and after the last
    for r in rows:
        if r["step"] in evaluated:
            assert {"eval/gold_mean", "eval/kl_k1", "eval/kl_k3", "eval/length_mean", "perf/eval_s"} <= set(r)
            assert r["eval/prompts"] == len(WORDS) and r["eval/kl_k1"] >= -1e-4
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 2, 2, 3, 3, 3]
    assert {s["prompt"] for s in samples} <= set(WORDS) and all("gold" in s for s in samples)
    texts, scalars = [], set()
    for f in (out / "rlcf-p3o").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(f), size_guidance={"tensors": 0, "scalars": 0})
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
        texts += [e.tensor_proto.string_val[0] for t in events.Tags()["tensors"] if t.startswith("eval/samples")
                  for e in events.Tensors(t)]
    assert len(texts) == 2 and all(b"| prompt | response | reward | gold |" in t for t in texts)
    assert {"eval/reward_mean", "eval/kl_k1", "eval/gold_mean"} <= scalars
    card = ModelCard.load(final / "README.md")
    assert "rlcf" in card.data.tags and "p3o" in card.data.tags and "rlcf train --config" in card.text


def test_evaluating_changes_nothing_of_what_the_run_trains(tiny_model_dir, tmp_path):
    runs = {}
    for every in (0, 1):
        cfg = tiny_config(tiny_model_dir, tmp_path / f"every{every}", steps=3, eval_every=every)
        final = train(cfg)
        runs[every] = ([r["reward/mean"] for r in read_metrics(tmp_path / f"every{every}")],
                       load_file(final / "model.safetensors"))
    assert runs[0][0] == runs[1][0]
    for name, tensor in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], tensor, rtol=0, atol=0)


def test_eval_every_without_held_out_prompts_is_refused(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", steps=1, eval_every=1)
    cfg.prompts = _prompts(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="--eval-every needs held-out prompts: give --eval-prompts"):
        train(cfg)


def test_eval_every_with_offline_data_is_refused(tiny_model_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": w, "response": "a", "reward": 1.0}) + "\n" for w in WORDS))
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", "apa", steps=1, eval_every=1, offline_data=str(rows))
    with pytest.raises(ValueError, match="--eval-every samples the policy .* with --offline-data there is none"):
        train(cfg)
    assert not (tmp_path / "run").exists()
