"""Learning-rate selection per method for the frontier (issue: the seeds' claim, tested fairly): each online method at
its middle KL strength, seed 0, at several learning rates, under the authors' update structure (several epochs over
small minibatches: with 16 prompts a step, 4 epochs of minibatches of 2 prompts give 32 optimiser steps a rollout, as
the P3O authors' 125M config), evaluated along training on a held-out split of the *training* prompts (never the test
prompts the frontier reports on).

  python benchmarks/lr_sweep.py --shared runs/pipeline --methods p3o-v2 apa ppo   # a part; finished runs are reused

1. the demo's training prompts split in two: all but the last --select-prompts train, the last ones select
2. every (method, lr): `rlcf train` in the seeds' top-blocks mode against the shared reward model (the main job's
   label and rm stages, from --shared), with --eval-every: VADER gold and KL (k1) to the initial policy on the
   selection prompts every few steps
3. per method, each learning rate's trace of (KL, gold) points, from the initial policy (KL 0, its gold on the same
   prompts); the rate chosen is the one with the highest gold at the matched KL, the largest KL every moving rate
   reached (gold interpolated linearly in KL along each trace); a rate whose policy never left the initial one
   (KL < --min-kl at every point) is reported and not chosen
4. docs/frontier/lr_selection.md (and .json): every rate's trace, the matched KL, the gold there and the choice, with
   the commands and the compute

Runs already finished (lr_run.json present) are reused; their weights are deleted unless --keep-weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from frontier import METHODS, _set, shared_stages
from matplotlib.figure import Figure

from rlcf.cli import preset
from rlcf.config import EvalConfig
from rlcf.demo.task import load_prompts as demo_prompts
from rlcf.evaluate import run_eval
from rlcf.pipeline import wire
from rlcf.trainer import train

ONLINE = [m for m, spec in METHODS.items() if spec[0] != "dpo"]


def run_name(method: str, lr: float) -> str:
    return f"{method}-lr{lr:g}"


def finished(run_dir: Path) -> bool:
    return (run_dir / "lr_run.json").exists()


def trace(run_dir: Path, start: tuple[float, float]) -> list[tuple[int, float, float]]:
    """(step, KL k1, gold) at each held-out evaluation of the run, after the initial policy's (0, 0, gold)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(0, *start)] + [(r["step"], r["eval/kl_k1"], r["eval/gold_mean"]) for r in rows if "eval/gold_mean" in r]


def gold_at(points: list[tuple[int, float, float]], kl: float) -> float | None:
    """Gold where the trace first reaches `kl`, linear in KL between the two evaluations around it."""
    for (_, k0, g0), (_, k1, g1) in zip(points, points[1:]):
        if k0 <= kl <= k1 and k1 > k0:
            return g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
    return None


def choose(traces: dict[float, list], min_kl: float) -> dict:
    """The matched KL (the largest KL every moving rate reached), each rate's gold there, and the best rate."""
    moving = {lr: pts for lr, pts in traces.items() if max(k for _, k, _ in pts) >= min_kl}
    if not moving:
        return {"matched_kl": None, "gold": {}, "chosen": None, "still": sorted(traces)}
    matched = min(max(k for _, k, _ in pts) for pts in moving.values())
    gold = {lr: gold_at(pts, matched) for lr, pts in moving.items()}
    ranked = sorted((g, lr) for lr, g in gold.items() if g is not None)
    best = ranked[-1][1] if ranked else None
    margin = ranked[-1][0] - ranked[-2][0] if len(ranked) > 1 else None
    return {"matched_kl": matched, "gold": gold, "chosen": best, "margin": margin,
            "still": sorted(set(traces) - set(moving))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/lr_sweep")
    ap.add_argument("--docs", default="docs/frontier")
    ap.add_argument("--shared", default="runs/pipeline", help="folder with label/pairs.jsonl and rm/final to reuse")
    ap.add_argument("--methods", nargs="+", default=ONLINE, choices=ONLINE)
    ap.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4, 3e-4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--minibatch-prompts", type=int, default=2)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--trainable-blocks", type=int, default=2)
    ap.add_argument("--select-prompts", type=int, default=32, help="training prompts held out to select on")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--min-kl", type=float, default=0.05, help="a rate below this KL at every point did not move")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--keep-weights", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    out, docs = Path(args.out), Path(args.docs)
    command = "python benchmarks/lr_sweep.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    log = out / "invocations.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        with open(log, "a") as f:
            f.write(json.dumps({"command": command, "started": time.strftime("%Y-%m-%d %H:%M")}) + "\n")

    # 1. the training prompts, split: the last --select-prompts are never trained on
    prompts = demo_prompts("train")
    fit, select = prompts[: -args.select_prompts], prompts[-args.select_prompts :]
    for name, part in (("fit", fit), ("select", select)):
        (out / f"prompts_{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in part))

    base = preset("pipeline")
    base.output_dir = args.shared
    base.train.model.name_or_path = args.model
    base.train.model.reference, base.train.model.trainable_blocks = "top_blocks", args.trainable_blocks
    base.train.steps, base.train.progress, base.train.save_every = args.steps, False, 10
    base.train.rollout.prompts_per_step = args.prompts_per_step
    base.train.rollout.max_new_tokens = args.max_new_tokens
    base.train.optim.epochs, base.train.optim.minibatch_prompts = args.epochs, args.minibatch_prompts
    base = wire(base)
    if not args.report_only:
        shared_stages(base)

    # the initial policy on the selection prompts: every trace starts there
    start_file = out / "initial.json"
    if not start_file.exists():
        ev = EvalConfig(model=args.model, reference=args.model, prompts=str(out / "prompts_select.jsonl"),
                        split="train", max_prompts=args.select_prompts, gold=base.eval.gold,
                        output=str(out / "initial_eval.json"))
        ev.rollout.max_new_tokens = args.max_new_tokens
        report = json.loads(Path(run_eval(ev)).read_text())
        start_file.write_text(json.dumps({"gold": report["policy"]["gold/mean"],
                                          "gold_stderr": report["policy"]["gold/stderr"]}))
    initial = json.loads(start_file.read_text())
    if "gold_stderr" not in initial:  # written before the standard error was kept
        initial["gold_stderr"] = json.loads((out / "initial_eval.json").read_text())["policy"]["gold/stderr"]
    start = (0.0, initial["gold"])

    # 2. every (method, lr)
    for method in [] if args.report_only else args.methods:
        algo, fixed, field_name, strengths = METHODS[method]
        for lr in args.lrs:
            run_dir = out / run_name(method, lr)
            if finished(run_dir):
                continue
            t0 = time.perf_counter()
            cfg = copy.deepcopy(base.train)
            cfg.algo, cfg.seed, cfg.output_dir, cfg.optim.lr = algo, 0, str(run_dir), lr
            cfg.prompts, cfg.eval_prompts, cfg.eval_split = str(out / "prompts_fit.jsonl"), str(out / "prompts_select.jsonl"), "train"
            cfg.eval_every, cfg.eval_max_prompts = args.eval_every, args.select_prompts
            for key, value in fixed.items():
                _set(cfg, key, value)
            _set(cfg, field_name, strengths[1])
            train(cfg)
            (run_dir / "lr_run.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "lr": lr}))
            if not args.keep_weights:
                for sub in ("checkpoints", "final"):
                    shutil.rmtree(run_dir / sub, ignore_errors=True)
            print(f"{run_dir.name}: {time.perf_counter() - t0:.0f} s", flush=True)

    # 3. the choice per method, from every finished run
    results, seconds = {}, 0.0
    for method in ONLINE:
        traces = {}
        for run_dir in sorted(out.glob(f"{method}-lr*")):
            if finished(run_dir) and run_dir.name == run_name(method, json.loads((run_dir / "lr_run.json").read_text())["lr"]):
                info = json.loads((run_dir / "lr_run.json").read_text())
                traces[info["lr"]] = trace(run_dir, start)
                seconds += info["seconds"]
        if traces:
            results[method] = {"traces": {f"{lr:g}": pts for lr, pts in sorted(traces.items())},
                               **{k: v for k, v in choose(traces, args.min_kl).items()}}
    if not results:
        print("no finished runs yet")
        return 0
    write_report(results, docs, args, start, seconds, log, initial["gold_stderr"])
    return 0


def plot_traces(results: dict, path: Path) -> None:
    """One panel per method: gold against KL along training, one line per rate, the matched KL dashed. KL on a
    symmetric-log axis (linear below 0.1 nats), since every trace starts at the initial policy's 0."""
    cols = min(4, len(results))
    rows = (len(results) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    for i, (method, r) in enumerate(results.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for lr, pts in r["traces"].items():
            ax.plot([k for _, k, _ in pts], [g for _, _, g in pts], marker="o", markersize=3,
                    label=f"lr {lr}" + (" (chosen)" if r["chosen"] == float(lr) else ""))
        if r["matched_kl"]:
            ax.axvline(r["matched_kl"], linestyle="--", color="grey", linewidth=1)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(left=0)
        ax.set_title(method)
        ax.set_xlabel("KL to the initial policy (nats)")
        ax.set_ylabel("gold (VADER)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)


def write_report(results: dict, docs: Path, args, start, seconds: float, log: Path, stderr: float) -> None:
    invocations = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    lines = [
        "# Learning rate per method (the fair frontier, part 1)", "",
        "Each online method at its middle KL strength, seed 0, under the authors' update structure: "
        f"{args.prompts_per_step} prompts x 2 samples a step, {args.epochs} epochs of minibatches of "
        f"{args.minibatch_prompts} prompts ({args.epochs * args.prompts_per_step // args.minibatch_prompts} optimiser "
        f"steps a rollout), {args.steps} steps, top {args.trainable_blocks} blocks trained, {args.max_new_tokens} new "
        f"tokens, against the main job's reward model. Evaluated every {args.eval_every} steps on the last "
        f"{args.select_prompts} of the demo's *training* prompts, which the runs never train on (the frontier reports "
        f"on the test prompts). The initial policy scores {start[1]:.3f} gold there.", "",
        "Choice: per method, the largest KL every rate that moved reached (the matched KL); each rate's gold there, "
        "linear in KL between the evaluations around it; the highest wins. A rate whose KL stayed under "
        f"{args.min_kl:g} nats did not move the policy and is not chosen. Noise: one evaluation's gold carries a "
        f"standard error of {stderr:.3f} over the {args.select_prompts} prompts (the initial policy's), so the "
        f"difference of two carries about {stderr * 2 ** 0.5:.2f}; a choice whose margin over the next rate is under "
        f"twice that ({2 * stderr * 2 ** 0.5:.2f}) is marked *within noise*.", "",
        "Commands:", "", *[f"- `{i['command']}` (started {i['started']})" for i in invocations], "",
        f"Compute: {seconds / 60:.0f} min for {sum(len(r['traces']) for r in results.values())} runs on "
        f"{platform.machine()} ({torch.get_num_threads()} threads per process).", "",
        "| method | lr | trace: step (KL nats, gold) | gold at matched KL | chosen |", "|---|---|---|---|---|"]
    for method, r in results.items():
        for lr, pts in r["traces"].items():
            path = ", ".join(f"{s}: ({k:.2f}, {g:.3f})" for s, k, g in pts[1:])
            at = r["gold"].get(float(lr))
            cell = ("did not move" if float(lr) in r["still"] else "-" if at is None
                    else f"{at:.3f} at {r['matched_kl']:.2f} nats")
            lines.append(f"| {method} | {lr} | {path} | {cell} | {'**yes**' if r['chosen'] == float(lr) else ''} |")
    noise = 2 * stderr * 2 ** 0.5

    def verdict(r: dict) -> str:
        if r["chosen"] is None:
            return "none"
        if len(r["traces"]) == 1:
            return f"{r['chosen']:g} (the only rate run so far)"
        if r["margin"] is None:
            return f"{r['chosen']:g} (the only rate that moved)"
        within = " (*within noise*)" if r["margin"] < noise else ""
        return f"{r['chosen']:g}, by {r['margin']:.3f}{within}"

    lines += ["", "Chosen rates: " + "; ".join(f"{m} {verdict(r)}" for m, r in results.items()) + "."]
    docs.mkdir(parents=True, exist_ok=True)
    plot_traces(results, docs / "lr_selection.png")
    lines += ["", "![gold against KL along training, one panel per method, one line per rate](lr_selection.png)"]
    (docs / "lr_selection.md").write_text("\n".join(lines) + "\n")
    (docs / "lr_selection.json").write_text(json.dumps(results, indent=1))
    print(f"lr selection: {docs / 'lr_selection.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
