"""The one supervised loop behind `rlcf sft`, `rlcf rm` and `rlcf dpo`, on accelerate.

A stage hands over a `Stage`: the module to train, its validated and tokenized rows, a `collate` that turns
a list of rows into a batch of tensors, a `loss_fn(model, batch) -> (loss, metrics)` and a `save` that writes
the final model into a folder. The loop owns the rest:
1. held-out split -> 2. optimiser, resume -> 3. epochs x optimiser steps x minibatches (grad accumulation,
grad-norm clip, AdamW) -> 4. log, evaluate at each epoch's end, checkpoint -> 5. the final model.

metrics.jsonl holds one record per optimiser step: `step`, `epoch`, the loss's own metrics (loss/, reward/)
averaged over the step's minibatches, optim/grad_norm and perf/. On the last step of each epoch the loss's
metrics on the held-out rows are added as eval/<name> (from <group>/<name>, e.g. reward/accuracy ->
eval/accuracy), averaged over held-out examples (`Stage.size`; eval/examples says how many); a record with
step 0 holds them before any training.

What surrounds the steps (resume, signals, the non-finite guard, checkpoints, the final save) is the scaffold the RL
loop shares (loop.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..config import OptimConfig, to_dict
from ..errors import DataError
from ..validate import validate
from .accel import adamw
from .loop import LoopSettings, TrainingLoop
from .rundir import RunDir


@dataclass
class Stage:
    """What a supervised stage plugs into `run_stage`."""

    name: str
    """Stage name for the progress bar and messages: sft, rm, dpo."""
    model: nn.Module
    """The module to train; its parameters with requires_grad are optimised and checkpointed."""
    rows: list
    """Validated, tokenized examples, one per dataset row, in file order."""
    collate: Callable[[list], dict[str, Tensor]]
    """A list of rows -> a batch of CPU tensors; the loop moves them to the device."""
    loss_fn: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]
    """(model, batch) -> (scalar loss, {'group/name': scalar tensor}); runs under no_grad for evaluation."""
    save: Callable[[Path, dict | None], None]
    """(folder, gathered): writes the final model (and its tokenizer) into the folder. gathered: the module's full
    state dict gathered from several processes (a sharded module cannot save itself), else None."""
    eval_fraction: float = 0.0
    """Share of the rows held out for the eval/ metrics (the command's data.eval_fraction)."""
    eval_rows: list | None = None
    """Rows of a separate evaluation file (data.eval_path): when given, all of `rows` train and these are scored
    for the eval/ metrics instead of a held-out share."""
    size: Callable[[list], int] = len
    """How many examples a list of rows holds; held-out metrics are averaged with these weights (default: one
    per row; `rlcf rm` counts pairs, as a row holds all pairs of one prompt)."""


def split_rows(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices; the held-out rows depend only on (n, eval_fraction, seed)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction={eval_fraction}: must be in [0, 1)")
    n_eval = 0 if eval_fraction == 0 else max(1, round(n * eval_fraction))
    if n - n_eval < 1:
        raise DataError(f"{n} rows leave none to train on after holding out {n_eval}; "
                        "add rows or lower --data.eval-fraction")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_eval:]), sorted(perm[:n_eval])


def epoch_plan(train_idx: list[int], epoch: int, seed: int, minibatch: int, grad_accum: int,
               rank: int = 0, world: int = 1) -> list[list[list[int]]]:
    """The epoch's optimiser steps, each a list of minibatches of row indices. The shuffle is a pure function of
    (seed, epoch), so a resumed run sees the same batches. With several processes each takes every world-th row
    (the remainder is dropped so all ranks take the same number of steps)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
    order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=g).tolist()]
    order = order[: len(order) - len(order) % world][rank::world]
    minibatches = [order[s : s + minibatch] for s in range(0, len(order), minibatch)]
    return [minibatches[s : s + grad_accum] for s in range(0, len(minibatches), grad_accum)]


def claim_run(cfg) -> RunDir:
    """The config's types, ranges and rules, then the output folder (its lock: one run per folder at a time, a second
    process refused naming the holder; may it be started or resumed into?), all checked before anything loads;
    `RunDir.start()` writes there once everything has, and the loop releases the lock when the run ends."""
    return RunDir(validate(cfg))


@dataclass
class StageConfig:
    """What the supervised loop reads of a command's config (sft, rm, dpo, and ILQL's offline training)."""

    optim: OptimConfig
    seed: int
    output_dir: str
    save_every: int
    resume: bool
    progress: bool
    report_to: tuple = ()
    command: str = ""
    """How a user resumes it; default `rlcf <stage name>`."""
    tracker_config: dict | None = None
    """The config the trackers record; default the whole command config."""

    @classmethod
    def of(cls, cfg, command: str = "", tracker_config: dict | None = None) -> "StageConfig":
        """From a command's config (its RunControl fields and optim)."""
        return cls(optim=cfg.optim, seed=cfg.seed, output_dir=cfg.output_dir, save_every=cfg.save_every,
                   resume=cfg.resume, progress=cfg.progress, report_to=cfg.report_to, command=command,
                   tracker_config=tracker_config if tracker_config is not None else to_dict(cfg))


def run_stage(cfg, stage: Stage, run: RunDir | None = None) -> Path:
    """Train `stage.model` on `stage.rows` and return the final model's folder. cfg: a StageConfig, or a command
    config (SFTConfig, RMConfig, DPOStageConfig) it is made from.
    run: the folder claimed by `claim_run(cfg)` before the stage loaded its data and model."""
    run = claim_run(cfg) if run is None else run
    sc = cfg if isinstance(cfg, StageConfig) else StageConfig.of(cfg)
    opt = sc.optim
    # optim.mixed_precision autocasts every loss_fn call (the reference's passes too); weights keep model.dtype
    settings = LoopSettings(
        name=stage.name, command=sc.command or f"rlcf {stage.name}", output_dir=Path(sc.output_dir), resume=sc.resume,
        save_every=sc.save_every, progress=sc.progress, max_grad_norm=opt.max_grad_norm,
        mixed_precision=opt.mixed_precision, max_nonfinite_steps=opt.max_nonfinite_steps, report_to=sc.report_to,
        tracker_config=sc.tracker_config)
    accelerator = settings.accelerator()

    # 1. held-out split, and the length of the run in optimiser steps
    if stage.eval_rows is None:
        train_idx, eval_idx = split_rows(len(stage.rows), stage.eval_fraction, sc.seed)
        held = [stage.rows[i] for i in eval_idx]
    else:
        train_idx, held = list(range(len(stage.rows))), stage.eval_rows
    plan_args = (opt.minibatch_prompts, opt.grad_accum, accelerator.process_index, accelerator.num_processes)
    steps_per_epoch = len(epoch_plan(train_idx, 0, sc.seed, *plan_args))
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_idx)} training rows for {accelerator.num_processes} processes: too few")
    total_steps = steps_per_epoch * opt.epochs

    # 2. optimiser; resume from the newest checkpoint (weights, optimiser and RNG state)
    params = [p for p in stage.model.parameters() if p.requires_grad]
    epoch_state = {"epoch": 0}
    loop = TrainingLoop(settings, accelerator, run, stage.model, adamw(params, opt.lr, opt.betas, opt.weight_decay),
                        lambda: {"epoch": epoch_state["epoch"], "stage": stage.name})
    start_step = loop.start(total_steps).get("step", 0)
    model, inner = loop.model, loop.inner

    def to_device(batch: dict) -> dict:
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    def evaluate() -> dict[str, float]:
        # every process scores all held-out rows with the unwrapped model (no collectives, same numbers)
        if not held:
            return {}
        t0 = time.perf_counter()
        inner.eval()
        sums: dict[str, float] = {}
        n = stage.size(held)
        with torch.no_grad(), accelerator.autocast():
            for s in range(0, len(held), opt.minibatch_prompts):
                part = held[s : s + opt.minibatch_prompts]
                _, m = stage.loss_fn(inner, to_device(stage.collate(part)))
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * stage.size(part)
        record = {"eval/" + k.split("/", 1)[-1]: v / n for k, v in sums.items()}
        record.update({"eval/examples": n, "perf/eval_s": time.perf_counter() - t0})
        return record

    if start_step == 0 and held:
        loop.log.write({"step": 0, "epoch": 0, **evaluate()}, advance=False)

    # 3. epochs x optimiser steps x minibatches
    plan, plan_epoch = None, -1
    with loop:
        for step in range(start_step, total_steps):
            epoch_state["epoch"] = step // steps_per_epoch  # a checkpoint written now has finished these epochs
            loop.check_stop(step)  # a preempted job stops here, at a step boundary, with a checkpoint
            t_step = time.perf_counter()
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != plan_epoch:
                plan, plan_epoch = epoch_plan(train_idx, epoch, sc.seed, *plan_args), epoch
            minibatches = plan[k]
            model.train()
            history: list[dict[str, Tensor]] = []
            for j, idx in enumerate(minibatches):
                batch = to_device(stage.collate([stage.rows[i] for i in idx]))
                # gradients are only all-reduced on the step's last minibatch
                last = j == len(minibatches) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss, m = stage.loss_fn(model, batch)
                    accelerator.backward(loss / len(minibatches))
                history.append({key: v.detach().float() for key, v in m.items()})
            record = {"step": step + 1, "epoch": epoch + 1}
            # a non-finite loss or gradient: no step (fp16's loss scaler skips its own overflow steps)
            stepped, norm = loop.optimizer_step(loss, f"rlcf {stage.name}, step {step + 1}")
            if opt.max_grad_norm > 0:
                record["optim/grad_norm"] = norm
            if not stepped:
                record["optim/skipped"] = 1.0

            # 4. log; evaluate at the end of each epoch; checkpoint
            n_rows = sum(len(idx) for idx in minibatches)
            record.update({key: float(torch.stack([m[key] for m in history if key in m]).mean())
                           for key in dict.fromkeys(key for m in history for key in m)})
            step_s = time.perf_counter() - t_step
            record.update({"perf/step_s": step_s, "perf/rows_per_s": n_rows * accelerator.num_processes / step_s})
            if (step + 1) % steps_per_epoch == 0:
                record.update(evaluate())
            first_loss = next((key for key in record if key.startswith("loss/")), None)
            log_postfix = {"loss": f"{record[first_loss]:.4f}"} if first_loss else None
            loop.log.write(record, log_postfix)
            epoch_state["epoch"] = epoch + 1
            loop.end_step(step, total_steps)

    # 5. the final model, written elsewhere and renamed into place
    return loop.finish(stage.save)
