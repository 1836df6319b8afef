"""What keeps a long run safe: a preemption signal ends it at a step boundary with a checkpoint, and
optimiser steps with a non-finite loss, gradient or reward are skipped, a bounded number in a row.
"""

from __future__ import annotations

import math
import signal
import sys
import threading

import torch


class RunStopped(Exception):
    """The run was stopped by a signal after writing a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(ValueError):
    """Too many optimiser steps in a row had a non-finite loss, gradient or reward."""


class StopSignals:
    """Within the block, SIGTERM (a preempted cluster job) and SIGINT (Ctrl-C) only set a flag: the loop finishes
    its step, writes a checkpoint and stops. A second SIGINT interrupts at once. Outside the main thread
    (signal handlers cannot be installed there) nothing changes."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nrlcf: got {signal.Signals(signum).name}; finishing this step, then writing a checkpoint "
              "(Ctrl-C again to stop at once, without one)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
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
