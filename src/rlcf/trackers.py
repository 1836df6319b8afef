"""The experiment trackers `--report-to` may name, checked before anything loads (a missing package is named)."""

from __future__ import annotations

import accelerate.utils as au

TRACKERS = {
    "tensorboard": ("tensorboard", "is_tensorboard_available"),
    "wandb": ("wandb", "is_wandb_available"),
    "mlflow": ("mlflow", "is_mlflow_available"),
    "trackio": ("trackio", "is_trackio_available"),
}
"""--report-to name -> (the package that provides it, accelerate's availability check)."""


def trackers(report_to) -> list[str] | None:
    """accelerate's `log_with` for --report-to: None when it names no tracker; a ValueError naming the package to
    install when one is missing (before anything is loaded)."""
    names = [n for n in dict.fromkeys(report_to or ()) if n != "none"]
    if not names:
        return None
    missing = [n for n in names if not getattr(au, TRACKERS[n][1])()]
    if missing:
        pkgs = " ".join(TRACKERS[n][0] for n in missing)
        raise ValueError(f"--report-to {' '.join(missing)}: not installed here; pip install {pkgs}"
                         + (" (or pip install 'rlcf[tensorboard]')" if "tensorboard" in missing else ""))
    return names
