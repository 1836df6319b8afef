"""A run survives what clusters and users do to it: a stop signal, a refused config mismatch, non-finite numbers,
a damaged newest checkpoint, a torn metrics line."""

from __future__ import annotations

import json
import signal

import pytest
import torch
import yaml
from helpers import vowel_reward
from helpers.common import read_metrics
from test_trainer import tiny_config

from rlcf.train.safety import NonFiniteError, RunStopped
from rlcf.trainer import train
from rlcf.validate import ConfigError


def _trained_weight(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")["model.layers.2.mlp.down_proj.weight"]


def test_mismatch_is_refused_overwrite_moves_aside_force_resume_mixes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, out, steps=2, save_every=1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"p3o.beta: 0.05 -> 0.2.*--overwrite.*--force-resume"):
        train(tiny_config(tiny_model_dir, out, steps=3, **{"p3o.beta": 0.2}))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    with pytest.raises(ConfigError, match="--resume is off"):
        train(tiny_config(tiny_model_dir, out, steps=3, resume=False))
    # the same settings with more steps resume: step 3 is appended to the earlier two
    train(tiny_config(tiny_model_dir, out, steps=3))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    # forced: resumes from step 3, and config.yaml now holds the new settings
    train(tiny_config(tiny_model_dir, out, steps=4, force_resume=True, **{"p3o.beta": 0.2}))
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert yaml.safe_load((out / "config.yaml").read_text())["p3o"]["beta"] == 0.2
    # the forced resume trains with the new, fixed beta: the checkpoint does not bring back the old one
    assert [r["kl/coef"] for r in read_metrics(out)] == [0.05, 0.05, 0.05, 0.2]
    # overwrite: the earlier run moves aside whole, the new one starts at step 1
    train(tiny_config(tiny_model_dir, out, steps=1, overwrite=True))
    aside = list(tmp_path.glob("run.old-*"))
    assert len(aside) == 1 and [r["step"] for r in read_metrics(aside[0])] == [1, 2, 3, 4]
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_nonfinite_reward_skips_the_update_and_stops_after_the_limit(tiny_model_dir, tmp_path, monkeypatch):
    """A reward model (or server) answering NaN, e.g. a half-precision overflow: no update, no statistics taken.
    (A reward function returning NaN is an error at once, naming the row: see test_bad_inputs_rewards_judges.)"""
    from rlcf.rewards import RewardSource

    monkeypatch.setattr(RewardSource, "__call__", lambda self, p, r: torch.full((len(r),), float("nan")))
    out = tmp_path / "nan"
    final = train(tiny_config(tiny_model_dir, out, steps=2))  # two bad steps in a row, under the limit of 3: the run ends, having learnt nothing
    rows = read_metrics(out)
    assert [r.get("optim/skipped") for r in rows] == [1.0, 1.0] and rows[0]["reward/nonfinite"] == 16 * 2
    from safetensors.torch import load_file

    initial = load_file(f"{tiny_model_dir}/model.safetensors")["model.layers.2.mlp.down_proj.weight"]
    torch.testing.assert_close(_trained_weight(final), initial, rtol=0, atol=0)
    with pytest.raises(NonFiniteError, match=r"3 optimiser steps in a row.*--optim.max-nonfinite-steps"):
        train(tiny_config(tiny_model_dir, tmp_path / "nan3", steps=5))
    assert [r["step"] for r in read_metrics(tmp_path / "nan3")] == [1, 2]


def test_nonfinite_loss_skips_only_that_update(tiny_model_dir, tmp_path, monkeypatch):
    import rlcf.trainer as trainer

    real = trainer.get_algorithm
    calls = {"n": 0}

    def poisoned(name):
        algo = real(name)

        class Wrapped:
            def __getattr__(self, key):
                return getattr(algo, key)

            def loss(self, batch, cfg):
                loss, m = algo.loss(batch, cfg)
                calls["n"] += 1
                return (loss * float("nan") if calls["n"] == 1 else loss), m

        return Wrapped()

    monkeypatch.setattr(trainer, "get_algorithm", poisoned)
    out = tmp_path / "poison"
    final = train(tiny_config(tiny_model_dir, out, steps=2, **{"optim.epochs": 1}))
    rows = read_metrics(out)
    assert [r["optim/skipped_updates"] for r in rows] == [1, 0]  # the poisoned minibatch only
    assert torch.isfinite(_trained_weight(final)).all()


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_resumes(tiny_model_dir, tmp_path, capsys):
    from rlcf.cli import main

    out = tmp_path / "preempted"
    vowel_reward.CALLS.update(n=0, signal_at=2)  # SIGTERM arrives during step 2's scoring
    cfg = tiny_config(tiny_model_dir, out, steps=5, **{"reward.function": "helpers.vowel_reward:signal_on_second_call"})
    with pytest.raises(RunStopped, match=r"SIGTERM after step 2.*checkpoints.*resume") as stop:
        train(cfg)
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())["step"] == 2
    # the same command resumes at step 3 (the CLI exits 143 on the stop, 0 now)
    vowel_reward.CALLS.update(n=0, signal_at=-1)
    argv = ["train", "--algo", "p3o", "--prompts", "demo", "--steps", "5", "--output-dir", str(out), "--no-progress",
            "--save-every", "0", "--model.name-or-path", tiny_model_dir, "--reward.function",
            "helpers.vowel_reward:signal_on_second_call", "--rollout.max-new-tokens", "8", "--optim.lr", "3e-3"]
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]


def test_cli_reports_a_stop_signal_with_its_exit_code(tiny_model_dir, tmp_path, capsys):
    from rlcf.cli import main

    vowel_reward.CALLS.update(n=0, signal_at=1)
    argv = ["train", "--steps", "3", "--output-dir", str(tmp_path / "o"), "--no-progress", "--model.name-or-path",
            tiny_model_dir, "--reward.function", "helpers.vowel_reward:signal_on_second_call",
            "--rollout.max-new-tokens", "4"]
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 1" in err and "Traceback" not in err
    assert (tmp_path / "o" / "checkpoints" / "step_000001").exists()


def test_damaged_newest_checkpoint_falls_back_and_torn_metrics_line_is_dropped(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "damaged"
    train(tiny_config(tiny_model_dir, out, steps=4, save_every=2))
    newest = out / "checkpoints" / "step_000004" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "reward/me')  # a crash while writing
    train(tiny_config(tiny_model_dir, out, steps=4, save_every=2))
    err = capsys.readouterr().err
    assert "step_000004" in err and "damaged" in err
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_reward_model_nan_passes_to_the_guard_a_function_nan_is_an_error():
    from rlcf.rewards import RewardError, check_scores

    nan = [0.5, float("nan")]
    with pytest.raises(RewardError, match="row 1"):
        check_scores(nan, ["p", "q"], ["a", "b"], "mod:fn", "reward function")
    out = check_scores(nan, ["p", "q"], ["a", "b"], "rm/final", "reward model", finite=False)
    assert out[0] == 0.5 and torch.isnan(out[1])


def test_supervised_stage_skips_a_nonfinite_step_and_stops_on_a_signal(tiny_model_dir, tmp_path, monkeypatch):
    """The supervised loop (sft, rm, dpo) has the same guards: a NaN loss skips that optimiser step; a SIGTERM
    ends the run after the step with a checkpoint, and the same config resumes to the end."""
    import os

    import rlcf.sft as sft
    from helpers.common import write_jsonl
    from test_sft import mapping_rows, sft_config

    real, calls = sft.sft_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # during step 2: it finishes, then the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return (loss * float("nan") if calls["n"] == 1 else loss), m

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    data = write_jsonl(tmp_path / "sft.jsonl", mapping_rows())
    out = tmp_path / "sft"
    cfg = sft_config(tiny_model_dir, data, out, **{"data.eval_fraction": 0.0, "optim.minibatch_prompts": 100,
                                                   "optim.epochs": 3})  # one step an epoch
    with pytest.raises(RunStopped, match="after step 2"):
        sft.run_sft(cfg)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["optim/skipped"] == 1.0 and "optim/skipped" not in rows[1]
    assert (out / "checkpoints" / "step_000002" / "manifest.json").exists()
    monkeypatch.setattr(sft, "sft_loss", real)
    sft.run_sft(cfg)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert (out / "final" / "model.safetensors").exists()
