"""Checkpoints that survive damage: a manifest of sizes and hashes, written last; resume skips a damaged newest
checkpoint (saying so) for the newest intact one; legacy checkpoints without a manifest still load when
intact; a killed writer's temporary folder is ignored and cleaned; metrics.jsonl loses its torn last line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from rlcf.train.checkpoint import (CHECKPOINTS, MANIFEST, latest_checkpoint, load_checkpoint, save_checkpoint,
                             truncate_metrics)


class OneProcess:
    """What save_checkpoint asks of an accelerate.Accelerator, for a single CPU process."""

    num_processes = 1
    is_main_process = True

    def unwrap_model(self, model):
        return model

    def get_state_dict(self, model):
        return model.state_dict()


def tiny():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model[1].weight.requires_grad_(False)  # a frozen tensor: never saved
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # so the optimiser has state to save
    return model, optimizer


def save(out: Path, *steps: int, keep: int = 5) -> list[Path]:
    model, optimizer = tiny()
    return [save_checkpoint(out, s, model, optimizer, OneProcess(), {"note": s}, keep=keep) for s in steps]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    [ckpt] = save(tmp_path, 3)
    manifest = json.loads((ckpt / MANIFEST).read_text())["files"]
    others = sorted(p.name for p in ckpt.iterdir() if p.name != MANIFEST)
    assert others == ["optim.pt", "trainable.safetensors", "trainer_state.json"]
    assert sorted(manifest) == others
    for name in others:
        assert manifest[name] == {"size": (ckpt / name).stat().st_size, "sha256": sha256(ckpt / name)}
    assert latest_checkpoint(tmp_path) == ckpt
    # and it loads back into a fresh model
    model, optimizer = tiny()
    assert load_checkpoint(ckpt, model, optimizer)["step"] == 3


def test_resume_restores_the_cpu_and_the_cuda_generator(tmp_path, monkeypatch):
    """On a GPU the responses are drawn from the CUDA generator: a resume that restored only the CPU one drew other
    samples than the uninterrupted run (found on an H100). The CUDA calls are stood in for here, on the CPU."""
    cuda_state = {"now": torch.tensor([7, 7, 7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state["now"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": cuda_state.update(now=state.clone()))
    torch.manual_seed(5)
    [ckpt] = save(tmp_path, 1)
    expected_cpu = torch.rand(4)  # what the uninterrupted run draws next
    cuda_state["now"] = torch.tensor([1, 2, 3], dtype=torch.uint8)  # the generators move on, the run is killed
    torch.rand(10)
    model, optimizer = tiny()
    load_checkpoint(ckpt, model, optimizer)
    assert torch.equal(cuda_state["now"], torch.tensor([7, 7, 7], dtype=torch.uint8))
    assert torch.equal(torch.rand(4), expected_cpu)
    # a checkpoint written on a CPU (or before the CUDA state was kept) leaves the CUDA generator alone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    [cpu_ckpt] = save(tmp_path / "cpu", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda_state["now"] = torch.tensor([9], dtype=torch.uint8)
    load_checkpoint(cpu_ckpt, *tiny())
    assert torch.equal(cuda_state["now"], torch.tensor([9], dtype=torch.uint8))


def test_truncated_newest_checkpoint_is_skipped_with_one_line(tmp_path, capsys):
    older, newer = save(tmp_path, 10, 20)
    weights = newer / "trainable.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size - 7])
    assert latest_checkpoint(tmp_path) == older
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == (f"rlcf: checkpoint {newer} is damaged (trainable.safetensors: size {size - 7} != {size}); "
                   "resuming from step_000010 instead\n")


def test_flipped_byte_with_the_same_size_is_caught_by_the_hash(tmp_path, capsys):
    older, newer = save(tmp_path, 10, 20)
    state = newer / "optim.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == older
    err = capsys.readouterr().err
    assert f"checkpoint {newer} is damaged (optim.pt: sha256 " in err


def test_no_intact_checkpoint_is_an_error_saying_how_to_start_afresh(tmp_path):
    for ckpt in save(tmp_path, 10, 20):
        (ckpt / "optim.pt").write_bytes(b"")
    root = tmp_path / CHECKPOINTS
    with pytest.raises(ValueError) as err:
        latest_checkpoint(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert f"no intact checkpoint in {root}" in message
    assert "step_000020: optim.pt: size 0 != " in message and "step_000010: optim.pt: size 0 != " in message
    assert f"delete {root} or use another --output-dir" in message


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / CHECKPOINTS).mkdir()
    assert latest_checkpoint(tmp_path) is None


def test_legacy_checkpoint_without_manifest(tmp_path, capsys):
    older, newer = save(tmp_path, 10, 20)
    for ckpt in (older, newer):
        (ckpt / MANIFEST).unlink()
    assert latest_checkpoint(tmp_path) == newer  # intact: accepted
    model, optimizer = tiny()
    assert load_checkpoint(newer, model, optimizer)["note"] == 20
    weights = newer / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    assert latest_checkpoint(tmp_path) == older  # truncated: the safetensors header no longer matches the file
    assert f"checkpoint {newer} is damaged (no {MANIFEST}, and trainable.safetensors: unreadable (" in \
        capsys.readouterr().err
    (older / "trainer_state.json").write_text('{"step": 1')
    with pytest.raises(ValueError, match="trainer_state.json: unreadable"):
        latest_checkpoint(tmp_path)


def test_leftover_temporary_folder_is_ignored_then_cleaned(tmp_path):
    [ckpt] = save(tmp_path, 10)
    root = tmp_path / CHECKPOINTS
    killed = root / ".step_000020-k1ll3d"  # what atomic_dir leaves when the process is killed mid-write
    shutil.copytree(ckpt, killed)
    (killed / "trainable.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == ckpt
    save(tmp_path, 20)
    assert sorted(p.name for p in root.iterdir()) == ["step_000010", "step_000020"]


def test_pruning_never_counts_or_keeps_damaged_checkpoints(tmp_path):
    # a run resumed from step 10 because 20 and 30 were damaged: its step-15 save must not be pruned away
    ckpts = save(tmp_path, 10, 20, 30)
    for ckpt in ckpts[1:]:
        (ckpt / "trainable.safetensors").write_bytes(b"")
    save(tmp_path, 15, keep=2)
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["step_000010", "step_000015"]
    save(tmp_path, 16, keep=2)
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["step_000015", "step_000016"]


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    # a run restarted without resuming over an older run's later checkpoints: those are not its own, so they
    # neither count towards `keep` nor make it delete what it just wrote (they are overwritten as it gets there)
    save(tmp_path, 20, 30)
    save(tmp_path, 5, keep=2)
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["step_000005", "step_000020",
                                                                          "step_000030"]


def test_load_checkpoint_names_an_unreadable_file(tmp_path):
    [ckpt] = save(tmp_path, 10)
    model, optimizer = tiny()
    (ckpt / "optim.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"checkpoint file {ckpt / 'optim.pt'} cannot be read"):
        load_checkpoint(ckpt, model, optimizer)
    (ckpt / "trainable.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=f"checkpoint file {ckpt / 'trainable.safetensors'} cannot be read"):
        load_checkpoint(ckpt, model, optimizer)


def test_truncate_metrics_drops_a_torn_line_and_later_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = [b'{"step": 0, "epoch": 0, "eval/loss": 1.5}\n',
            b'{"step": 1, "reward/mean": 0.1}\n',
            b'{"step":2,"reward/mean":  0.25, "text": "\\u00e9"}\n']
    later = [b'{"step": 3, "reward/mean": 0.3}\n']
    path.write_bytes(b"".join(kept + later) + b'{"step": 4, "reward/mean": "0.4')  # killed mid-write
    with pytest.raises(json.JSONDecodeError, match="Unterminated string"):  # what reading it used to do
        [json.loads(line) for line in path.read_text().splitlines()]
    assert truncate_metrics(path, 2) == 1
    assert path.read_bytes() == b"".join(kept)
    assert not list(tmp_path.glob(".metrics.jsonl-*"))  # no temporary file left behind
    assert truncate_metrics(path, 5) == 0 and path.read_bytes() == b"".join(kept)  # idempotent
    assert truncate_metrics(path, 0) == 0 and not path.exists()  # a fresh start redoes every step, step 0 too
    assert truncate_metrics(path, 3) == 0  # no file: nothing to do


def test_optimizer_state_is_saved_by_parameter_name_and_older_positional_checkpoints_still_load(tmp_path):
    """By name, so a checkpoint resumes whatever the run's split over processes (tests/test_fsdp.py); positional
    (what rlcf wrote before) still loads."""
    model, optimizer = tiny()
    [ckpt] = [save_checkpoint(tmp_path, 1, model, optimizer, OneProcess(), {})]
    saved = torch.load(ckpt / "optim.pt", weights_only=True)["optimizer"]
    assert saved["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.bias"]  # 1.weight is frozen
    assert torch.equal(saved["state"]["1.bias"]["exp_avg"], optimizer.state[model[1].bias]["exp_avg"])
    fresh_model, fresh = tiny()
    load_checkpoint(ckpt, fresh_model, fresh)
    assert torch.equal(fresh.state[fresh_model[0].weight]["exp_avg_sq"], optimizer.state[model[0].weight]["exp_avg_sq"])

    # an older checkpoint: the optimiser's own state_dict, keyed by position
    extra = torch.load(ckpt / "optim.pt", weights_only=True)
    extra["optimizer"] = optimizer.state_dict()
    torch.save(extra, ckpt / "optim.pt")
    (ckpt / MANIFEST).unlink()  # as old as before manifests
    old_model, old = tiny()
    load_checkpoint(ckpt, old_model, old)
    assert torch.equal(old.state[old_model[1].bias]["exp_avg"], optimizer.state[model[1].bias]["exp_avg"])

    # a name this run does not train is named in the error
    extra["optimizer"] = {**saved, "param_groups": [{**saved["param_groups"][0],
                                                     "params": ["0.weight", "0.bias", "1.weight"]}]}
    torch.save(extra, ckpt / "optim.pt")
    with pytest.raises(ValueError, match="names 1 parameters this run does not train .e.g. 1.weight"):
        load_checkpoint(ckpt, *tiny())
