"""Small helpers the test files share."""

from __future__ import annotations

import json
from pathlib import Path


def override(cfg, **over):
    """Set nested config fields by dotted name: override(cfg, **{"optim.lr": 1e-3})."""
    for key, value in over.items():
        obj = cfg
        *path, last = key.split(".")
        for p in path:
            obj = getattr(obj, p)
        if not hasattr(obj, last):  # a misspelt or moved field must not pass silently
            raise AttributeError(f"{type(obj).__name__} has no field {last!r} (override {key!r})")
        setattr(obj, last, value)
    return cfg


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def assert_one_clear_line(case: str, rc, err: str, expected) -> str:
    """A hostile input's outcome as a user sees it: a non-zero exit, no traceback, and a last `rlcf ...` line that
    holds every expected fragment. Returns that line."""
    assert rc not in (0, None), f"{case}: exit {rc}\n{err}"
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("rlcf")]
    assert message, err
    for part in expected:
        assert part in message[-1], f"{case}: {part!r} not in {message[-1]!r}"
    return message[-1]
