"""FSDP2 through accelerate, on two CPU processes (gloo): configs/accelerate/fsdp_cpu_2proc.yaml, the settings and the
code path of the GPU config. A sharded run matches one process with the same global batch (P3O and PPO with a
critic; the copy, top_blocks and lora references), resumes exactly from a sharded checkpoint (also on another number
of processes), samples the tokens an unsharded run samples, gathers the policy once per rollout, and exports plain
full tensors (the final model, the weights a sampling engine is given)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.common import read_metrics
from safetensors.torch import load_file
from test_multiprocess import TESTS, _config, _free_port, _launch

FSDP = "fsdp_cpu_2proc.yaml"
KEYS = ("reward/mean", "reward/scaled_mean", "kl/k1_seq", "policy/grad_norm", "response/length_mean")


def _weights(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def _assert_same_run(one: Path, two: Path, keys=KEYS, atol=2e-5) -> None:
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in keys:
            assert y[key] == pytest.approx(x[key], abs=1e-5, rel=1e-4), (x["step"], key)
    assert a[-1]["kl/k1_seq"] != 0  # the runs moved the policy, so matching weights mean something
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()  # a plain folder: a tied head once, a LoRA adapter merged away
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=atol, rtol=1e-4)


def test_sharded_run_matches_one_process_resumes_exactly_and_on_other_process_counts(tiny_model_dir, tmp_path):
    _launch(_config(tiny_model_dir, tmp_path / "one", 8, 3), tmp_path, "one", processes=1)
    # two sharded processes x 4 prompts, stopped after step 2; then resumed to step 3 sharded, and (a copy) in one
    _launch(_config(tiny_model_dir, tmp_path / "two", 4, 2, save_every=1), tmp_path, "two_a", accelerate_config=FSDP)
    shutil.copytree(tmp_path / "two", tmp_path / "solo")
    pushed = tmp_path / "pushed.safetensors"
    proc = _launch(_config(tiny_model_dir, tmp_path / "two", 4, 3, save_every=1), tmp_path, "two_b",
                   accelerate_config=FSDP, env={"RLCF_TEST_PUSHED": str(pushed)})
    assert "resumed from" in proc.stdout + proc.stderr
    assert all(r["perf/processes"] == 2 for r in read_metrics(tmp_path / "two"))
    _assert_same_run(tmp_path / "one", tmp_path / "two")

    # the weights a sampling engine took after the last update: the whole model, plain tensors, as saved
    final = _weights(tmp_path / "two")
    got = load_file(str(pushed))
    assert set(final) <= set(got)
    for name in final:
        torch.testing.assert_close(got[name], final[name], atol=0, rtol=0)
    # the optimiser state is kept whole and by name, not as this process's shard
    optim = torch.load(tmp_path / "two" / "checkpoints" / "step_000002" / "optim.pt", weights_only=True)["optimizer"]
    assert all(isinstance(n, str) for n in optim["param_groups"][0]["params"])
    embed = next(n for n in optim["state"] if n.endswith("embed_tokens.weight"))
    assert optim["state"][embed]["exp_avg"].shape == final["model.embed_tokens.weight"].shape

    # so the sharded checkpoint resumes in one process too (prompts_per_step is per process: 2 x 4 becomes 1 x 8,
    # the same global batch, which --force-resume accepts)
    cfg = _config(tiny_model_dir, tmp_path / "solo", 8, 3, save_every=1)
    cfg.force_resume = True
    proc = _launch(cfg, tmp_path, "solo", processes=1)
    assert "resumed from" in proc.stdout + proc.stderr
    _assert_same_run(tmp_path / "one", tmp_path / "solo")


@pytest.mark.parametrize("over,atol", [
    # Adam's first steps at lr 1e-2 magnify the rounding of the all-reduced whitening statistics to ~3e-5
    ({"algo": "ppo", "model.critic": "separate"}, 1e-4),
    ({"model.reference": "top_blocks", "model.trainable_blocks": 1}, 2e-5),
    ({"model.reference": "lora"}, 2e-5),
], ids=["ppo-critic", "p3o-top_blocks", "p3o-lora"])
def test_sharded_run_matches_one_process(tiny_model_dir, tmp_path, over, atol):
    """PPO: the advantages are whitened over both processes' rows and its token-mean loss weighted by each process's
    share of the tokens, as one process computes them. top_blocks: only the blocks that train are sharded units of
    their own, the frozen trunk is sharded with them. lora: the adapters train sharded; the final model is merged from
    the gathered tensors (checked here against peft's own merge in the one-process run)."""
    def config(out, prompts):
        cfg = _config(tiny_model_dir, out, prompts, 3)
        for key, value in over.items():
            section, _, field = key.rpartition(".")
            setattr(getattr(cfg, section) if section else cfg, field, value)
        return cfg

    _launch(config(tmp_path / "one", 8), tmp_path, "one", processes=1)
    _launch(config(tmp_path / "two", 4), tmp_path, "two", accelerate_config=FSDP)
    _assert_same_run(tmp_path / "one", tmp_path / "two", atol=atol)


def test_sharded_and_unsharded_runs_sample_the_same_tokens(tiny_model_dir, tmp_path):
    """rlcf's own decode loop on the sharded policy (gathered once per rollout) against the same two processes
    unsharded (DDP), at the same seed: the held-out samples written at step 3 are the same text."""
    runs = {}
    for name, accelerate_config in (("ddp", "cpu_2proc.yaml"), ("fsdp", FSDP)):
        cfg = _config(tiny_model_dir, tmp_path / name, 4, 3)
        cfg.rollout.max_new_tokens, cfg.eval_every, cfg.eval_max_prompts = 12, 3, 8
        _launch(cfg, tmp_path, name, accelerate_config=accelerate_config, hf=True)
        runs[name] = [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
    assert len(runs["ddp"]) >= 4 and runs["fsdp"] == runs["ddp"]
    _assert_same_run(tmp_path / "ddp", tmp_path / "fsdp")


def test_sampling_gathers_the_sharded_policy_once_per_rollout(tiny_model_dir, tmp_path):
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(TESTS.parent / "configs" / "accelerate" / FSDP), "--main_process_port",
                           str(_free_port()), str(TESTS / "helpers" / "fsdp_probe.py"), tiny_model_dir, str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    got = json.loads(out.read_text())
    # the launch shards: a block's weight is a DTensor split by rows over the two processes
    assert got["sharded"] and got["is_dtensor"] and got["placements"] == ["S(0)"]
    assert got["local_rows"] * 2 == got["rows"]
    # the policy's units (its 3 blocks and the rest) are gathered once for all 8 tokens, not once per token
    assert got["units"] == 4 and got["new_tokens"] == 8
    assert got["all_gathers_gathered"] == got["units"]
    assert got["all_gathers_per_token"] == got["units"] * got["new_tokens"]
    assert got["same_tokens"]
    # every process gets the whole model as plain tensors (each feeds its own sampling engine)
    assert got["full_plain"] and got["full_rows"] == got["rows"]
    assert got["full_sums"][0] == got["full_sums"][1]


def test_a_deepspeed_launch_is_refused_before_anything_loads(monkeypatch):
    """accelerate takes DeepSpeed only on a GPU (on CPU processes it silently trains plain DDP instead), and a ZeRO
    optimiser's partitioned state is not what rlcf's checkpoints hold: the launch is refused, pointing to FSDP2."""
    from rlcf.errors import ConfigError
    from rlcf.train.accel import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="distributed_type: DEEPSPEED.*configs/accelerate/fsdp.yaml"):
        make_accelerator()


@pytest.mark.parametrize("kind", ["sft", "dpo", "rm"])
def test_supervised_stages_run_sharded_as_unsharded(tiny_model_dir, tmp_path, kind):
    """The supervised loop on the same scaffold: sharded (FSDP2) and unsharded (DDP) two-process runs log the same
    metrics and write the same plain folder (DPO: its frozen reference a unit of its own; the final model gathered)."""
    from helpers.common import write_jsonl
    from test_dpo import pairs
    from test_sft import mapping_rows

    data = write_jsonl(tmp_path / "data.jsonl", mapping_rows() if kind == "sft" else pairs(32, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    for name, accelerate_config in (("ddp", "cpu_2proc.yaml"), ("fsdp", FSDP)):
        proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                               str(TESTS.parent / "configs" / "accelerate" / accelerate_config), "--main_process_port",
                               str(_free_port()), str(TESTS / "helpers" / "stage_run.py"), kind, tiny_model_dir,
                               str(data), str(tmp_path / name)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-5000:]
    a, b = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "fsdp")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) > 2
    for x, y in zip(a, b):
        for key in x:
            if key.startswith(("loss/", "eval/", "reward/")):
                assert y[key] == pytest.approx(x[key], abs=1e-5, rel=1e-4), (x["step"], key)
    first = next(k for k in a[-1] if k.startswith("loss/"))
    assert a[-1][first] != a[1][first]  # it trained
    w1, w2 = _weights(tmp_path / "ddp"), _weights(tmp_path / "fsdp")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=2e-5, rtol=1e-4)
