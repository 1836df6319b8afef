"""Claiming a run folder: checked before anything is loaded, written only once the run has started.

A folder holds a run when it has any of config.yaml, metrics.jsonl, checkpoints/ or final/. `RunDir(cfg)`
decides what a new start may do with it, without writing anything:

- no run there: a fresh start;
- a run there and `resume`: resume only if the stored config.yaml equals the new config on every field that
  changes the results (config.py marks the others `neutral`: output_dir, steps, save_every, progress, chunk and batch
  sizes, ...); otherwise a
  ConfigError that names each differing field and says how to start fresh (--overwrite, another
  --output-dir) or force it (--force-resume);
- a run there, `resume` off: a ConfigError unless `overwrite`;
- `overwrite`: the earlier run is moved aside to OUTPUT_DIR.old-TIME (never deleted) when the run starts.

`start()` (main process, after the data, the reward and the models have loaded) moves an overwritten run
aside and writes config.yaml. So a start that fails on bad input leaves an earlier run's folder untouched.

One run per folder: `RunDir(cfg)` first takes the folder's lock (files.RunLock, `.NAME.rlcf.lock` beside it, on the
main process), so a second process started into a folder a live run holds is refused at once, naming the holder,
before it reads or writes anything there. The training loop releases it when the run ends (`release()`); the kernel
does when the process dies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from ..config import neutral_fields, to_dict
from ..errors import ConfigError
from ..files import RunLock, atomic_write, main_process, writing

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "final")

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(stored: dict, new: dict, neutral: set[str] = frozenset()) -> list[str]:
    """'field: stored -> new' for every result-changing field the two configs both have and disagree on."""
    a, b = _flat(stored), _flat(json.loads(json.dumps(new, default=list)))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if k not in neutral and a[k] != b[k]]


class RunDir:
    def __init__(self, cfg, lock: bool = True):
        """lock: take the folder's lock (on the main process); released by release() when the run ends."""
        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.lock = RunLock(self.out, "--output-dir").acquire() if lock and main_process() else None
        try:
            self._check()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up the folder's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    def _check(self) -> None:
        cfg, out = self.cfg, self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output-dir {out} is a file, not a folder; give a new folder name")
        present = [name for name in RUN_FILES if (out / name).exists()]
        self.has_run, self.move_aside = bool(present), False
        if not present:
            return
        if cfg.overwrite:
            self.move_aside = True
            return
        if not cfg.resume:
            raise ConfigError(f"{out} holds an earlier run ({', '.join(present)}) and --resume is off; pass "
                              "--overwrite (the earlier run is moved aside, not deleted) or another --output-dir")
        stored_path = out / "config.yaml"
        if stored_path.exists():
            try:
                stored = yaml.safe_load(stored_path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{stored_path} is not valid YAML ({e}); pass --overwrite to start fresh") from None
            neutral = neutral_fields(type(cfg))  # the fields config.py marks as free to change on resume
            if not hasattr(cfg, "algo"):  # a supervised stage may also grow its epochs (each epoch's shuffle depends
                neutral.add("optim.epochs")  # only on the seed and its number); RL epochs are passes over a batch
            diff = config_differences(stored, to_dict(cfg), neutral)
            if diff and not cfg.force_resume:
                shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
                raise ConfigError(
                    f"{out} holds a run with other settings ({shown}). Resuming would mix the two runs: rerun with "
                    f"the stored settings ({stored_path}) to continue it, or pass --overwrite (moves the earlier run "
                    "aside) or another --output-dir to start fresh, or --force-resume to mix them anyway")

    def start(self, main: bool = True) -> None:
        """Call once everything has loaded: move an overwritten run aside, then write config.yaml."""
        if not main:
            return
        if self.move_aside and self.out.exists():
            aside = self.out.with_name(f"{self.out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while aside.exists():
                aside, n = aside.with_name(f"{aside.name.split('~')[0]}~{n}"), n + 1
            with writing(self.out):
                self.out.rename(aside)
            print(f"rlcf: the earlier run in {self.out} was moved to {aside}", flush=True)
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
