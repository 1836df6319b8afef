"""The APA paper's offline comparison on the embedded task: ILQL, offline APA and offline AWR trained on the same
labelled pairs (the main job's `rlcf label` output, each pair two rows rewarded +1 chosen / -1 rejected), each
evaluated by `rlcf eval` on the held-out prompts against the initial policy (VADER gold score, KL, VADER-judged
win-rate). Writes docs/offline/report.md with the command and the wall time.

  python benchmarks/offline.py --pairs runs/pipeline/label/pairs.jsonl

All three see the same rows in the same top-blocks mode. ILQL runs `--epochs` passes over the rows in minibatches
of 16 rows; APA and AWR run the same number of rows (steps x 16 prompts, one response each). Finished runs (with
eval.json) are reused.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from pathlib import Path

from rlcf.cli import preset
from rlcf.config import TrainConfig
from rlcf.evaluate import run_eval
from rlcf.trainer import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="runs/pipeline/label/pairs.jsonl")
    ap.add_argument("--out", default="runs/offline")
    ap.add_argument("--docs", default="docs/offline")
    ap.add_argument("--max-pairs", type=int, default=512, help="first N pairs (2N rows)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--trainable-blocks", type=int, default=2)
    ap.add_argument("--ilql-beta", type=float, default=1.0)
    ap.add_argument("--ilql-alpha", type=float, default=0.1,
                    help="Polyak rate of the target Q heads (trlX: 0.001, for runs of thousands of steps; at 0.001 "
                         "a run of 64 steps leaves the targets, and so the decoding advantage, near their random start)")
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=["ilql", "apa", "awr"])
    args = ap.parse_args(argv)
    command = "python benchmarks/offline.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out, docs = Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    lines = [json.loads(x) for x in Path(args.pairs).read_text().splitlines() if x.strip()][: args.max_pairs]
    pairs = out / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in lines))
    rows = 2 * len(lines)

    main_job = preset("pipeline")
    results = {}
    for method in args.methods:
        run_dir = out / method
        t0 = time.perf_counter()
        if not (run_dir / "eval.json").exists():
            cfg = TrainConfig(algo=method, offline_data=str(pairs), output_dir=str(run_dir), progress=False,
                              save_every=0)
            cfg.model.reference, cfg.model.trainable_blocks = "top_blocks", args.trainable_blocks
            cfg.model.critic = "value_head"
            cfg.rollout.max_new_tokens = 64
            cfg.optim.lr = args.lr
            if method == "ilql":
                cfg.optim.epochs, cfg.optim.minibatch_prompts = args.epochs, 16
                cfg.ilql.beta, cfg.ilql.alpha = args.ilql_beta, args.ilql_alpha
            else:  # the same rows: steps x 16 prompts, one fixed response each, one pass (APA paper: 1/lam = 1)
                cfg.steps = math.ceil(args.epochs * rows / 16)
                cfg.rollout.prompts_per_step, cfg.optim.epochs = 16, 1
                cfg.apa.lam, cfg.awr.inv_lam = 1.0, 1.0
            final = train(cfg)
            ev = copy.deepcopy(main_job.eval)
            ev.model, ev.reference, ev.output = str(final), "embedded", str(run_dir / "eval.json")
            ev.max_prompts, ev.rollout.max_new_tokens = args.eval_prompts, 40
            run_eval(ev)
            (run_dir / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        results[method] = json.loads((run_dir / "eval.json").read_text())

    table = ["| method | gold (VADER) | +- se | gold initial | KL k1 (nats) | win-rate vs initial | 95% interval | "
             "wins-ties-losses | train + eval (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for method, rep in results.items():
        pol, ref, wr = rep["policy"], rep["reference"], rep.get("win_rate") or {}
        ci = wr.get("ci95") or [math.nan, math.nan]
        timing = out / method / "seconds.json"
        secs = json.loads(timing.read_text())["seconds"] if timing.exists() else math.nan
        name = f"ilql (beta {args.ilql_beta:g})" if method == "ilql" else f"{method}-offline"
        table.append(
            f"| {name} | {pol['gold/mean']:.3f} | {pol['gold/stderr']:.3f} | {ref['gold/mean']:.3f} | "
            f"{pol['kl/k1_seq']:.2f} | {wr.get('win_rate', math.nan):.3f} | {ci[0]:.2f} to {ci[1]:.2f} | "
            f"{wr.get('wins', '?')}-{wr.get('ties', '?')}-{wr.get('losses', '?')} | {secs:.0f} |")
    report = [
        "# Offline comparison on the embedded task: ILQL, offline APA, offline AWR", "",
        f"Command: `{command}`  ",
        f"Data: the first {len(lines)} pairs of `{args.pairs}` ({rows} rows, +1 chosen / -1 rejected); "
        f"{args.epochs} pass(es) over the rows, top {args.trainable_blocks} blocks trained, lr {args.lr:g}; ILQL "
        f"with trlX's defaults but alpha {args.ilql_alpha:g}, decoding beta {args.ilql_beta:g}; APA and AWR with "
        f"1/lam = 1 (the APA paper's offline setting) and a value head.  ",
        f"Evaluation: {args.eval_prompts} held-out demo prompts, 40 new tokens, gold = VADER, win-rate against the "
        f"initial policy judged by VADER (ties 0.5), Wilson 95% interval.  ",
        f"Wall time of this invocation: {(time.perf_counter() - t_start) / 60:.1f} min.", "",
        *table, "",
    ]
    (docs / "report.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
