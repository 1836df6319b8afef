"""Two CPU processes through `accelerate launch` (gloo): the same numbers as one process with the same global batch,
metrics gathered over ranks, only rank 0 writes, and checkpoint/resume across a restart."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.common import read_metrics
from safetensors.torch import load_file
from test_trainer import tiny_config

TESTS = Path(__file__).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg, tmp_path: Path, name: str, processes: int = 2, accelerate_config: str = "cpu_2proc.yaml",
            env: dict | None = None, hf: bool = False) -> subprocess.CompletedProcess:
    """helpers/fixed_backend.py on the CPU: through `accelerate launch` with a two-process config of
    configs/accelerate (gloo), or (processes=1) as a plain process. The GPU, where there is one, is hidden from both:
    the configs are for a machine without one. hf: sample with rlcf's own decode loop instead of the fixed backend."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    script = [str(TESTS / "helpers" / "fixed_backend.py"), str(path), *(["--hf"] if hf else [])]
    cmd = [sys.executable, *script] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(TESTS.parent / "configs" / "accelerate" / accelerate_config), "--main_process_port", str(_free_port()),
        *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _config(model_dir, out, prompts_per_step, steps, save_every=0):
    # P3O V2 with one epoch and one minibatch: the update's forward gives pi_old; running reward scaling
    # needs every process's scores, the reward mean all processes' samples
    return tiny_config(model_dir, out, "p3o", steps=steps, **{
        "rollout.prompts_per_step": prompts_per_step, "optim.minibatch_prompts": prompts_per_step,
        "optim.epochs": 1, "p3o.variant": "v2", "save_every": save_every, "optim.lr": 1e-2})


def test_two_processes_match_one_process_with_the_same_global_batch_and_resume(tiny_model_dir, tmp_path):
    _launch(_config(tiny_model_dir, tmp_path / "one", 8, 3), tmp_path, "one", processes=1)
    one = read_metrics(tmp_path / "one")

    # 2 processes x 4 prompts, stopped after step 2 (checkpoint), then resumed to step 3
    _launch(_config(tiny_model_dir, tmp_path / "two", 4, 2, save_every=1), tmp_path, "two_a")
    first = read_metrics(tmp_path / "two")
    assert [r["step"] for r in first] == [1, 2]  # rank 1 wrote nothing: one record per step
    assert all(r["perf/processes"] == 2 for r in first)
    proc = _launch(_config(tiny_model_dir, tmp_path / "two", 4, 3, save_every=1), tmp_path, "two_b")
    assert "resumed from" in proc.stdout + proc.stderr
    two = read_metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]

    for a, b in zip(one, two):
        # reward/mean is over all 16 samples of the step: rank 0's half alone would differ
        for key in ("reward/mean", "reward/scaled_mean", "kl/k1_seq", "loss/policy", "policy/grad_norm",
                    "response/length_mean"):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-4), (a["step"], key)
    assert one[-1]["kl/k1_seq"] > 1e-3  # the runs moved the policy, so matching weights mean something
    w1 = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=2e-5, rtol=1e-4)
    ckpts = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    rng = torch.load(tmp_path / "two" / "checkpoints" / "step_000003" / "optim.pt", weights_only=True)["torch_rng"]
    assert len(rng) == 2  # each process's RNG state is kept for its resume
