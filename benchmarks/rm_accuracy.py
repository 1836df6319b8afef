"""The main job's reward model on freshly labelled pairs: how well does it order responses it never saw?

  python benchmarks/rm_accuracy.py                        # the main job's RM (runs/pipeline), after `rlcf pipeline`
  python benchmarks/rm_accuracy.py --rm base=A/final b=B/final   # several reward models on the same fresh pairs

The rm stage reports its accuracy on the pairs of a held-out share of the labelled prompts (38 prompts, 224 pairs
in the main job): few prompts, and a response appears in up to three pairs, so that number moves by several
points from one draw to the next. Here the same judge (VADER) labels fresh samples, K = 8 per prompt (all 28
pairs), of
  test      the demo task's held-out test prompts (64; never labelled, never trained on), and
  heldout   the rm stage's own held-out prompts (rebuilt from the pairs file and the RM's seed and
            eval_fraction), resampled,
and each reward model scores every distinct response once. Accuracy is over the pairs the judge separates, with
a standard error clustered over prompts (pairs of one prompt share responses), and split by the judge's score gap
(near-ties are hard for any model). Writes docs/rm_accuracy.md (--docs) with the command and times.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import yaml

from rlcf.config import LabelConfig
from rlcf.data import load_prompts
from rlcf.label import run_label
from rlcf.rewards import RewardSource
from rlcf.train.supervised import split_rows

GAPS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, 2.0))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def heldout_prompts(pipeline: Path) -> list[str]:
    """The prompts the rm stage held out: prompts in first-appearance order in its pairs file (as `rlcf rm` groups
    them), split with the RM's seed and eval_fraction."""
    rm_cfg = yaml.safe_load((pipeline / "rm" / "config.yaml").read_text())
    data = rm_cfg["data"] if isinstance(rm_cfg["data"], dict) else rm_cfg  # runs before 2026-11-22: flat keys
    path = data["path"] if isinstance(rm_cfg["data"], dict) else data["data"]
    prompts = list(dict.fromkeys(r["prompt"] for r in read_jsonl(Path(path))))
    _, held = split_rows(len(prompts), data["eval_fraction"], rm_cfg["seed"])
    return [prompts[i] for i in held]


def label(prompts: list[str], out: Path, args) -> Path:
    """K samples per prompt from the embedded model, all pairs judged by VADER (reused when already written)."""
    pairs = out / "pairs.jsonl"
    if pairs.exists():
        return pairs
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    cfg = LabelConfig(prompts=str(out / "prompts.jsonl"), judge="rlcf.demo.gold:vader", seed=args.seed,
                      output=str(pairs))
    cfg.rollout.group_size, cfg.rollout.max_new_tokens, cfg.rollout.prompts_per_step = args.k, args.max_new_tokens, 32
    return run_label(cfg)


def accuracy(rm: str, pairs: list[dict]) -> dict:
    """Pairwise accuracy of the reward model, each distinct (prompt, response) scored once; reward ties count 0.5."""
    scorer = RewardSource(model=rm)
    texts = list(dict.fromkeys((p["prompt"], side) for p in pairs for side in (p["chosen"], p["rejected"])))
    scores = scorer([t[0] for t in texts], [t[1] for t in texts]).tolist()
    score = dict(zip(texts, scores))
    by_prompt: dict[str, list[float]] = {}
    by_gap: dict[tuple, list[float]] = {g: [] for g in GAPS}
    for p in pairs:
        c, r = score[(p["prompt"], p["chosen"])], score[(p["prompt"], p["rejected"])]
        hit = 1.0 if c > r else 0.5 if c == r else 0.0
        by_prompt.setdefault(p["prompt"], []).append(hit)
        gap = p["chosen_score"] - p["rejected_score"]
        for lo, hi in GAPS:
            if lo <= gap < hi or (hi == GAPS[-1][1] and gap >= lo):
                by_gap[(lo, hi)].append(hit)
    n, k = len(pairs), len(by_prompt)
    acc = sum(sum(h) for h in by_prompt.values()) / n
    # ratio estimator's standard error, clustered over prompts
    var = sum((sum(h) - acc * len(h)) ** 2 for h in by_prompt.values()) / (k * (k - 1)) / (n / k) ** 2
    return {"accuracy": acc, "stderr": math.sqrt(var), "pairs": n, "prompts": k,
            "by_gap": {f"{lo:g}-{hi:g}": (sum(h) / len(h) if h else None, len(h)) for (lo, hi), h in by_gap.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", default="runs/pipeline", help="the main job's folder (its rm stage's split)")
    ap.add_argument("--rm", nargs="+", default=None,
                    help="reward model folders, each optionally NAME=FOLDER (default: PIPELINE/rm/final)")
    ap.add_argument("--out", default="runs/rm_accuracy")
    ap.add_argument("--docs", default="docs/rm_accuracy.md")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt; all K(K-1)/2 pairs are judged")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="as the main job's label stage")
    ap.add_argument("--seed", type=int, default=1, help="sampling seed (the main job labels with 0)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    pipeline, out = Path(args.pipeline), Path(args.out)
    rms = dict(a.split("=", 1) if "=" in a else (a, a) for a in (args.rm or [str(pipeline / "rm" / "final")]))
    sets = {"test": [p.text for p in load_prompts("demo", "prompt", "test")], "heldout": heldout_prompts(pipeline)}
    pairs = {name: read_jsonl(label(prompts, out / name, args)) for name, prompts in sets.items()}
    rm_metrics = read_jsonl(pipeline / "rm" / "metrics.jsonl")
    in_split = [m for m in rm_metrics if "eval/accuracy" in m][-1]

    rows_out = ["| reward model | pairs | prompts | accuracy | " + " | ".join(f"gap {lo:g}-{hi:g}" for lo, hi in GAPS)
                + " |", "|---|---|---|---|" + "---|" * len(GAPS)]
    results = {}
    for title, rm in rms.items():
        for name, rows in pairs.items():
            r = accuracy(rm, rows)
            results[f"{title}:{name}"] = r
            cells = [f"{a:.3f} ({n})" if a is not None else "-" for a, n in r["by_gap"].values()]
            rows_out.append(f"| {title} ({name}) | {r['pairs']} | {r['prompts']} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | "
                            + " | ".join(cells) + " |")
            print(rows_out[-1], flush=True)
    lines = ["# Reward-model accuracy on freshly labelled pairs", "",
             f"Command: `python benchmarks/rm_accuracy.py {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}` "
             f"({(time.perf_counter() - t0) / 60:.1f} min, labelling included unless reused).  ",
             f"Fresh pairs: K = {args.k} samples per prompt (seed {args.seed}, {args.max_new_tokens} new tokens), all "
             "pairs judged by VADER, ties dropped. `test`: the demo task's test prompts; `heldout`: the rm stage's "
             "own held-out prompts, resampled. ± is a standard error clustered over prompts.  ",
             f"The rm stage's own held-out figure for {pipeline / 'rm'}: {in_split['eval/accuracy']:.3f} on "
             f"{int(in_split['eval/examples'])} pairs.", "", *rows_out, "",
             "Gap: the judge's score difference (chosen - rejected), with the pair count in brackets."]

    Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
    Path(args.docs).write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
