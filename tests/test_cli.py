"""The command line end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

TESTS = Path(__file__).parent


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rlcf.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_train_help_lists_every_option_with_default():
    res = run_cli("train", "--help")
    assert res.returncode == 0, res.stderr
    for flag in ("--algo", "--p3o.beta", "--p3o.variant", "--ppo.kl-target", "--rollout.group-size",
                 "--model.reference", "--reward.scaling", "--optim.lr"):
        assert flag in res.stdout, flag
    assert "Algorithm (ilql: offline only). (default: p3o)" in res.stdout  # defaults are shown
    assert "KL coefficient in the sequence reward" in res.stdout  # the field's doc line


def test_train_end_to_end_from_yaml_with_overrides(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = {
        "algo": "ppo", "steps": 3, "output_dir": str(out), "progress": False,
        "model": {"name_or_path": tiny_model_dir},
        "reward": {"function": "helpers.vowel_reward:reward", "gold": "helpers.vowel_reward:reward"},
        "rollout": {"max_new_tokens": 6, "prompts_per_step": 4},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    res = run_cli("train", "--config", str(path), "--algo", "p3o", "--p3o.beta", "0.2", "--steps", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert str(out.resolve()) in res.stdout  # ends by saying where its outputs are
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["algo"] == "p3o" and resolved["p3o"]["beta"] == 0.2 and resolved["steps"] == 2
    assert resolved["rollout"]["max_new_tokens"] == 6  # from the file
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"reward/mean", "reward/std", "kl/k1_seq", "loss/policy", "policy/clipfrac", "perf/step_s",
            "perf/samples_per_s", "gold/mean"} <= set(rows[0])
    assert (out / "final" / "model.safetensors").exists()


def test_cli_errors_are_clear(tiny_model_dir, tmp_path):
    res = run_cli("train", "--algo", "dqn")
    assert res.returncode != 0 and "dqn" in res.stderr and "p3o" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("p3o:\n  betta: 0.1\n")
    res = run_cli("train", "--config", str(bad))
    assert res.returncode != 0 and "unknown field 'betta'" in res.stderr and "bad.yaml.p3o" in res.stderr
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "hi"}) + "\n")
    res = run_cli("train", "--prompts", str(prompts), "--model.name-or-path", tiny_model_dir, "--steps", "1",
                  "--output-dir", str(tmp_path / "o"), "--reward.function", "helpers.vowel_reward:reward")
    assert res.returncode == 2 and "no 'prompt' column (found: question)" in res.stderr
    res = run_cli("nonsense")
    assert res.returncode == 2 and "unknown command" in res.stderr
