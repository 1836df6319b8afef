"""The error types a user can act on, and the helpers that turn a failure into one line naming its culprit.

Standard library and huggingface_hub's repo-id check only, so every floor of the package can raise them.
"""

from __future__ import annotations

import difflib
import os

from huggingface_hub.utils import HFValidationError, validate_repo_id


class ConfigError(ValueError):
    """A config value the user can fix; the message names the option and what is allowed."""


class DataError(ValueError):
    """A data file, row or field that cannot be used; the message names the file, the row and the field."""


class ModelError(ValueError):
    """A model name or folder that cannot be what was asked for; the message says what to pass instead."""


def looks_like_local_path(name: str) -> bool:
    """True when `name` can only mean something on this disk: it starts with '/', './', '../' or '~', holds a
    backslash or more than one '/', is no valid hub id, or its first folder exists here ('runs/x' with ./runs).
    Such a name is never sent to the hub, so a typo gives 'does not exist' instead of a network error."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])


def near_miss(path: str) -> str:
    """What is near a missing path, as ' (...)' for an error message: a missing folder, or a close name beside it."""
    folder = os.path.dirname(path.rstrip("/")) or "."
    if not os.path.isdir(folder):
        return f" (the folder {folder} does not exist either)"
    close = difflib.get_close_matches(os.path.basename(path.rstrip("/")), os.listdir(folder), n=1, cutoff=0.85)
    return f" (did you mean {os.path.join(os.path.dirname(path.rstrip('/')), close[0])}?)" if close else ""


def one_line(e: BaseException, innermost: bool = True) -> str:
    """`e` as 'Type: message' on one line; innermost: its root cause instead (datasets wraps the parser's error)."""
    while innermost and e.__cause__ is not None:
        e = e.__cause__
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]
