"""What keeps a long run safe: a preemption signal ends it at a step boundary with a checkpoint (a second one, or a
step that does not end within a grace period, ends it at once), optimiser steps with a non-finite loss, gradient or
reward are skipped, a bounded number in a row, and a response length the model cannot hold is refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Callable

import torch

from ..errors import ConfigError


class RunStopped(Exception):
    """The run was stopped by a signal after writing a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(ValueError):
    """Too many optimiser steps in a row had a non-finite loss, gradient or reward."""


STOP_GRACE_S = 30.0
"""Seconds a step may take to reach its end after the first SIGTERM; then the process exits with 143 without a new
checkpoint (a step that hangs must not outlive the cluster's own grace period). Environment: RLCF_STOP_GRACE_S."""


def stop_grace_s() -> float | None:
    """The grace period: RLCF_STOP_GRACE_S (seconds > 0, 'inf' for none), else STOP_GRACE_S; None for none."""
    raw = os.environ.get("RLCF_STOP_GRACE_S", "").strip()
    if not raw:
        return STOP_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ConfigError(f"RLCF_STOP_GRACE_S={raw!r}: must be a number of seconds > 0 (how long a step may take to "
                          "end after SIGTERM), or inf to wait for it however long it takes")
    return None if math.isinf(value) else value


class StopSignals:
    """Within the block, SIGTERM (a preempted cluster job) and SIGINT (Ctrl-C) only set a flag: the loop finishes
    its step (or batch), writes a checkpoint and stops. Outside the main thread (signal handlers cannot be
    installed there) nothing changes.

    A second signal does not wait: a second Ctrl-C raises KeyboardInterrupt; a second SIGTERM (or any signal after
    a first SIGTERM) ends the process at once with 128 + its number, saying what the resume point is. After a first
    SIGTERM, a step that has not reached its end (`boundary()`) within the grace period (RLCF_STOP_GRACE_S, default
    30 s) ends the process likewise with 143. Both are watched by a thread woken by the signal itself (Python's
    wakeup fd), so they work while the main thread is stuck in a call that never returns.

    what: the unit of work finished after a signal ('step', 'batch'); then: what happens at its end ('writing a
    checkpoint'); command: the message's prefix ('rlcf train'); resume_point(): a sentence on where a rerun starts.
    """

    def __init__(self, what: str = "step", then: str = "writing a checkpoint", command: str = "rlcf",
                 resume_point: Callable[[], str] | None = None):
        self.signum: int | None = None
        self.what, self.then, self.command = what, then, command
        self.resume_point = resume_point or (lambda: "")
        self.grace_s = stop_grace_s()
        self._old = {}
        self._at_boundary = False
        self._closed = False
        self._exiting = threading.Lock()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup = -1

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            if signum == signal.SIGINT and self.signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._exit_now(signum, f"a second signal ({signal.Signals(signum).name})")
        self.signum = signum
        name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        grace = (f"; if the {self.what} has not ended within {self.grace_s:g} s (RLCF_STOP_GRACE_S), the process ends "
                 "then" if signum == signal.SIGTERM and self.grace_s is not None else "")
        print(f"\n{self.command}: got {name}; finishing this {self.what}, then {self.then} ({again} again to stop at "
              f"once, without finishing it{grace})", file=sys.stderr, flush=True)
        if signum == signal.SIGTERM:
            self._watch()

    def _watch(self) -> None:
        """A thread that ends the process on a second signal or when the grace period is over."""
        try:  # the wakeup fd: Python's C-level handler writes each signal's number there, whatever the main thread does
            r, w = socket.socketpair()
            r.setblocking(False)
            w.setblocking(False)
            old = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
            if old != -1:  # somebody else's (an event loop): leave it to them, watch the clock only
                signal.set_wakeup_fd(old)
                r.close()
                w.close()
                r = None
            else:
                self._wakeup, self._old_wakeup = (r, w), old
        except (ValueError, OSError):
            r = None
        deadline = None if self.grace_s is None else time.monotonic() + self.grace_s
        threading.Thread(target=self._watcher, args=(r, deadline), name="rlcf stop watchdog", daemon=True).start()

    def _watcher(self, r, deadline: float | None) -> None:
        while not self._closed:
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            if r is not None:
                try:
                    ready = select.select([r], [], [], wait)[0]
                    data = r.recv(64) if ready else b""
                except (OSError, ValueError):  # closed when the block ended
                    return
            else:
                time.sleep(wait)
                data = b""
            if self._closed:
                return
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._exit_now(signum, f"a second signal ({signal.Signals(signum).name})")
            if deadline is not None and not self._at_boundary and time.monotonic() >= deadline:
                self._exit_now(signal.SIGTERM, f"the {self.what} did not end within {self.grace_s:g} s of SIGTERM "
                               "(RLCF_STOP_GRACE_S)")

    def _exit_now(self, signum: int, why: str) -> None:
        if not self._exiting.acquire(blocking=False):
            return
        where = self.resume_point()
        print(f"\n{self.command}: {why}: stopping at once, without finishing the {self.what}"
              f"{'; ' + where if where else ''}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def boundary(self) -> None:
        """The loop has reached the end of its step and is stopping cleanly: the grace period no longer runs."""
        self._at_boundary = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        self._closed = True
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        if self._wakeup is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._old_wakeup)
            for sock in self._wakeup:
                sock.close()
            self._wakeup = None
        return False

    def requested(self, accelerator=None) -> int | None:
        """The signal number if any process got one (every process must call this at the same point)."""
        if accelerator is not None and accelerator.num_processes > 1:
            flag = torch.tensor([float(self.signum or 0)], device=accelerator.device)
            got = int(accelerator.reduce(flag, "max").item())
            return got or None
        return self.signum


def stopped(signum: int, step: int, checkpoint, command: str) -> RunStopped:
    return RunStopped(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}. "
                      f"Run the same command again to resume from it ({command}).", signum)


class NonFiniteGuard:
    """Counts optimiser steps skipped in a row for a non-finite value; at `limit` it raises NonFiniteError."""

    def __init__(self, limit: int, what: str = "step"):
        self.limit, self.what, self.in_row, self.total = limit, what, 0, 0

    def ok(self, values: dict[str, float], where: str) -> bool:
        """True when every value is finite; else counts a skipped step, warns, and raises at the limit."""
        bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
        if not bad:
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        print(f"rlcf: {where}: non-finite {', '.join(bad)}; the optimiser step is skipped "
              f"({self.in_row} in a row, the limit is {self.limit})", file=sys.stderr, flush=True)
        if self.in_row >= self.limit:
            raise NonFiniteError(
                f"{where}: {self.in_row} optimiser steps in a row had a non-finite loss, gradient or reward "
                f"({', '.join(bad)}); lower --optim.lr, check the reward, or use float32 weights "
                f"(--model.dtype float32); --optim.max-nonfinite-steps sets the limit")
        return False


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                  "max_seq_len")
"""Config fields that hold a model's context length, by family (llama/mistral/qwen, gpt2, ..., chatglm, ...)."""


def context_length(config) -> tuple[int, str] | None:
    """(the longest sequence a model reads, the config field saying so), from its config (or its text_config);
    None when no field says."""
    for obj in (config, getattr(config, "text_config", None)):
        for name in CONTEXT_FIELDS:
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, name
    return None


def check_new_tokens(max_new_tokens: int, longest_prompt: int, config, model: str,
                     option: str = "--rollout.max-new-tokens") -> None:
    """Refuse a response length that cannot fit beside the longest prompt in the model's context: a ConfigError
    naming the option, the limit and the model (checked once the model's config and the prompts' lengths are
    known; a model whose config states no context length is not checked)."""
    found = context_length(config)
    if found is None:
        return
    n, field = found
    room = n - longest_prompt
    if max_new_tokens > room:
        fit = (f"so at most {room} new tokens fit" if room > 0 else "which leaves no room for a response")
        raise ConfigError(f"{option}={max_new_tokens}: {model} reads at most {n} tokens (its config's {field}) and "
                          f"the longest prompt has {longest_prompt}, {fit}; lower {option} (or shorten the prompts, "
                          "--rollout.max-prompt-tokens)")
