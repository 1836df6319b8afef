"""Writing files safely: folders and files that a crash never leaves half-written, writes that fail for the disk's
sake named in one line, and one process at a time writing into a run's folder or output file.

- `atomic_dir` / `atomic_write`: written under a temporary name beside the target, renamed into place once whole;
  readers see the old version or the whole new one.
- `DiskWriteError`: a write that failed because the disk is full (ENOSPC, EDQUOT), the file system is read-only
  (EROFS) or permission is missing (EACCES, EPERM), or a file-size limit (EFBIG) was hit. The message names the
  path, the cause and, for a full disk, the space needed where the writer knows it. Libraries do not always say
  why a write failed (torch's zip writer reports only "unexpected pos"); then the file system is asked: a
  read-only mount or (almost) no free space is the cause.
- `RunLock`: an advisory lock (`fcntl.flock`) on a lock file BESIDE the output (`.NAME.rlcf.lock` in its parent
  folder), so a second process started into an output a live process holds is refused at once, naming the holder
  (pid, host, command, start time). Beside, not inside: the output folder may not exist before the run starts (a
  refused start must leave nothing), and `--overwrite` renames it. The kernel releases the lock when the holder
  dies, so a killed run never leaves a stale lock; the file itself is removed on release.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
import weakref
from pathlib import Path

# ---------------------------------------------------------------- failed writes

_CAUSES = {
    errno.ENOSPC: "no space left on device (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EROFS: "the file system is read-only (EROFS)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
    errno.EFBIG: "file too large for this file system or the file-size limit, ulimit -f (EFBIG)",
}
_ADVICE = {
    errno.ENOSPC: "free some space (or write to another disk) and run the same command again",
    errno.EDQUOT: "free some space within your quota (or write elsewhere) and run the same command again",
    errno.EROFS: "make it writable, or give a folder on a writable file system",
    errno.EACCES: "fix the permissions, or give a folder you may write to",
    errno.EPERM: "fix the permissions, or give a folder you may write to",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or write to another file system",
}
NEARLY_FULL = 1 << 20
"""Bytes free under which a write that failed without saying why is taken for a full disk."""


class DiskWriteError(OSError):
    """A write failed for the disk's sake (full, read-only, no permission, a size limit); `errno` says which. The
    message names the path, the cause and what to do; earlier files are left as they were."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] strerror: filename"
        return str(self.args[0]) if self.args else super().__str__()


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where the file system can be asked)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `path` (or its nearest existing ancestor)."""
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _errno_of(exc: BaseException) -> int | None:
    """The disk errno behind `exc`: an OSError in its chain, or 'os error N' in a message (safetensors' Rust IO
    error), or None."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return e.errno
        m = re.search(r"os error (\d+)", str(e))
        if m and int(m.group(1)) in _CAUSES:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


def disk_error(path, exc: BaseException, needed: int | None = None, note: str = "") -> DiskWriteError | None:
    """`exc`, raised while writing `path`, as a DiskWriteError when the disk is to blame; None when it is not.
    needed: bytes the write needs, when known (named for a full disk). note: what the caller knows of what is left
    and how to go on (e.g. that a run resumes from its last checkpoint); default: earlier files are intact."""
    if isinstance(exc, DiskWriteError):
        return exc
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not the disk's doing
        return None
    code = _errno_of(exc)
    if code is None and not isinstance(exc, (OSError, RuntimeError)):  # a bug, not the disk
        return None
    if code is None:  # the writer did not say why (torch's zip writer: "unexpected pos"): ask the file system
        try:
            st = os.statvfs(_existing(Path(path)))
        except OSError:
            return None
        if st.f_flag & os.ST_RDONLY:
            code = errno.EROFS
        elif st.f_bavail * st.f_frsize < max(NEARLY_FULL, needed or 0):
            code = errno.ENOSPC
        else:
            return None
    message = f"cannot write {path}: {_CAUSES[code]}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        parts = ([f"{human_bytes(free)} free there"] if free is not None else []) + \
                ([f"about {human_bytes(needed)} needed"] if needed else [])
        message += f" ({', '.join(parts)})" if parts else ""
    advice = _ADVICE[code]
    message += f". {advice[0].upper()}{advice[1:]}; {note or 'files written earlier are intact'}"
    err = DiskWriteError(message)
    err.errno, err.filename = code, str(path)
    return err


@contextlib.contextmanager
def writing(path, needed: int | None = None, note: str = ""):
    """Within the block, a failure that the disk caused becomes a DiskWriteError naming `path` (see disk_error)."""
    try:
        yield
    except Exception as e:
        err = disk_error(path, e, needed, note)
        if err is None or err is e:
            raise
        raise err from e


@contextlib.contextmanager
def atomic_dir(final: Path, replace: bool = True, needed: int | None = None, note: str = ""):
    """Yield a temporary folder beside `final`; once the block succeeds it is renamed to `final`, and on an
    error it is removed, so readers only ever see a complete folder. replace=False keeps an existing
    `final` (another process finished the same work first). A failure the disk caused is a DiskWriteError naming
    `final` (needed: bytes the folder needs, when known); the earlier `final`, if any, is left as it was."""
    final = Path(final)
    with writing(final, needed, note):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
    except BaseException as e:
        err = disk_error(final, e, needed, note)  # asked before the partial folder is removed: it fills the disk
        shutil.rmtree(tmp, ignore_errors=True)
        if err is None or err is e:
            raise
        raise err from e
    with writing(final, needed, note):
        if final.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
            os.replace(final, old / final.name)  # kept until the new one is in place
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)


def atomic_write(path, data: str | bytes, note: str = "") -> Path:
    """Write `data` to `path` through a temporary file beside it and a rename: a crash or a full disk leaves the
    earlier file (if any) whole. Failures the disk caused are DiskWriteErrors naming `path`."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = None
    with writing(path, len(raw), note):
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(OSError):  # mkstemp's 0600 would hide the file from the user's group
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def append_text(path, text: str, note: str = "", sync: bool = False) -> None:
    """Append `text` to `path`. On a failure the file is cut back to its earlier length (no torn line is left)
    and a failure the disk caused is a DiskWriteError naming `path`. sync: fsync before returning."""
    path = Path(path)
    raw = text.encode()
    with writing(path, len(raw), note):
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(raw)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise


# ---------------------------------------------------------------- one process per output

LOCK_SUFFIX = ".rlcf.lock"


class InUseError(ValueError):
    """The output is held by another live process; the message names it."""


def lock_file_for(target) -> Path:
    """The lock file of an output folder or file: `.NAME.rlcf.lock` beside it (symlinks resolved, so two names of
    one folder share it). Where the parent folder may not be written (an existing output folder in a read-only or
    another user's parent), RunLock uses `.rlcf.lock` inside the folder instead."""
    p = Path(target).expanduser().resolve()
    return p.parent / f".{p.name or 'root'}{LOCK_SUFFIX}"


_HELD: dict[str, list] = {}
"""lock file -> [fd, count]: locks this process holds. A second claim by the same process (a library user running
two trainings one after the other) shares the lock instead of being refused by itself."""
_WARNED: set[str] = set()


def _command() -> str:
    """This process's command line as a user typed it (`rlcf train ...` for `python -m rlcf.cli train ...`)."""
    argv = list(sys.argv) or ["python"]
    if Path(argv[0]).name in ("rlcf", "cli.py"):
        argv[0] = "rlcf"
    text = shlex.join(argv)
    return text if len(text) <= 300 else text[:297] + "..."


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        return (f"pid {info['pid']} on {info['host']} (`{info['command']}`, started {info['started']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its details yet)"


class RunLock:
    """An advisory lock on an output folder or file, held while a run writes there (see the module docstring).
    `acquire()` raises InUseError naming the holder; `release()` is idempotent. A file system without locks
    (some network mounts) gets one warning and no lock."""

    def __init__(self, target, option: str = "--output-dir"):
        self.target, self.option = Path(target), option
        self.path = lock_file_for(target)
        self.held = False
        self._made: list[Path] = []  # parent folders this lock created, removed again when left empty
        self._finalizer = None

    def acquire(self) -> "RunLock":
        try:
            return self._acquire()
        except DiskWriteError as e:  # the parent folder is not ours to write: lock inside the folder instead
            inside = self.target / LOCK_SUFFIX.lstrip(".")
            inside = inside.with_name("." + inside.name)
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and self.target.is_dir() and self.path != inside:
                self.path = inside
                return self._acquire()
            raise

    def _acquire(self) -> "RunLock":
        key = str(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            return self._holding(key)
        for _ in range(50):
            with writing(self.path, note=f"a run locks its {self.option} with a file beside it"):
                self._make_parent()
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except FileNotFoundError:  # the parent was removed by a holder releasing just now: again
                    continue
                except PermissionError as denied:  # another user's lock file: a read-only descriptor locks too
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        raise denied from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                self._remove_made()
                raise InUseError(f"{self.target} is in use by another run: {holder}. Wait for it to end (or stop "
                                 f"it), or give another {self.option}; the lock is {self.path}") from None
            except OSError as e:  # no locks on this file system (ENOLCK, EOPNOTSUPP): go on unprotected
                os.close(fd)
                if key not in _WARNED:
                    _WARNED.add(key)
                    print(f"rlcf: cannot lock {self.path} ({e.strerror}); nothing stops a second run from writing "
                          f"into {self.target} at the same time", file=sys.stderr, flush=True)
                return self
            try:  # a holder releasing removes the file: a lock on the removed file holds nothing, so again
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": _command()}
            with contextlib.suppress(OSError):  # the details are a courtesy: a full disk must not stop the lock
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            _HELD[key] = [fd, 1]
            return self._holding(key)
        raise InUseError(f"{self.target}: could not take the lock {self.path} (it keeps being removed); try again")

    def _holding(self, key: str) -> "RunLock":
        self.held = True  # released by release(), or when this object is collected (a run that failed early)
        self._finalizer = weakref.finalize(self, _release_key, key, list(self._made))
        return self

    def _make_parent(self) -> None:
        missing = []
        folder = self.path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing + [m for m in self._made if m not in missing]

    def _remove_made(self) -> None:
        for folder in self._made:  # deepest first; a folder something was written into stays
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._finalizer()  # _release_key, once
        self._made = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _release_key(key: str, made: list[Path] = ()) -> None:
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(OSError):
        os.unlink(key)  # while still locked: a process that opened it meanwhile sees it gone and tries again
    os.close(entry[0])
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


def main_process() -> bool:
    """True on the process that writes a run's files (RANK 0 under torchrun / accelerate, or no RANK at all)."""
    return os.environ.get("RANK", "0") == "0"
