"""One metrics log for every training loop: `metrics.jsonl` always (one JSON object per step, appended as it
happens, truncated on resume), and the experiment trackers named by `--report-to` (tensorboard, wandb, mlflow,
trackio) through accelerate's tracking. Only the main process writes. A record that cannot be appended (a full
disk, a read-only folder) leaves no torn line and ends the run with a DiskWriteError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..files import append_text, writing
from .checkpoint import truncate_metrics


def _hparams(config: dict, prefix: str = "") -> dict:
    """The config flattened to the scalar values trackers accept (None and lists as text)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_hparams(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


class MetricsLog:
    """Call on every process; only the main one writes. `start_step` > 0 (a resumed run) drops the records of the
    steps after it (they are redone) and any torn last line; 0 starts the file afresh."""

    def __init__(self, out_dir: Path, accelerator, start_step: int, name: str, config: dict | None = None,
                 total_steps: int | None = None):
        """name: the tracker run's name; total_steps: show a progress bar over that many steps (None: no bar)."""
        self.path, self.accelerator, self.bar = Path(out_dir) / "metrics.jsonl", accelerator, None
        self.main = accelerator.is_main_process
        if self.main and total_steps is not None:
            self.bar = tqdm(total=total_steps, initial=min(start_step, total_steps), desc=name.replace("-", " "),
                            dynamic_ncols=True)
        if self.main and start_step:
            truncate_metrics(self.path, start_step)
        elif self.main:
            with writing(self.path):
                self.path.unlink(missing_ok=True)
        self.tracking = bool(getattr(accelerator, "log_with", None))
        if self.tracking:
            accelerator.init_trackers(name, config=_hparams(config or {}))

    def write(self, record: dict, postfix: dict[str, str] | None = None, advance: bool = True) -> None:
        """Append one step's record; trackers get its numbers at its step; the progress bar advances (unless
        advance=False: a record before the first step)."""
        if not self.main:
            return
        append_text(self.path, json.dumps(record) + "\n",
                    note="no line is torn, and the run resumes from its last checkpoint")
        if self.tracking:
            numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            self.accelerator.log(numbers, step=int(record["step"]))
        if self.bar is not None and advance:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tracking:
            self.accelerator.end_training()
