"""The one training loop: every algorithm must actually learn on a tiny model; resume is exact;
the saved model loads in plain transformers; bad input fails early with a clear message."""

from __future__ import annotations

import json

import pytest
import torch

from rlcf.config import TrainConfig
from rlcf.data import DataError
from rlcf.trainer import train
from helpers.common import override, read_metrics


def tiny_config(model_dir, out, algo="p3o", steps=30, **over) -> TrainConfig:
    cfg = TrainConfig(algo=algo, prompts="demo", steps=steps, output_dir=str(out), progress=False, save_every=0)
    cfg.model.name_or_path = model_dir
    cfg.reward.function = "helpers.vowel_reward:reward"
    cfg.rollout.max_new_tokens = 8
    cfg.rollout.prompts_per_step = 16
    cfg.optim.lr = 3e-3
    return override(cfg, **over)


def mean(xs):
    return sum(xs) / len(xs)


# (algo, overrides, margin): the vowel share of a random tiny model is about 0.35; margins are what a
# learner must clear between the mean reward of the first 5 and of the last 5 of 30 steps.
LEARNERS = [
    ("p3o", {"p3o.variant": "v1"}, 0.25),
    ("p3o", {"p3o.variant": "v2"}, 0.25),
    ("p3o", {"rollout.group_size": 4, "rollout.prompts_per_step": 8, "p3o.reduction": "tokens"}, 0.2),
    ("ppo", {"model.critic": "separate"}, 0.25),
    ("ppo", {"model.critic": "value_head"}, 0.25),
    ("rloo", {"rollout.group_size": 4, "rollout.prompts_per_step": 8}, 0.25),
    ("apa", {"model.critic": "separate"}, 0.25),
    ("awr", {"model.critic": "value_head"}, 0.25),
    ("grpo", {"rollout.group_size": 4, "rollout.prompts_per_step": 8, "optim.lr": 5e-3}, 0.15),
]


@pytest.mark.parametrize("algo,over,margin", LEARNERS, ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_algorithm_raises_the_reward(tiny_model_dir, tmp_path, algo, over, margin):
    train(tiny_config(tiny_model_dir, tmp_path, algo, **over))
    rows = read_metrics(tmp_path)
    rewards = [r["reward/mean"] for r in rows]
    assert len(rows) == 30
    assert mean(rewards[-5:]) > mean(rewards[:5]) + margin, rewards
    kl_key = "kl/k3_seq" if algo == "grpo" else "kl/k1_seq"
    assert rows[0][kl_key] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the first rollout
    assert rows[-1][kl_key] > 0.05  # learning moved it away


def test_metrics_file_has_the_promised_keys_and_gold(tiny_model_dir, tmp_path):
    train(tiny_config(tiny_model_dir, tmp_path, "ppo", steps=2, **{"reward.gold": "helpers.vowel_reward:reward"}))
    rows = read_metrics(tmp_path)
    for key in ("step", "reward/mean", "reward/std", "kl/k1_seq", "kl/k3_seq", "loss/policy", "loss/value",
                "policy/clipfrac", "perf/step_s", "perf/samples_per_s", "gold/mean", "kl/coef"):
        assert key in rows[-1], key
    # the gold scorer here is the reward itself, so their means agree
    assert rows[-1]["gold/mean"] == pytest.approx(rows[-1]["reward/mean"], abs=1e-6)
    # PPO's adaptive controller: KL 0 at step 1 is under the target 6, so beta shrinks by the clipped
    # error 0.2 times n_samples / horizon = 32 / 10000
    assert rows[0]["kl/coef"] == pytest.approx(0.05)
    assert rows[1]["kl/coef"] == pytest.approx(0.05 * (1 - 0.2 * 32 / 10000), rel=1e-9)


def test_resume_repeats_the_uninterrupted_run(tiny_model_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(tiny_model_dir, straight, "ppo", steps=4))
    train(tiny_config(tiny_model_dir, split, "ppo", steps=2))  # "killed" after step 2's checkpoint
    assert (split / "checkpoints" / "step_000002" / "trainable.safetensors").exists()
    train(tiny_config(tiny_model_dir, split, "ppo", steps=4))
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("reward/mean", "kl/k1_seq", "loss/policy", "loss/value", "kl/coef"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["step"], key)


def test_final_model_is_safetensors_and_loads_in_plain_transformers(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    for mode in ("copy", "lora"):
        out = tmp_path / mode
        final = train(tiny_config(tiny_model_dir, out, "p3o", steps=2, **{"model.reference": mode, "optim.lr": 1e-2}))
        assert (final / "model.safetensors").exists() and not list(final.glob("*.bin"))
        loaded = AutoModelForCausalLM.from_pretrained(final)
        initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        trained = load_file(final / "model.safetensors")
        name = "model.layers.0.self_attn.q_proj.weight"
        torch.testing.assert_close(loaded.state_dict()[name], trained[name])
        assert (loaded.state_dict()[name] - initial.state_dict()[name]).abs().max() > 0, mode


def _prompts(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("rows,column,message", [
    ([{"text": "hi"}], "prompt", r"p\.jsonl: no 'prompt' column \(found: text\)"),
    ([{"prompt": "fine"}, {"prompt": "  "}], "prompt", r"p\.jsonl, row 2, field 'prompt': empty prompt"),
    ([{"prompt": "fine"}, {"prompt": 3}], "prompt", r"row 2, field 'prompt': expected a string"),
    ([{"prompt": "word " * 400}], "prompt", r"row 1: prompt is \d+ tokens, over the limit of 256"),
])
def test_bad_prompt_data_is_named(tiny_model_dir, tmp_path, rows, column, message):
    cfg = tiny_config(tiny_model_dir, tmp_path / "out", steps=1, prompts=_prompts(tmp_path, rows), prompt_column=column)
    with pytest.raises(DataError, match=message):
        train(cfg)


def test_empty_dataset_is_an_error(tiny_model_dir, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        train(tiny_config(tiny_model_dir, tmp_path / "out", steps=1, prompts=str(path)))


def test_reward_returning_wrong_count_or_nan_is_named(tiny_model_dir, tmp_path):
    for fn, message in (("wrong_count", r"returned 31 values for 32 responses"), ("nan_reward", r"row 0.*finite")):
        cfg = tiny_config(tiny_model_dir, tmp_path / fn, steps=1, **{"reward.function": f"helpers.vowel_reward:{fn}"})
        with pytest.raises(ValueError, match=message):
            train(cfg)


def test_unknown_algorithm_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--algo: expected one of 'p3o', 'ppo', 'rloo', 'grpo', 'gspo', 'apa', 'awr', 'ilql', got 'dqn'"):
        train(tiny_config(tiny_model_dir, tmp_path, "dqn", steps=1))
    assert not tmp_path.joinpath("config.yaml").exists()  # checked before anything is written


def test_clip_fraction_is_logged_per_epoch(tiny_model_dir, tmp_path):
    """Several epochs over one minibatch: the first epoch's ratio is exactly 1 (pi_old is the policy it starts from), so
    nothing is clipped there; the later epochs, after large updates, clip; the step's clipfrac is their mean."""
    train(tiny_config(tiny_model_dir, tmp_path / "out", "p3o", steps=3, **{
        "optim.epochs": 3, "optim.minibatch_prompts": 16, "optim.lr": 3e-2, "p3o.variant": "v2"}))
    rows = read_metrics(tmp_path / "out")
    for r in rows:
        per_epoch = [r[f"policy/clipfrac_epoch{e}"] for e in (1, 2, 3)]
        assert per_epoch[0] == 0.0
        assert sum(per_epoch) / 3 == pytest.approx(r["policy/clipfrac"], abs=1e-6)
    assert max(r["policy/clipfrac_epoch3"] for r in rows) > 0
