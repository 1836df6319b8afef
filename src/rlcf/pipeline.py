"""`rlcf pipeline`: the whole comparative-feedback pipeline, each stage cached.

  1. label  -- sample two responses per prompt from the initial policy; a judge picks the better one
  2. rm     -- a reward model trained on those comparisons (Bradley-Terry)
  3. train  -- RL (P3O by default) against the learned reward model, the gold judge logged beside it
  4. eval   -- the trained policy against the initial one on held-out prompts: gold score, KL, win-rate
  5. report -- plots and a Markdown report

A stage is skipped when its folder holds a finished result made with the same config and the same upstream
results (a fingerprint of both is stored beside the result), so a second run reuses everything and a
changed setting reruns only what it affects.

A stage stopped or killed mid-way is marked unfinished (its stamp says done: false, written atomically), so the next
run redoes it, resuming where it can: label from the prompts already judged (OUTPUT.partial), rm and train from their
last checkpoint; eval and the report are redone. One pipeline per output folder at a time (a lock beside it), and
what can be checked before the label stage is (the reward model's --rm.num-layers against its backbone).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .config import PipelineConfig, PlotConfig, to_dict, wire
from .errors import ConfigError
from .evaluate import run_eval, wilson_interval
from .files import RunLock, atomic_write, main_process, writing
from .label import run_label
from .plot import run_plot
from .rm import check_num_layers, run_rm
from .trainer import train

STAMP = ".rlcf-stage.json"


def _fingerprint(cfg, upstream: str) -> str:
    blob = json.dumps({"config": to_dict(cfg), "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_stamp(folder: Path) -> dict:
    """The stage's stamp; {} when there is none or it cannot be read (then the stage is redone)."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _cached(folder: Path, fingerprint: str, result: Path) -> bool:
    stamp = _read_stamp(folder)
    return result.exists() and stamp.get("fingerprint") == fingerprint and stamp.get("done", False)


def _stamp(folder: Path, fingerprint: str, done: bool, seconds: float = 0.0) -> None:
    atomic_write(folder / STAMP, json.dumps({"fingerprint": fingerprint, "done": done, "seconds": seconds}))


def run_pipeline(cfg: PipelineConfig) -> Path:
    if not cfg.output_dir.strip():
        raise ConfigError("--output-dir is empty; give the folder the pipeline writes into, e.g. runs/pipeline")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file, not a folder; give a new folder name")
    cfg = wire(cfg)
    lock = RunLock(out, "--output-dir").acquire() if main_process() else None  # one pipeline per folder at a time
    try:
        # what can fail late is checked before the first stage: the reward model's layers against its backbone
        check_num_layers(cfg.rm, "--rm.num-layers")
        return _run_stages(cfg, out)
    finally:
        if lock is not None:
            lock.release()


def _run_stages(cfg: PipelineConfig, out: Path) -> Path:
    stages = [
        ("label", cfg.label, out / "label", Path(cfg.label.output), run_label),
        ("rm", cfg.rm, out / "rm", Path(cfg.rm.output_dir) / "final", run_rm),
        ("train", cfg.train, out / "train", Path(cfg.train.output_dir) / "final", train),
        ("eval", cfg.eval, out / "eval", Path(cfg.eval.output), run_eval),
    ]
    upstream, times, reused, t_all = "", {}, [], time.perf_counter()
    for i, (name, stage_cfg, folder, result, runner) in enumerate(stages, 1):
        fingerprint = _fingerprint(stage_cfg, upstream)
        if _cached(folder, fingerprint, result):
            print(f"[{i}/5] {name}: reusing {result}", flush=True)
            times[name] = _read_stamp(folder).get("seconds", 0.0)
            reused.append(name)
        else:
            print(f"[{i}/5] {name} ...", flush=True)
            t0 = time.perf_counter()
            if name in ("rm", "train") and _read_stamp(folder).get("fingerprint") != fingerprint:
                _forget_stale_run(folder)  # a killed run with the same settings resumes from its checkpoint instead
            _stamp(folder, fingerprint, done=False)
            runner(stage_cfg)
            times[name] = time.perf_counter() - t0
            _stamp(folder, fingerprint, done=True, seconds=times[name])
            print(f"[{i}/5] {name}: done in {times[name]:.0f} s -> {result}", flush=True)
        upstream = fingerprint
    print("[5/5] report ...", flush=True)
    report = run_plot(PlotConfig(runs=(cfg.train.output_dir,), output_dir=str(out / "report"), title=cfg.title))
    summary = _summary(cfg, times, time.perf_counter() - t_all)
    summary["reused"] = reused
    atomic_write(out / "report" / "pipeline.json", json.dumps(summary, indent=1))
    _append_to_report(report, summary)
    _print_summary(summary, report)
    return report


def _forget_stale_run(folder: Path) -> None:
    """A stage folder made with other settings or inputs must not be resumed from: move it aside (never delete)."""
    if folder.exists() and any(folder.iterdir()):
        stale = folder.with_name(f"{folder.name}.stale-{int(time.time())}")
        with writing(folder):
            folder.rename(stale)
        print(f"      (previous {folder} was made with other settings; kept as {stale})", flush=True)


def _summary(cfg: PipelineConfig, times: dict, total_s: float) -> dict:
    label = json.loads(Path(cfg.label.output).with_suffix(".summary.json").read_text())
    rm_metrics = [json.loads(x) for x in (Path(cfg.rm.output_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rm_eval = [m for m in rm_metrics if "eval/accuracy" in m]
    ev = json.loads(Path(cfg.eval.output).read_text())
    rm_acc, rm_n = (rm_eval[-1]["eval/accuracy"], int(rm_eval[-1]["eval/examples"])) if rm_eval else (None, 0)
    return {
        "pairs": label["pairs"],
        "rm_heldout_accuracy": rm_acc,
        "rm_heldout_pairs": rm_n,
        # pairs of one prompt share responses, so the interval is optimistic (too narrow)
        "rm_heldout_ci95": list(wilson_interval(rm_acc, rm_n)) if rm_eval else None,
        "eval": ev,
        "seconds": {**{k: round(v, 1) for k, v in times.items()}, "total": round(total_s, 1)},
    }


def _append_to_report(report: Path, summary: dict) -> None:
    ev, pol, ref = summary["eval"], summary["eval"].get("policy", {}), summary["eval"].get("reference", {})
    wr = ev.get("win_rate") or {}

    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    acc, ci = summary["rm_heldout_accuracy"], summary.get("rm_heldout_ci95") or [None, None]
    agree = ev.get("reward_gold_agreement")
    lines = [
        "", "## Pipeline", "",
        f"- Pairs labelled by the judge: {summary['pairs']}; reward model held-out pairwise accuracy: {f(acc)} on "
        f"{summary.get('rm_heldout_pairs')} pairs (Wilson 95% {f(ci[0])} to {f(ci[1])}; optimistic, as pairs of one "
        "prompt share responses).",
    ]
    if agree:
        lines.append(f"- On the evaluation's pairs (trained against initial response to a held-out prompt), the reward "
                     f"model orders {f(agree['agreement'])} of the {agree['n']} pairs the gold judge separates as the "
                     f"gold judge does (95% {f(agree['ci95'][0])} to {f(agree['ci95'][1])}); well below its held-out "
                     "accuracy would mean the policy found responses the reward model overrates.")
    lines += [
        "",
        "| | trained policy | initial policy |", "|---|---|---|",
        f"| reward model score | {f(pol.get('reward/mean'))} | {f(ref.get('reward/mean'))} |",
        f"| gold score | {f(pol.get('gold/mean'))} | {f(ref.get('gold/mean'))} |",
        f"| response length (tokens) | {f(pol.get('response/length_mean'))} | {f(ref.get('response/length_mean'))} |",
        f"| KL to the initial policy, k1 / k3 (nats) | {f(pol.get('kl/k1_seq'))} / {f(pol.get('kl/k3_seq'))} | 0 |",
        "",
    ]
    if wr:
        lo, hi = wr.get("ci95", [None, None])
        lines.append(f"Win-rate of the trained policy against the initial one ({wr.get('judge')}): {f(wr.get('win_rate'))} "
                     f"(95% interval {f(lo)} to {f(hi)}; {wr.get('wins')} wins, {wr.get('ties')} ties, "
                     f"{wr.get('losses')} losses).")
    lines += sample_lines(Path(summary["eval"].get("samples_file", "")))
    lines.append(f"\nStage times (s, as first computed): {summary['seconds']}; reused by this run: "
                 f"{', '.join(summary.get('reused', [])) or 'none'}.")
    # run_plot has just written the report whole: a failed append (a full disk) leaves it as it was
    atomic_write(report, report.read_text() + "\n".join(lines) + "\n")


def sample_lines(samples_file: Path, n: int = 4) -> list[str]:
    """Markdown for the first n held-out prompts (not chosen by score): the initial and the trained policy's
    responses with their gold and reward-model scores, so a reader sees what the numbers mean."""
    if not samples_file.is_file():
        return []
    rows = [json.loads(x) for x in samples_file.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("sample", 0) == 0][:n]

    def quote(text: str) -> str:
        return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())

    def scores(r: dict, side: str) -> str:
        parts = [f"{name} {r[f'{side}_{key}']:.3f}" for key, name in (("gold", "gold"), ("reward", "reward model"))
                 if r.get(f"{side}_{key}") is not None]
        return f" ({', '.join(parts)})" if parts else ""

    lines = ["", f"### Samples: the first {len(rows)} held-out prompts, initial policy against trained policy", ""]
    for r in rows:
        lines += [f"**Prompt:** {r['prompt'].strip()}", "", f"Initial{scores(r, 'reference')}:", "",
                  quote(r["reference_response"]), "", f"Trained{scores(r, 'policy')}:", "", quote(r["policy_response"]), ""]
    return lines


def _print_summary(summary: dict, report: Path) -> None:
    ev = summary["eval"]
    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[f"{prefix}{k}"] = v

    walk(ev)
    pick = [k for k in flat if any(s in k for s in ("gold/mean", "reward/mean", "k1", "k3", "win_rate", "agreement"))]
    print("\nPipeline finished.")
    print(f"  pairs labelled            {summary['pairs']}")
    if summary["rm_heldout_accuracy"] is not None:
        print(f"  reward model accuracy     {summary['rm_heldout_accuracy']:.3f} (held-out pairs)")
    for k in pick:
        print(f"  {k:<26}{flat[k]:.4f}")
    print(f"  time                      {summary['seconds']}")
    print(f"\nReport: {report.resolve()}")
