"""Folders written so that a crash never leaves half of one: readers see the old folder or the whole new one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


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
