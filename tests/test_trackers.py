"""--report-to: every training command's per-step numbers reach the experiment trackers (TensorBoard here; it
works offline), beside metrics.jsonl, which stays the always-on record."""

from __future__ import annotations

import pytest
import test_dpo
import test_rm
import test_sft
from helpers.common import read_metrics, write_jsonl
from test_offline_rl import offline_config, write_offline_data
from test_trainer import tiny_config

from rlcf.dpo import run_dpo
from rlcf.rm import run_rm
from rlcf.sft import run_sft
from rlcf.trainer import train
from rlcf.validate import ConfigError, validate


def scalars(run_dir, name):
    """{tag: {step: value}} from the TensorBoard event files under RUN/rlcf-<name>/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / f"rlcf-{name}").rglob("events.out.tfevents.*"))
    assert files, f"no event files under {run_dir / f'rlcf-{name}'}"
    out = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def _check(run_dir, name, keys):
    got, rows = scalars(run_dir, name), read_metrics(run_dir)
    for key in keys:
        logged = {r["step"]: r[key] for r in rows if key in r}
        assert logged and set(logged) == set(got.get(key, {})), (key, sorted(got))
        for step, value in logged.items():
            assert got[key][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, step)


def test_every_training_command_reports_its_scalars_to_tensorboard(tiny_model_dir, tiny_model_dir_pad_eos, tmp_path):
    train(tiny_config(tiny_model_dir, tmp_path / "p3o", steps=2, report_to=("tensorboard",)))
    _check(tmp_path / "p3o", "p3o", ["reward/mean", "kl/k1_seq", "loss/policy"])

    data = tmp_path / "offline.jsonl"
    write_offline_data(data, n=32)
    cfg = offline_config(tiny_model_dir, data, tmp_path / "ilql", "ilql")
    cfg.optim.epochs, cfg.optim.minibatch_prompts, cfg.report_to = 1, 16, ("tensorboard",)
    train(cfg)
    _check(tmp_path / "ilql", "ilql", ["loss/total", "loss/q", "eval/total"])

    sft_data = write_jsonl(tmp_path / "sft.jsonl", test_sft.mapping_rows())
    run_sft(test_sft.sft_config(tiny_model_dir, sft_data, tmp_path / "sft", report_to=("tensorboard",)))
    _check(tmp_path / "sft", "sft", ["loss/nll", "eval/nll"])

    rm_data = write_jsonl(tmp_path / "rm.jsonl", test_rm.pairs(16, 0))
    run_rm(test_rm.rm_config(tiny_model_dir_pad_eos, rm_data, tmp_path / "rm", report_to=("tensorboard",),
                             **{"optim.epochs": 1}))
    _check(tmp_path / "rm", "rm", ["loss/reward_model", "eval/accuracy"])

    dpo_data = write_jsonl(tmp_path / "dpo.jsonl", test_dpo.pairs(16, 0))
    run_dpo(test_dpo.dpo_config(tiny_model_dir, dpo_data, tmp_path / "dpo", report_to=("tensorboard",)))
    _check(tmp_path / "dpo", "dpo", ["loss/dpo", "eval/accuracy"])


def test_a_missing_tracker_package_is_named_before_anything_loads(tiny_model_dir, tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--report-to wandb: not installed here; pip install wandb"):
        validate(tiny_config(tiny_model_dir, tmp_path / "w", steps=1, report_to=("tensorboard", "wandb")))
    assert validate(tiny_config(tiny_model_dir, tmp_path / "n", steps=1, report_to=("none",)))
