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

Also here: the tokenizing helpers SFT and DPO share (prompt with or without the chat template, response
ending in EOS, padding) and the response log-probs of a plain causal LM.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .accel import adamw, make_accelerator
from .checkpoint import CHECKPOINTS, atomic_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import to_dict
from .data import DataError
from .metrics_log import MetricsLog, trackers
from .rundir import RunDir
from .safety import NonFiniteGuard, StopSignals, stopped
from .validate import validate


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
    save: Callable[[Path], None]
    """Writes the final model (and its tokenizer) into the given folder."""
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
    """The config's types, ranges and rules, then the output folder (may it be started or resumed into?), all
    checked before anything loads; `RunDir.start()` writes there once everything has."""
    return RunDir(validate(cfg))


def run_stage(cfg, stage: Stage, run: RunDir | None = None) -> Path:
    """Train `stage.model` on `stage.rows` as configured by cfg (an SFTConfig, RMConfig or DPOStageConfig: its
    RunControl fields and optim) and return the final model's folder.
    run: the folder claimed by `claim_run(cfg)` before the stage loaded its data and model."""
    opt = cfg.optim
    run = claim_run(cfg) if run is None else run
    out = Path(cfg.output_dir)
    # optim.mixed_precision autocasts every loss_fn call (the reference's passes too); weights keep model.dtype
    accelerator = make_accelerator(mixed_precision=getattr(opt, "mixed_precision", "no"),
                                   log_with=trackers(getattr(cfg, "report_to", ())), project_dir=str(out))
    main = accelerator.is_main_process

    # 1. held-out split, and the length of the run in optimiser steps
    if stage.eval_rows is None:
        train_idx, eval_idx = split_rows(len(stage.rows), stage.eval_fraction, cfg.seed)
        held = [stage.rows[i] for i in eval_idx]
    else:
        train_idx, held = list(range(len(stage.rows))), stage.eval_rows
    plan_args = (opt.minibatch_prompts, opt.grad_accum, accelerator.process_index, accelerator.num_processes)
    steps_per_epoch = len(epoch_plan(train_idx, 0, cfg.seed, *plan_args))
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_idx)} training rows for {accelerator.num_processes} processes: too few")
    total_steps = steps_per_epoch * opt.epochs

    # 2. optimiser; resume from the newest checkpoint (weights, optimiser and RNG state)
    params = [p for p in stage.model.parameters() if p.requires_grad]
    optimizer = adamw(params, opt.lr, opt.betas, opt.weight_decay)
    run.start(main)  # everything has loaded: claim the folder
    accelerator.wait_for_everyone()
    start_step = 0
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        start_step = load_checkpoint(ckpt, stage.model, optimizer, accelerator.process_index)["step"]
        accelerator.print(f"resumed from {ckpt} (step {start_step} of {total_steps})")
    model, optimizer = accelerator.prepare(stage.model, optimizer)
    inner = accelerator.unwrap_model(model)
    # metrics.jsonl and the trackers: a resumed run redoes the steps after its checkpoint, a fresh one all of them
    log = MetricsLog(out, accelerator, start_step, f"rlcf-{stage.name}", getattr(cfg, "tracker_config", None) or
                     to_dict(cfg), total_steps if cfg.progress else None)

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
        log.write({"step": 0, "epoch": 0, **evaluate()}, advance=False)

    # 3. epochs x optimiser steps x minibatches
    guard = NonFiniteGuard(opt.max_nonfinite_steps)
    with StopSignals() as signals:
        plan, plan_epoch = None, -1
        last_saved = start_step
        for step in range(start_step, total_steps):
            got = signals.requested(accelerator)  # a preempted job stops here, at a step boundary, with a checkpoint
            if got:
                if last_saved != step:
                    save_checkpoint(out, step, model, optimizer, accelerator, {"epoch": step // steps_per_epoch,
                                                                              "stage": stage.name})
                command = getattr(cfg, "command", f"rlcf {stage.name}")
                raise stopped(got, step, out / CHECKPOINTS, f"{command} with the same --output-dir and settings")
            t_step = time.perf_counter()
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != plan_epoch:
                plan, plan_epoch = epoch_plan(train_idx, epoch, cfg.seed, *plan_args), epoch
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
            norm = float(accelerator.clip_grad_norm_(model.parameters(), opt.max_grad_norm or math.inf))
            if opt.max_grad_norm > 0:
                record["optim/grad_norm"] = norm
            # a non-finite loss or gradient: no step (fp16's loss scaler skips its own overflow steps)
            checked = {"loss": float(accelerator.reduce(loss.detach().float(), "mean"))}
            if getattr(opt, "mixed_precision", "no") != "fp16":
                checked["grad_norm"] = norm
            if guard.ok(checked, f"rlcf {stage.name}, step {step + 1}"):
                optimizer.step()
            else:
                record["optim/skipped"] = 1.0
            optimizer.zero_grad()

            # 4. log; evaluate at the end of each epoch; checkpoint
            n_rows = sum(len(idx) for idx in minibatches)
            record.update({key: float(torch.stack([m[key] for m in history if key in m]).mean())
                           for key in dict.fromkeys(key for m in history for key in m)})
            step_s = time.perf_counter() - t_step
            record.update({"perf/step_s": step_s, "perf/rows_per_s": n_rows * accelerator.num_processes / step_s})
            if (step + 1) % steps_per_epoch == 0:
                record.update(evaluate())
            first_loss = next((key for key in record if key.startswith("loss/")), None)
            log.write(record, {"loss": f"{record[first_loss]:.4f}"} if first_loss else None)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == total_steps:
                save_checkpoint(out, step + 1, model, optimizer, accelerator, {"epoch": epoch + 1, "stage": stage.name})
                last_saved = step + 1
            accelerator.wait_for_everyone()
    log.close()

    # 5. the final model, written elsewhere and renamed into place
    final = out / "final"
    if main:
        with atomic_dir(final) as tmp:
            stage.save(tmp)
    accelerator.wait_for_everyone()
    return final


# ---- tokenizing helpers shared by SFT and DPO ----------------------------------------------------------


def use_chat_template(tokenizer, chat_template: str) -> bool:
    """Whether string prompts are wrapped as a user turn: auto = when the tokenizer has a chat template."""
    if chat_template not in ("auto", "on", "off"):
        raise ValueError(f"chat_template={chat_template!r}: choose auto, on or off")
    if chat_template == "on" and not tokenizer.chat_template:
        raise DataError("chat_template=on, but the tokenizer has no chat template; use --chat-template off")
    return chat_template == "on" or (chat_template == "auto" and bool(tokenizer.chat_template))


def encode_prompt(tokenizer, prompt: str | list[dict], use_chat: bool) -> list[int]:
    """Prompt token ids. A message list (or a string when use_chat) goes through the chat template with the
    generation prompt, so the response starts where generation would start."""
    if isinstance(prompt, list) or use_chat:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def encode_response(tokenizer, text: str) -> list[int]:
    """Response token ids ending in EOS (appended unless the text already ends with it), so the model learns
    to stop, as generation does in the rollout."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set one (tokenizer.eos_token) in the model folder")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[B, T] ids and 0/1 mask of right-padded sequences; the mask comes from lengths, never from pad ids."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return ids, mask
