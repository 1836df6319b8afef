"""Seconds per training step on the embedded default, split into sampling, scoring, old/ref log-probs
and the update, for each algorithm given. Run by hand; writes a Markdown table.

    .venv/bin/python benchmarks/step_time.py --algos p3o ppo --steps 2 --out benchmarks/step_time.md

Setting: 16 prompts x 2 responses x 48 new tokens, 4 epochs, minibatches of 8 prompts, float32.
The first step includes one-off warm-up, so the table reports the mean of the steps after it.
No peer is timed here yet: comparing against TRL on the same work is left for the benchmark issue.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from rlcf.config import TrainConfig
from rlcf.trainer import train

KEYS = ["perf/step_s", "perf/generate_s", "perf/score_s", "perf/logprobs_s", "perf/update_s", "perf/samples_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--algos", nargs="+", default=["p3o", "ppo"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/step_time.md")
    args = ap.parse_args()
    rows = []
    for algo in args.algos:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(algo=algo, steps=args.steps, output_dir=tmp, progress=False, save_every=0, resume=False)
            train(cfg)
            records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        later = records[1:] or records
        rows.append((algo, {k: sum(r[k] for r in later) / len(later) for k in KEYS}))
    head = "| algo | " + " | ".join(k.removeprefix("perf/") for k in KEYS) + " |"
    lines = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; steps measured: {args.steps} (first excluded when more than one).", "",
             head, "|" + "---|" * (len(KEYS) + 1)]
    lines += [f"| {a} | " + " | ".join(f"{v[k]:.2f}" for k in KEYS) + " |" for a, v in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
