"""Atomic, self-checking checkpoints: written under a temporary name in the same folder, then renamed into place.

A checkpoint holds the trainable weights (safetensors), the optimiser state, RNG state and the trainer's
small state (step, KL controller, reward scaler) as JSON. The frozen reference is not saved: it is
rebuilt from the initial model on resume. `manifest.json`, written last, lists every other file's size and
sha256, so a checkpoint damaged after the rename (a full disk, a copy cut short, a flipped bit) is detected
on resume and skipped for the newest one that verifies. Checkpoints written before manifests existed are
accepted when their trainer_state.json parses and their safetensors header reads.

A checkpoint that cannot be written (a full disk, a read-only folder) ends the run with a DiskWriteError naming the
folder, the cause and (full disk) about how much space a checkpoint takes; the earlier checkpoints stay as they were,
and the same command resumes from the newest once the disk has room.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from ..files import atomic_dir, writing

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
_CHUNK = 8 << 20  # bytes hashed at a time: a 350 MB checkpoint is never held in memory


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> Path:
    """List every file of `folder` (name, size in bytes, sha256) in folder/manifest.json; call it last, as
    the files are hashed as they are on disk."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST}
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def checkpoint_problem(folder: Path, hashes: bool = True) -> str | None:
    """Why the checkpoint `folder` cannot be trusted, in a few words naming the file, or None if it verifies.
    With a manifest: every listed file is present with its size and (hashes=True) its sha256. Without one
    (written before manifests): trainer_state.json parses and trainable.safetensors' header reads."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        return _legacy_problem(folder)
    try:
        files = json.loads(manifest.read_text())["files"]
        expected = {name: (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST}: unreadable ({_first_line(e)})"
    for name, (size, _) in expected.items():  # sizes first: a cut-short file is named without hashing the rest
        path = folder / name
        if not path.is_file():
            return f"{name}: missing"
        if path.stat().st_size != size:
            return f"{name}: size {path.stat().st_size} != {size}"
    if not hashes:
        return None
    for name, (_, digest) in expected.items():
        actual = _sha256(folder / name)
        if actual != digest:
            return f"{name}: sha256 {actual[:12]}... != {digest[:12]}... in {MANIFEST}"
    return None


def _legacy_problem(folder: Path) -> str | None:
    try:
        json.loads((folder / "trainer_state.json").read_text())["step"]
    except FileNotFoundError:
        return f"no {MANIFEST}, and trainer_state.json: missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"no {MANIFEST}, and trainer_state.json: unreadable ({_first_line(e)})"
    try:
        with safe_open(str(folder / "trainable.safetensors"), framework="pt"):
            pass  # opening reads the header and checks it against the file's size
    except Exception as e:  # safetensors' own error type is not an OSError / ValueError
        return f"no {MANIFEST}, and trainable.safetensors: unreadable ({_first_line(e)})"
    if not (folder / "optim.pt").is_file():
        return f"no {MANIFEST}, and optim.pt: missing"
    return None


def _step_folders(root: Path) -> list[Path]:
    """step_NNNNNN folders, oldest first; temporary .step_NNNNNN-xxxx folders of a killed writer are not listed."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _trainable_state(models, state: dict | None = None) -> dict[str, torch.Tensor]:
    """Every tensor that training changes: trainable parameters (and a LoRA adapter's), never the frozen copy.
    state: the full state dict when it was gathered across processes (accelerator.get_state_dict, FSDP-safe)."""
    names = {n for n, p in models.named_parameters() if p.requires_grad}
    state = models.state_dict() if state is None else state
    return {n: t.detach().contiguous().cpu() for n, t in state.items() if n in names}


def save_checkpoint(out_dir: Path, step: int, models, optimizer, accelerator, trainer_state: dict,
                    keep: int = 2, sharded: bool = False) -> Path:
    """Call on every process: the weights come from accelerate's full state dict (a collective under FSDP), the
    optimiser state is kept whole by parameter name (sharded: gathered, also a collective) and every process's RNG
    state is kept; only the main process writes. Then the older checkpoints beyond `keep`
    are removed (keep <= 0 keeps all), never the one just written and never for a damaged one."""
    root = Path(out_dir) / CHECKPOINTS
    final = root / f"step_{step:06d}"
    inner = accelerator.unwrap_model(models)
    full = accelerator.get_state_dict(models) if accelerator.num_processes > 1 else None
    optim_state = optimizer_state(inner, optimizer, sharded)  # a collective when sharded
    # the CPU generator, and on a GPU the CUDA one, which samples the responses there: a resumed run draws what
    # the uninterrupted one would have drawn
    rng = [(torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None)]
    if accelerator.num_processes > 1:
        rng = gather_object(rng)
    if accelerator.is_main_process:
        if root.is_dir():  # temporary folders of a writer killed mid-way: never read, only take disk space
            for tmp in root.iterdir():
                if tmp.is_dir() and tmp.name.startswith(".step_"):
                    shutil.rmtree(tmp, ignore_errors=True)
        weights = _trainable_state(inner, full)
        earlier = _step_folders(root)
        needed = (sum(p.stat().st_size for p in earlier[-1].iterdir() if p.is_file()) if earlier
                  else 3 * sum(t.numel() * t.element_size() for t in weights.values()))  # weights, Adam's 2 moments
        note = (f"the earlier checkpoints in {root} are intact, and the run resumes from the newest"
                if earlier else "no checkpoint is written yet")
        with atomic_dir(final, needed=needed, note=note) as tmp:
            # named_parameters() lists a tied weight once, so safetensors never sees shared storage
            save_file(weights, tmp / "trainable.safetensors")
            torch.save({"optimizer": optim_state, "torch_rng": [cpu for cpu, _ in rng],
                        "cuda_rng": [gpu for _, gpu in rng]}, tmp / "optim.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1))
            write_manifest(tmp)  # last: it hashes the files as written
        if keep > 0:
            _prune(root, final, keep)
    return final


def _prune(root: Path, new: Path, keep: int) -> None:
    """Keep `new` and the keep-1 newest intact checkpoints older than it; remove the other older ones and every
    damaged one (sizes checked, not hashes: pruning must stay cheap). Intact checkpoints newer than `new` (a run
    restarted without resuming) are left: the run overwrites them as it gets there."""
    kept = 1
    for folder in reversed(_step_folders(root)):
        if folder == new:
            continue
        if checkpoint_problem(folder, hashes=False) is not None:
            shutil.rmtree(folder, ignore_errors=True)
        elif int(folder.name[5:]) < int(new.name[5:]):
            if kept < keep:
                kept += 1
            else:
                shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint of out_dir that verifies (see checkpoint_problem), or None when there is none.
    Newer damaged ones are skipped with one line on stderr; if every checkpoint is damaged, a ValueError says
    how to start afresh, since silently starting over would discard a long run."""
    root = Path(out_dir) / CHECKPOINTS
    damaged: list[tuple[Path, str]] = []
    for folder in reversed(_step_folders(root)):
        problem = checkpoint_problem(folder)
        if problem is None:
            if damaged and os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
                skipped = "; ".join(f"checkpoint {f} is damaged ({why})" for f, why in damaged)
                print(f"rlcf: {skipped}; resuming from {folder.name} instead", file=sys.stderr, flush=True)
            return folder
        damaged.append((folder, problem))
    if damaged:
        whys = "; ".join(f"{f.name}: {why}" for f, why in damaged)
        raise ValueError(f"no intact checkpoint in {root} to resume from ({whys}); to start afresh, delete {root} "
                         "or use another --output-dir")
    return None


def _read(path: Path, reader):
    """reader(path), with any failure of a damaged file turned into a ValueError naming it."""
    try:
        return reader(path)
    except Exception as e:  # safetensors, torch.load (zip, pickle) and json each raise their own types
        raise ValueError(f"checkpoint file {path} cannot be read ({_first_line(e)}); delete {path.parent} to "
                         "resume from an older checkpoint") from e


def _param_names(models, optimizer) -> list[str]:
    """The name in `models` of each parameter the optimiser holds, in the order of its groups."""
    names = {id(p): n for n, p in models.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(models, optimizer, sharded: bool) -> dict:
    """The optimiser's whole state keyed by parameter name, the same however the run is split: a sharded (FSDP2)
    run gathers it from every process (call on all of them), another names the entries of its own state_dict.
    A checkpoint so written resumes on another number of processes, sharded or not."""
    if sharded:
        return get_optimizer_state_dict(models, getattr(optimizer, "optimizer", optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = _param_names(models, optimizer)
    state = optimizer.state_dict()
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def load_optimizer_state(models, optimizer, state: dict, sharded: bool) -> None:
    """Restore what optimizer_state (or, keyed by position, an older rlcf) saved. Sharded: after accelerate's
    prepare, each process keeps its own shard of the full state."""
    groups = state["param_groups"]
    named = bool(groups) and bool(groups[0]["params"]) and isinstance(groups[0]["params"][0], str)
    names = _param_names(models, optimizer)
    if sharded:
        if not named:
            state = {"state": {names[i]: v for i, v in state["state"].items()},
                     "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups]}
        set_optimizer_state_dict(models, getattr(optimizer, "optimizer", optimizer), state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    if named:
        index = {n: i for i, n in enumerate(names)}
        unknown = [n for g in groups for n in g["params"] if n not in index]
        if unknown:
            raise ValueError(f"the checkpoint's optimiser state names {len(unknown)} parameters this run does not "
                             f"train (e.g. {unknown[0]}); was it written with another model or reference mode?")
        state = {"state": {index[n]: v for n, v in state["state"].items()},
                 "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups]}
    optimizer.load_state_dict(state)


def load_checkpoint(path: Path, models, optimizer, rank: int = 0, sharded: bool = False) -> dict:
    """Weights, optimiser and this process's RNG state (a run resumed on fewer processes reuses rank 0's).
    Call before accelerate's prepare; sharded: the optimiser is left for load_sharded_optimizer, after it."""
    path = Path(path)
    state = _read(path / "trainable.safetensors", load_file)
    missing = [n for n, p in models.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"checkpoint {path}: lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                         "was it written with another model or reference mode?")
    trainer_state = _read(path / "trainer_state.json", lambda p: json.loads(p.read_text()))
    extra = _read(path / "optim.pt", lambda p: torch.load(p, weights_only=True))
    models.load_state_dict(state, strict=False)
    if not sharded:
        load_optimizer_state(models, optimizer, extra["optimizer"], sharded=False)
    rng = extra["torch_rng"]
    rng = rng if isinstance(rng, list) else [rng]
    torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    cuda_rng = extra.get("cuda_rng") or [None]  # none in checkpoints written before it was kept, or on a CPU
    cuda_rng = cuda_rng[rank] if rank < len(cuda_rng) else cuda_rng[0]
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    return trainer_state


def load_sharded_optimizer(path: Path, models, optimizer) -> None:
    """A sharded run's optimiser state from checkpoint `path`: every process reads the full state and keeps its
    shard. Call on every process after accelerate's prepare."""
    extra = _read(Path(path) / "optim.pt", lambda p: torch.load(p, weights_only=True))
    load_optimizer_state(models, optimizer, extra["optimizer"], sharded=True)


def truncate_metrics(path: Path, last_step: int) -> int:
    """Make a metrics.jsonl fit a run resuming after `last_step`: keep, byte for byte, the records with
    step <= last_step (none for a fresh start, last_step 0: the supervised stages' step-0 evaluation is
    redone, and the file is removed) and drop the rest; a line that is not a JSON object with a numeric "step"
    (the torn last line of a crash mid-write) is dropped instead of failing. The file is replaced atomically.
    Returns how many lines were dropped as unreadable."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, torn = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"] if isinstance(record, dict) else None
        except (ValueError, KeyError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            step = None
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            torn += 1
        elif step <= last_step:
            keep.append(line + b"\n")
    with writing(path, sum(map(len, keep))):
        if last_step <= 0:
            path.unlink()
            return torn
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.writelines(keep)
            with contextlib.suppress(OSError):  # some file systems (FAT, some network mounts) refuse chmod
                os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return torn
