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


def _trainable_state(models, state: dict | None = None) -> dict[str, torch.Tensor]:
    """Every tensor that training changes: trainable parameters (and a LoRA adapter's), never the frozen copy.
    state: the full state dict when it was gathered across processes (accelerator.get_state_dict, FSDP-safe)."""
    names = {n for n, p in models.named_parameters() if p.requires_grad}
    state = models.state_dict() if state is None else state
    return {n: t.detach().contiguous().cpu() for n, t in state.items() if n in names}


def save_checkpoint(out_dir: Path, step: int, models, optimizer, accelerator, trainer_state: dict,
                    keep: int = 2) -> Path:
    """Call on every process: the weights come from accelerate's full state dict (a collective under FSDP) and
    every process's RNG state is kept; only the main process writes."""
    root = Path(out_dir) / CHECKPOINTS
    final = root / f"step_{step:06d}"
    inner = accelerator.unwrap_model(models)
    full = accelerator.get_state_dict(models) if accelerator.num_processes > 1 else None
    rng = [torch.get_rng_state()]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rng = gather_object(rng)
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            # named_parameters() lists a tied weight once, so safetensors never sees shared storage
            save_file(_trainable_state(inner, full), tmp / "trainable.safetensors")
            torch.save({"optimizer": optimizer.state_dict(), "torch_rng": rng}, tmp / "optim.pt")
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


def load_checkpoint(path: Path, models, optimizer, rank: int = 0) -> dict:
    """Weights, optimiser and this process's RNG state (a run resumed on fewer processes reuses rank 0's)."""
    state = load_file(Path(path) / "trainable.safetensors")
    missing = [n for n, p in models.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"checkpoint {path}: lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                         "was it written with another model or reference mode?")
    models.load_state_dict(state, strict=False)
    extra = torch.load(Path(path) / "optim.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    rng = extra["torch_rng"]
    rng = rng if isinstance(rng, list) else [rng]
    torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return json.loads((Path(path) / "trainer_state.json").read_text())
