"""The scaffold both training loops stand on (the RL loop in trainer.py, the supervised loop in supervised.py).

A loop body is its own: what a step computes. Everything around it is here, once:
- `LoopSettings`: the typed settings the scaffold reads (no getattr on a command's config);
- `TrainingLoop.start()`: claim the run folder, resume from the newest checkpoint (weights, optimiser, RNG and the
  loop's own state), hand model and optimiser to accelerate, open the metrics log;
- `with loop:` stop signals: `loop.check_stop(step)` at each step boundary writes a checkpoint and stops a preempted run
  (a second signal, or a step that does not end within the grace period, ends the process at once: safety.py);
- `loop.optimizer_step(loss, where)`: clip the gradient norm, skip a step whose loss or gradient is not finite
  (bounded in a row by the non-finite guard), step and zero the gradients;
- `loop.end_step(step, total)`: a checkpoint every `save_every` steps and after the last, then a barrier;
- `loop.finish(save)`: close the log and write the final model atomically on the main process.

The run folder's lock (taken by `RunDir`) is released when the run ends: after the final model, or when an error or a
stop signal leaves the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..files import atomic_dir
from ..trackers import trackers
from .accel import is_sharded, make_accelerator, register_entry_points
from .checkpoint import CHECKPOINTS, latest_checkpoint, load_checkpoint, load_sharded_optimizer, save_checkpoint
from .metrics_log import MetricsLog
from .model_card import write_model_card
from .rundir import RunDir
from .safety import NonFiniteGuard, StopSignals, stop_grace_s, stopped


@dataclass
class LoopSettings:
    """What the scaffold needs to know about a run; each loop fills it from its command's config."""

    name: str
    """Short name for the progress bar and the tracker's run: e.g. p3o, sft, rm, dpo, ilql."""
    command: str
    """The command a user reruns to resume, e.g. `rlcf train`."""
    output_dir: Path
    resume: bool
    save_every: int
    progress: bool
    max_grad_norm: float
    mixed_precision: str
    max_nonfinite_steps: int
    report_to: tuple = ()
    tracker_config: dict = field(default_factory=dict)
    grad_accum: int = 1
    """Minibatches per optimiser step, when accelerate's `accumulate` counts them (the RL loop)."""

    def accelerator(self):
        """The run's accelerate.Accelerator (a missing tracker package is named before anything loads)."""
        return make_accelerator(gradient_accumulation_steps=self.grad_accum, mixed_precision=self.mixed_precision,
                                log_with=trackers(self.report_to), project_dir=str(self.output_dir))


class TrainingLoop:
    """One run's scaffold; see the module docstring for the order of calls."""

    def __init__(self, settings: LoopSettings, accelerator, run: RunDir, model, optimizer,
                 loop_state: Callable[[], dict] = dict):
        self.settings, self.accelerator, self.run = settings, accelerator, run
        self.model, self.optimizer = model, optimizer
        self.loop_state = loop_state
        """The loop's own state to checkpoint beside the weights (KL controller, reward scaler, epoch...)."""
        self.out = Path(settings.output_dir)
        self.guard = NonFiniteGuard(settings.max_nonfinite_steps)
        self.start_step = 0
        self.last_saved = 0
        self.log: MetricsLog | None = None
        self._signals: StopSignals | None = None

    def start(self, total_steps: int) -> dict:
        """Claim the folder, resume, prepare; returns the resumed checkpoint's state ({} on a fresh start)."""
        try:
            return self._start(total_steps)
        except BaseException:
            self.run.release()
            raise

    def _start(self, total_steps: int) -> dict:
        stop_grace_s()  # a bad RLCF_STOP_GRACE_S is refused before the folder is written
        acc = self.accelerator
        self.run.start(acc.is_main_process)  # everything has loaded: claim the folder
        acc.wait_for_everyone()
        state = {}
        ckpt = latest_checkpoint(self.out) if self.settings.resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.optimizer, acc.process_index, is_sharded(acc))
            self.start_step = state["step"]
            acc.print(f"resumed from {ckpt} (step {self.start_step} of {total_steps})")
        self.last_saved = self.start_step
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        if is_sharded(acc):
            register_entry_points(self.model)
            if ckpt is not None:  # each process's shard of the optimiser state, once the parameters are sharded
                load_sharded_optimizer(ckpt, self.model, self.optimizer)
        # metrics.jsonl and the trackers: a resumed run redoes the steps after its checkpoint, a fresh one all of them
        self.log = MetricsLog(self.out, acc, self.start_step, f"rlcf-{self.settings.name}",
                              self.settings.tracker_config, total_steps if self.settings.progress else None)
        return state

    @property
    def inner(self):
        """The model as built, unwrapped from accelerate's wrappers."""
        return self.accelerator.unwrap_model(self.model)

    def __enter__(self):
        self._signals = StopSignals("step", "writing a checkpoint", self.settings.command, self._resume_point)
        self._signals.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # an error or a stop: the run is over, another may take the folder
            self.run.release()
        return self._signals.__exit__(*exc)

    def _resume_point(self) -> str:
        if self.last_saved > 0:
            return (f"the last checkpoint, {self.out / CHECKPOINTS / f'step_{self.last_saved:06d}'}, is the resume "
                    f"point: run the same command again ({self.settings.command} with the same --output-dir and "
                    "settings) to resume from it")
        return "no checkpoint was written yet: the same command starts the run again"

    def save(self, step: int) -> None:
        save_checkpoint(self.out, step, self.model, self.optimizer, self.accelerator, self.loop_state(),
                        sharded=is_sharded(self.accelerator))
        self.last_saved = step

    def check_stop(self, step: int) -> None:
        """At a step boundary: a preempted job (SIGTERM, Ctrl-C) stops here with a checkpoint of `step` steps."""
        got = self._signals.requested(self.accelerator)
        if got:
            self._signals.boundary()  # the step has ended: the grace period is over, the checkpoint may take its time
            if self.last_saved != step:
                self.save(step)
            raise stopped(got, step, self.out / CHECKPOINTS,
                          f"{self.settings.command} with the same --output-dir and settings")

    def optimizer_step(self, loss, where: str) -> tuple[bool, float]:
        """Clip, check, step, zero. Returns (whether the step was taken, the gradient norm before clipping). A loss
        (mean over processes, so all agree) or gradient norm that is not finite skips the step; fp16's loss scaler
        skips its own overflow steps while it calibrates, so there only the loss is checked."""
        acc, s = self.accelerator, self.settings
        norm = float(acc.clip_grad_norm_(self.model.parameters(), s.max_grad_norm or math.inf))
        checked = {"loss": float(acc.reduce(loss.detach().float(), "mean"))}
        if s.mixed_precision != "fp16":
            checked["grad_norm"] = norm
        ok = self.guard.ok(checked, where)
        if ok:
            self.optimizer.step()
        self.optimizer.zero_grad()
        return ok, norm

    def end_step(self, step: int, total_steps: int) -> None:
        """After step `step` (0-based): a checkpoint when one is due, then a barrier."""
        every = self.settings.save_every
        if (every and (step + 1) % every == 0) or step + 1 == total_steps:
            self.save(step + 1)
        self.accelerator.wait_for_everyone()

    def finish(self, save: Callable[[Path, dict | None], None]) -> Path:
        """Close the log; write OUTPUT_DIR/final atomically on the main process, with a model card (README.md) and the
        run's config beside the weights. save(folder, state): state is the model's full state dict gathered from every
        process (several processes), else None."""
        self.log.close()
        acc = self.accelerator
        state = acc.get_state_dict(self.model) if acc.num_processes > 1 else None
        final = self.out / "final"
        if acc.is_main_process:
            needed = sum(p.numel() * p.element_size() for p in self.inner.parameters())
            note = (f"the last checkpoint, {self.out / CHECKPOINTS / f'step_{self.last_saved:06d}'}, is intact: the "
                    "same command resumes from it and writes the final model" if self.last_saved else "")
            try:
                with atomic_dir(final, needed=needed, note=note) as tmp:
                    save(tmp, state)
                    write_model_card(tmp, self.settings.tracker_config, self.out)  # final/README.md
            except BaseException:
                self.run.release()
                raise
        acc.wait_for_everyone()
        self.run.release()
        return final
