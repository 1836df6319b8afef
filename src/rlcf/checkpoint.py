"""Atomic checkpoints: written under a temporary name in the same folder, then renamed into place.

A checkpoint holds the trainable weights (safetensors), the optimiser state, RNG state and the trainer's
small state (step, KL controller, reward scaler) as JSON. The frozen reference is not saved: it is
rebuilt from the initial model on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"


@contextlib.contextmanager
def atomic_dir(final: Path, replace: bool = True):
    """Yield a temporary folder beside `final`; once the block succeeds it is renamed to `final`, and on an
    error it is removed, so readers only ever see a complete folder. replace=False keeps an existing
    `final` (another process finished the same work first)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(final)
    os.replace(tmp, final)


def _trainable_state(models) -> dict[str, torch.Tensor]:
    """Every tensor that training changes: trainable parameters (and a LoRA adapter's), never the frozen copy."""
    names = {n for n, p in models.named_parameters() if p.requires_grad}
    return {n: t.detach().contiguous().cpu() for n, t in models.state_dict().items() if n in names}


def save_checkpoint(out_dir: Path, step: int, models, optimizer, trainer_state: dict, keep: int = 2) -> Path:
    root = Path(out_dir) / CHECKPOINTS
    final = root / f"step_{step:06d}"
    with atomic_dir(final) as tmp:
        # named_parameters() lists a tied weight once, so safetensors never sees shared storage
        save_file(_trainable_state(models), tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1))
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step_"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    root = Path(out_dir) / CHECKPOINTS
    if not root.exists():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step_") and (p / "trainer_state.json").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path, models, optimizer) -> dict:
    state = load_file(Path(path) / "trainable.safetensors")
    missing = [n for n, p in models.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"checkpoint {path}: lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                         "was it written with another model or reference mode?")
    models.load_state_dict(state, strict=False)
    extra = torch.load(Path(path) / "optim.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    return json.loads((Path(path) / "trainer_state.json").read_text())

