"""Evaluation during RL (`rlcf train --eval-every N`): every N steps the current policy answers held-out prompts.

Logged into the step's record of metrics.jsonl (and the trackers): `eval/reward_mean`, `eval/gold_mean` (when a gold
scorer is set), `eval/kl_k1` and `eval/kl_k3` (sequence KL to the reference, nats), `eval/length_mean`, and the cost
as its own phase, `perf/eval_s`, which `perf/step_s` does not include. A few (prompt, response, reward) rows go to
`samples.jsonl` and to the trackers as a text table (TensorBoard's text tab).

The held-out responses are sampled from a random stream of their own (seeded by the run's seed and the step), so
evaluating changes nothing of what training samples: a run with and without --eval-every trains the same, and a
resumed run evaluates the same samples. The reward scaler's statistics are not touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.tokens import left_pad
from ..files import append_text
from ..kl import sequence_kl
from .rollout import RolloutEngine, Timings

SAMPLES = "samples.jsonl"


@dataclass
class HeldOut:
    """Held-out prompts: the text the reward sees, their token ids, and each row's other columns (or None)."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    columns: list[dict] | None = None

    def shard(self, rank: int, world: int) -> "HeldOut":
        """This process's share; every process gets the same number of prompts (the remainder is left out)."""
        n = len(self.prompts) - len(self.prompts) % world
        return HeldOut(self.prompts[:n][rank::world], self.prompt_ids[:n][rank::world],
                       self.columns[:n][rank::world] if self.columns else None)


def evaluate_policy(engine: RolloutEngine, held: HeldOut, step: int, seed: int, accelerator, gold=None,
                    out_dir: Path | None = None, n_samples: int = 4) -> dict:
    """Sample the held-out prompts (this process's share) with the current policy; returns the eval/ metrics over
    every process's rows, and (main process) appends the first n_samples rows to OUTPUT_DIR/samples.jsonl."""
    t0 = time.perf_counter()
    mine = held.shard(accelerator.process_index, accelerator.num_processes)
    ids, mask = left_pad(mine.prompt_ids, engine.tokenizer.pad_token_id)
    ids, mask = ids.to(accelerator.device), mask.to(accelerator.device)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 1_000_003 + step)
        rollout = engine.run(mine.prompts, ids, mask, Timings(), need_old=True, columns=mine.columns, scale=False)
    g, m = accelerator.gather, rollout.response_mask
    record = {
        "eval/reward_mean": float(g(rollout.raw_scores.float()).mean()),
        "eval/kl_k1": float(g(sequence_kl(rollout.logprobs, rollout.ref_logprobs, m, "k1")).mean()),
        "eval/kl_k3": float(g(sequence_kl(rollout.logprobs, rollout.ref_logprobs, m, "k3")).mean()),
        "eval/length_mean": float(g(m.sum(1).float()).mean()),
        "eval/prompts": len(mine.prompts) * accelerator.num_processes,
    }
    gold_scores = None
    if gold is not None:
        gold_scores = gold(rollout.prompts, rollout.responses).to(accelerator.device)
        record["eval/gold_mean"] = float(g(gold_scores.float()).mean())
    if accelerator.is_main_process and out_dir is not None and n_samples:
        rows = [{"step": step, "prompt": p, "response": r, "reward": float(s)} |
                ({"gold": float(gold_scores[i])} if gold_scores is not None else {})
                for i, (p, r, s) in enumerate(zip(rollout.prompts, rollout.responses, rollout.raw_scores.tolist()))
                if i < n_samples]
        append_text(Path(out_dir) / SAMPLES, "".join(json.dumps(r) + "\n" for r in rows))
        if getattr(accelerator, "log_with", None):
            accelerator.log({"eval/samples": samples_table(rows)}, step=step)
    record["perf/eval_s"] = time.perf_counter() - t0
    return record


def samples_table(rows: list[dict]) -> str:
    """Markdown table of sample rows (TensorBoard renders it in its text tab)."""
    cell = lambda text: " ".join(str(text).split()).replace("|", "\\|")[:300]  # noqa: E731
    keys = [k for k in ("prompt", "response", "reward", "gold") if any(k in r for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in keys)
              + " |" for r in rows]
    return "\n".join(lines)


def truncate_samples(out_dir: Path, last_step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: drop their sample rows (and a torn last line)."""
    path = Path(out_dir) / SAMPLES
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line + "\n")
        except ValueError:
            continue
    path.write_text("".join(keep), encoding="utf-8")
