"""The seeds' comparison on the embedded task: KL-reward frontiers of PPO, AWR, APA, P3O (V1, V2), RLOO, GRPO
and DPO, over several seeds and KL strengths, sharing one reward model and one evaluation.

  python benchmarks/frontier.py                      # 3 seeds x 3 strengths x 8 methods (hours on a CPU)
  python benchmarks/frontier.py --seeds 0 --strengths 1 --steps 4  # a smaller run; the docs say which

1. one labelled pair set and one reward model (the main job's stages, cached under OUT/shared)
2. every (method, strength, seed): train against the reward model (DPO: on the labelled pairs), then
   `rlcf eval` on the held-out demo prompts against the initial policy: VADER gold score, KL (k1, k3), win-rate
3. the frontier table and plot (gold score against KL to the initial policy) written to docs/frontier/,
   with the command line and the wall time
Runs already finished (final model and eval.json present) are reused, so the script can be resumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from rlcf.config import DPOStageConfig, PipelineConfig
from rlcf.evaluate import run_eval
from rlcf.label import run_label
from rlcf.offline import run_dpo
from rlcf.pipeline import wire
from rlcf.plot import collect_runs, write_report
from rlcf.rm import run_rm
from rlcf.trainer import train

# method -> (algo, fixed overrides, strength field, strengths: weak to strong KL control)
METHODS = {
    "ppo": ("ppo", {"ppo.kl_target": None}, "ppo.beta", (0.01, 0.05, 0.2)),
    "awr": ("awr", {}, "awr.inv_lam", (1.0, 0.5, 0.25)),
    "apa": ("apa", {}, "apa.lam", (0.03, 0.1, 0.3)),
    "p3o-v1": ("p3o", {"p3o.variant": "v1"}, "p3o.beta", (0.01, 0.05, 0.2)),
    "p3o-v2": ("p3o", {"p3o.variant": "v2"}, "p3o.beta", (0.01, 0.05, 0.2)),
    "rloo": ("rloo", {}, "rloo.beta", (0.01, 0.05, 0.2)),
    "grpo": ("grpo", {}, "grpo.beta", (0.01, 0.04, 0.2)),
    "dpo": ("dpo", {}, "beta", (0.05, 0.1, 0.5)),
}


def _set(cfg, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for p in path:
        cfg = getattr(cfg, p)
    setattr(cfg, last, value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/frontier")
    ap.add_argument("--docs", default="docs/frontier")
    ap.add_argument("--shared", default=None,
                    help="folder with label/pairs.jsonl and rm/final to reuse (e.g. runs/pipeline); default OUT/shared")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--strengths", nargs="+", type=int, default=[0, 1, 2],
                    help="which of each method's three strengths to run (0 weakest KL control, 1 default, 2 strongest)")
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10, help="RL steps per run (DPO: one epoch over the pairs)")
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--model", default="embedded")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)

    # 1. shared pairs and reward model: the main job's label and rm stages
    base = PipelineConfig(output_dir=args.shared or str(out / "shared"))
    base.train.model.name_or_path = args.model
    base.train.steps = args.steps
    base.train.progress = False
    base.train.rollout.prompts_per_step = args.prompts_per_step
    base.train.rollout.max_new_tokens = base.eval.rollout.max_new_tokens = args.max_new_tokens
    base = wire(base)
    if not Path(base.label.output).exists():
        run_label(base.label)
    if not (Path(base.rm.output_dir) / "final").exists():
        run_rm(base.rm)

    # 2. every (method, strength, seed)
    run_dirs = []
    for method in args.methods:
        algo, fixed, field_name, strengths = METHODS[method]
        for strength in [strengths[i] for i in args.strengths]:
            for seed in args.seeds:
                run_dir = out / f"{method}-{field_name.split('.')[-1]}{strength:g}-seed{seed}"
                run_dirs.append(run_dir)
                if (run_dir / "final").exists() and (run_dir / "eval.json").exists():
                    continue
                t0 = time.perf_counter()
                if algo == "dpo":
                    cfg = DPOStageConfig(data=base.label.output, beta=strength, seed=seed, output_dir=str(run_dir),
                                         progress=False, eval_fraction=0.0)
                    cfg.model.name_or_path = args.model
                    cfg.optim.lr = 3e-6
                    final = run_dpo(cfg)
                else:
                    cfg = copy.deepcopy(base.train)
                    cfg.algo, cfg.seed, cfg.output_dir = algo, seed, str(run_dir)
                    for key, value in fixed.items():
                        _set(cfg, key, value)
                    _set(cfg, field_name, strength)
                    final = train(cfg)
                ev = copy.deepcopy(base.eval)
                ev.model, ev.output, ev.seed, ev.max_prompts = str(final), str(run_dir / "eval.json"), 1000 + seed, args.eval_prompts
                run_eval(ev)
                print(f"{run_dir.name}: {time.perf_counter() - t0:.0f} s", flush=True)

    # 3. table and plot into the docs
    wall = time.perf_counter() - t_start
    runs = collect_runs(run_dirs)
    command = "python benchmarks/frontier.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    title = "Frontier on the embedded task: gold (VADER) score against KL to the initial policy"
    report = write_report(runs, args.docs, title=title)
    rm_metrics = [json.loads(x) for x in (Path(base.rm.output_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rm_acc = [m["eval/accuracy"] for m in rm_metrics if "eval/accuracy" in m]
    header = (
        f"Command: `{command}`  \n"
        f"Wall time: {wall / 60:.1f} min on {platform.machine()} ({torch.get_num_threads()} threads"
        f"{', CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ', CPU only'})  \n"
        f"Shared reward model: held-out pairwise accuracy {rm_acc[-1] if rm_acc else float('nan'):.3f}; "
        f"{args.steps} RL steps per run of {base.train.rollout.prompts_per_step} prompts x {base.train.rollout.group_size}; "
        f"evaluation on {args.eval_prompts} held-out prompts, win-rate judged by VADER against the initial policy.\n\n"
    )
    text = report.read_text()
    first_break = text.index("\n") + 1
    report.write_text(text[:first_break] + "\n" + header + text[first_break:])
    print(f"\nFrontier report: {report} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
