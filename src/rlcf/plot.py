"""`rlcf plot`: reward and KL over steps, the KL-reward frontier across runs, and a Markdown/HTML report.

What is read from each run folder (everything else is ignored):

- `config.yaml` (optional): `algo` (a `rlcf train` run; P3O is named with its variant, `p3o-v1` / `p3o-v2`,
  PPO with a KL target `ppo-adaptive`; `offline_data` set makes it `<algo>-offline`), `seed`,
  and the KL strength of the algorithm's section: `p3o.beta`, `ppo.kl_target` (or `ppo.beta` when the
  target is null), `apa.temperature`, `awr.inv_lam`, `rloo.beta`, `grpo.beta`. A config without `algo` is a stage:
  top-level `beta` -> dpo (strength `beta`), `model` as a string -> rm, else `data` -> sft.
- `metrics.jsonl` (required, at least one record): `step`, `reward/mean`, `gold/mean`, `kl/k1_seq`.
  A run's final value of each is the mean over the last `last_n` records that have the key.
- `eval.json` (optional, written by `rlcf eval --output RUN/eval.json`): every numeric leaf, flattened with
  '/' joins (`{"policy": {"reward/mean": 1}}` -> `policy/reward/mean`). When present it replaces the metrics'
  final values: reward from `policy/reward/mean`, gold from `policy/gold/mean`, KL from `policy/kl/k1_seq`
  (else `kl/k1_mean`), win-rate from `win_rate/win_rate` (each tries the names in `EVAL_KEYS` in order;
  a value eval.json lacks falls back to the metrics' value and the run's source reads `eval+metrics`).

Runs with the same algorithm and KL strength (different seeds) are averaged on the frontier, with standard
errors (sample std / sqrt(n)) as error bars.

A non-finite value (NaN, inf) of a plotted metric is left out of the plots and of the final values, and said so: one
line per run and metric on stderr, and a note in the report. The report folder's files are written atomically; a
full disk or read-only folder is one line naming the file (files.DiskWriteError).
"""

from __future__ import annotations

import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure

from .files import atomic_write, writing
from .losses.registry import ALGORITHMS

METRIC_KEYS = {"reward": "reward/mean", "gold": "gold/mean", "kl": "kl/k1_seq"}
"""Per-step metrics.jsonl keys behind each final value."""

EVAL_KEYS = {
    "reward": ("policy/reward/mean", "reward/mean"),
    "gold": ("policy/gold/mean", "gold/mean"),
    "kl": ("policy/kl/k1_seq", "kl/k1_mean", "kl/k1", "kl/k1_seq"),
    "win_rate": ("win_rate/win_rate", "win_rate"),
}
"""Flattened eval.json keys behind each final value, first found wins."""



class PlotError(ValueError):
    """A run folder that cannot be plotted; the message names the folder and what to do."""


@dataclass
class RunSummary:
    """One run folder, its per-step metrics and its final values (None where not measured)."""

    path: Path
    name: str
    algo: str
    strength_name: Optional[str]
    strength: Optional[float]
    seed: Optional[int]
    steps: int
    records: list[dict] = field(repr=False)
    final_reward: Optional[float] = None
    final_gold: Optional[float] = None
    final_kl: Optional[float] = None
    win_rate: Optional[float] = None
    nonfinite: dict[str, list] = field(default_factory=dict, repr=False)
    """metric key -> the steps whose value was not finite (left out of the plots and the final values)."""
    source: str = "metrics"
    """'eval': final values from eval.json; 'metrics': mean of the last steps; 'eval+metrics': eval.json
    lacked some of them, which came from the metrics."""
    eval: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def strength_label(self) -> str:
        return "-" if self.strength is None else f"{self.strength_name}={_fmt(self.strength)}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.algo}, {self.strength_label})" if self.strength is not None \
            else f"{self.name} ({self.algo})"


@dataclass
class GroupSummary:
    """Runs sharing an algorithm and KL strength (seeds): means and standard errors of their final values."""

    algo: str
    strength_name: Optional[str]
    strength: Optional[float]
    runs: list[RunSummary]
    mean: dict[str, Optional[float]]
    stderr: dict[str, Optional[float]]
    n: dict[str, int]

    @property
    def strength_label(self) -> str:
        return "-" if self.strength is None else f"{self.strength_name}={_fmt(self.strength)}"


# ---------------------------------------------------------------- reading

def read_metrics(folder: Path) -> list[dict]:
    """The records of FOLDER/metrics.jsonl; a missing, empty or corrupt file is a PlotError naming it."""
    path = Path(folder) / "metrics.jsonl"
    if not Path(folder).is_dir():
        raise PlotError(f"{folder}: run folder does not exist; pass the output_dir of a `rlcf train` "
                        "(or sft/rm/dpo) run")
    if not path.exists():
        raise PlotError(f"{folder}: no metrics.jsonl in this folder; is it a run folder? Pass the output_dir "
                        "that `rlcf train` (or sft/rm/dpo) wrote, not a parent or its final/ model folder")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}: line {n} is not valid JSON ({e}); fix or delete that line") from None
        if not isinstance(rec, dict):
            raise PlotError(f"{path}: line {n} is not a JSON object; fix or delete that line")
        records.append(rec)
    if not records:
        raise PlotError(f"{path} is empty: the run has not logged a step yet; let it finish at least one step "
                        "(or resume it with the same output_dir) before plotting")
    return records


def flatten_numeric(data, prefix: str = "") -> dict[str, float]:
    """Every int/float leaf of nested dicts as {'a/b/c': value}; booleans, strings and lists are left out."""
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_numeric(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and prefix:
        out[prefix] = float(data)
    return out


def read_eval(folder: Path) -> dict[str, float]:
    """FOLDER/eval.json flattened to numeric leaves; {} when there is none."""
    path = Path(folder) / "eval.json"
    if not path.exists():
        return {}
    try:
        return flatten_numeric(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise PlotError(f"{path} is not valid JSON ({e}); re-run `rlcf eval --output {path}` or delete it") from None


def _read_config(folder: Path) -> dict:
    path = Path(folder) / "config.yaml"
    if not path.exists():
        return {}

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PlotError(f"{path} is not valid YAML ({e}); restore the config the run wrote") from None
    return data if isinstance(data, dict) else {}


def _algo_and_strength(cfg: dict) -> tuple[str, Optional[str], Optional[float]]:
    algo = cfg.get("algo")
    if algo is None:  # a stage, not `rlcf train`
        if "beta" in cfg:
            return "dpo", "beta", _num(cfg.get("beta"))
        if isinstance(cfg.get("model"), str):
            return "rm", None, None
        return ("sft", None, None) if "data" in cfg else ("unknown", None, None)

    section = cfg.get(algo) if isinstance(cfg.get(algo), dict) else {}
    row = ALGORITHMS.get(algo)  # the registry row says which field is the strength and what names a variant
    label, name = str(algo), row.strength if row else "beta"
    if row and row.adaptive_strength and section.get(row.adaptive_strength) is not None:
        label, name = f"{algo}-adaptive", row.adaptive_strength
    if row and row.label_field and section.get(row.label_field):
        label = f"{algo}-{section[row.label_field]}"
    if section.get("ratio") == "token_mean":  # P3O's or RLOO's ratio over the mean token log-ratio
        label = f"{label}-tokmean"
    label = f"{label}-offline" if cfg.get("offline_data") else label
    value = _num(section.get(name)) if isinstance(section, dict) else None
    return label, (name if value is not None else None), value


def _num(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _nonfinite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def nonfinite_notes(runs: list[RunSummary]) -> list[str]:
    """One sentence per run and metric whose non-finite values were left out."""
    notes = []
    for run in runs:
        for key, steps in run.nonfinite.items():
            shown = ", ".join(str(s) for s in steps[:8]) + (f" and {len(steps) - 8} more" if len(steps) > 8 else "")
            notes.append(f"{run.name}: {len(steps)} non-finite value{'s' if len(steps) > 1 else ''} of {key} "
                         f"(step{'s' if len(steps) > 1 else ''} {shown}) left out of the plots and the final values")
    return notes


def _tail_mean(records: list[dict], key: str, last_n: int) -> Optional[float]:
    values = [v for v in (_num(r.get(key)) for r in records) if v is not None]
    return sum(values[-last_n:]) / len(values[-last_n:]) if values else None


def summarize_run(folder, last_n: int = 5, name: Optional[str] = None) -> RunSummary:
    """Read one run folder into a RunSummary (see the module docstring for the keys read)."""
    folder = Path(folder)
    records = read_metrics(folder)
    cfg = _read_config(folder)
    algo, strength_name, strength = _algo_and_strength(cfg)
    seed = cfg.get("seed")
    steps = max((int(r["step"]) for r in records if _num(r.get("step")) is not None), default=len(records))
    run = RunSummary(path=folder, name=name or folder.name, algo=algo, strength_name=strength_name,
                     strength=strength, seed=seed if isinstance(seed, int) else None, steps=steps, records=records)
    for what, key in METRIC_KEYS.items():
        setattr(run, f"final_{what}", _tail_mean(records, key, last_n))
        bad = [r.get("step", i + 1) for i, r in enumerate(records) if _nonfinite(r.get(key))]
        if bad:
            run.nonfinite[key] = bad
    run.eval = read_eval(folder)
    if run.eval:
        run.source = "eval"
        for what, keys in EVAL_KEYS.items():
            value = next((run.eval[k] for k in keys if k in run.eval and math.isfinite(run.eval[k])), None)
            attr = "win_rate" if what == "win_rate" else f"final_{what}"
            if value is not None:
                setattr(run, attr, value)
            elif getattr(run, attr) is not None:  # eval.json lacks it: keep the training metrics' value, say so
                run.source = "eval+metrics"
    return run


def collect_runs(paths, last_n: int = 5) -> list[RunSummary]:
    """RunSummary per folder, in the given order. Names are folder names, made unique with their parents."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise PlotError("no run folders given; pass --runs RUN_DIR [RUN_DIR ...] (the output_dir of each run)")
    short = [p.resolve().name for p in paths]
    names = [n if short.count(n) == 1 else "/".join(p.resolve().parts[-2:]) for p, n in zip(paths, short)]
    return [summarize_run(p, last_n, name) for p, name in zip(paths, names)]


def aggregate(runs: list[RunSummary]) -> list[GroupSummary]:
    """Group runs by (algo, strength); mean and standard error of each final value over the group's runs."""
    groups: dict[tuple, list[RunSummary]] = {}
    for run in runs:
        groups.setdefault((run.algo, run.strength_name, run.strength), []).append(run)
    out = []
    for (algo, sname, strength), members in groups.items():
        mean, stderr, n = {}, {}, {}
        for what in ("reward", "gold", "kl", "win_rate"):
            attr = "win_rate" if what == "win_rate" else f"final_{what}"
            values = [getattr(r, attr) for r in members if getattr(r, attr) is not None]
            n[what] = len(values)
            mean[what] = sum(values) / len(values) if values else None
            if len(values) > 1:
                var = sum((v - mean[what]) ** 2 for v in values) / (len(values) - 1)
                stderr[what] = math.sqrt(var / len(values))
            else:
                stderr[what] = 0.0 if values else None
        out.append(GroupSummary(algo, sname, strength, members, mean, stderr, n))
    out.sort(key=lambda g: (g.algo, g.strength if g.strength is not None else -math.inf))
    return out


def frontier_metric(runs: list[RunSummary]) -> str:
    """'gold' when every run with a KL has a gold score, else 'reward': one y quantity for all points."""
    on = [r for r in runs if r.final_kl is not None]
    return "gold" if on and all(r.final_gold is not None for r in on) else "reward"


# ---------------------------------------------------------------- plots

def _figure(ncols: int = 1):
    fig = Figure(figsize=(6.4 * ncols, 4.2), layout="constrained")
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _series(run: RunSummary, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(run.records):
        y = _num(r.get(key))
        if y is not None:
            xs.append(_num(r.get("step")) or float(i + 1))
            ys.append(y)
    return xs, ys


def plot_over_steps(runs: list[RunSummary], keys: list[str], path: Path, title: str) -> Optional[Path]:
    """One panel per metric key, one line per run; None (no file) when no run logged any of the keys."""
    keys = [k for k in keys if any(_series(r, k)[0] for r in runs)]
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        for run in runs:
            xs, ys = _series(run, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=run.label)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    fig.suptitle(title)
    _save_figure(fig, path)
    return path


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())


FRONTIER_LABELS = 3
"""Up to this many algorithms a frontier plot names each point's strength beside it; with more, the labels pile up
(a dozen below 6 nats), and the strengths are read from the report's tables instead."""


def plot_frontier(groups: list[GroupSummary], metric: str, path: Path) -> Optional[Path]:
    """frontier_figure written to `path`; None (no file) when no group has both a KL and the metric."""
    fig = frontier_figure(groups, metric)
    if fig is None:
        return None
    _save_figure(fig, path)
    return path


def frontier_figure(groups: list[GroupSummary], metric: str):
    """One point per (algo, strength) at (mean KL, mean metric) with stderr bars, joined per algo by KL. KL on a log
    axis when every KL is positive and they span more than 4x (a frontier's points crowd at small KL on a linear
    one); the legend beside the axes."""
    points = [g for g in groups if g.mean["kl"] is not None and g.mean[metric] is not None]
    if not points:
        return None
    fig, (ax,) = _figure()
    algos = sorted({g.algo for g in points})
    kls = [g.mean["kl"] for g in points]
    if min(kls) > 0 and max(kls) > 4 * min(kls):
        ax.set_xscale("log")

    colors = colormaps["tab10"]
    for i, algo in enumerate(algos):
        mine = sorted((g for g in points if g.algo == algo), key=lambda g: g.mean["kl"])
        xs = [g.mean["kl"] for g in mine]
        ys = [g.mean[metric] for g in mine]
        ax.errorbar(xs, ys, xerr=[g.stderr["kl"] for g in mine], yerr=[g.stderr[metric] for g in mine],
                    color=colors(i % 10), marker="o", capsize=3, label=algo)
        for g, x, y in zip(mine, xs, ys):
            if g.strength is not None and len(algos) <= FRONTIER_LABELS:
                ax.annotate(g.strength_label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xlabel("KL to the reference (k1, nats per sequence)")
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"KL-{metric} frontier")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ---------------------------------------------------------------- report

def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def _fmt_group(g: GroupSummary, what: str) -> str:
    if g.mean[what] is None:
        return "-"
    return _fmt(g.mean[what]) + (f" ± {_fmt(g.stderr[what])}" if g.n[what] > 1 else "")


RUN_COLUMNS = ["run", "algo", "KL strength", "seed", "steps", "final reward", "final gold", "final KL k1",
               "win-rate", "source"]
GROUP_COLUMNS = ["algo", "KL strength", "runs", "seeds", "final reward", "final gold", "final KL k1", "win-rate"]


def run_rows(runs: list[RunSummary]) -> list[list[str]]:
    return [[r.name, r.algo, r.strength_label, "-" if r.seed is None else str(r.seed), str(r.steps),
             _fmt(r.final_reward), _fmt(r.final_gold), _fmt(r.final_kl), _fmt(r.win_rate), r.source] for r in runs]


def group_rows(groups: list[GroupSummary]) -> list[list[str]]:
    return [[g.algo, g.strength_label, str(len(g.runs)),
             ", ".join("-" if r.seed is None else str(r.seed) for r in g.runs),
             *(_fmt_group(g, w) for w in ("reward", "gold", "kl", "win_rate"))] for g in groups]


def _md_table(columns: list[str], rows: list[list[str]]) -> str:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def write_report(runs: list[RunSummary], output_dir, title: str = "rlcf report", fmt: str = "md",
                 last_n: int = 5) -> Path:
    """PNGs (reward.png, kl.png, frontier.png; each only when there is data for it) and report.md/.html in
    OUTPUT_DIR, the images embedded by relative path. Returns the report's path."""
    if fmt not in ("md", "html"):
        raise PlotError(f"report format '{fmt}' is not known; use md or html")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise PlotError(f"--output-dir {out} is a file, not a folder: the report (report.{fmt} and its PNGs) goes "
                        f"into a folder; give a folder name, e.g. {out}-report")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    groups = aggregate(runs)
    metric = frontier_metric(runs)
    images = {
        "frontier": plot_frontier(groups, metric, out / "frontier.png"),
        "reward": plot_over_steps(runs, [METRIC_KEYS["reward"], METRIC_KEYS["gold"]], out / "reward.png",
                                  "reward over training"),
        "kl": plot_over_steps(runs, [METRIC_KEYS["kl"]], out / "kl.png", "KL to the reference over training"),
    }
    off = [g for g in groups if g.mean["kl"] is None or g.mean[metric] is None]
    notes = [
        f"Final values are the mean of the last {last_n} logged steps (source `metrics`), or the run's "
        "eval.json when it has one (source `eval`: policy reward/gold, k1 KL to the reference, win-rate).",
        "KL strength: beta (P3O, RLOO, GRPO, DPO, PPO with a fixed coefficient), kl_target (adaptive PPO), "
        "temperature (APA), inv_lam (AWR).",
        f"Frontier: y = final {metric}; runs of one algorithm and strength (seeds) are averaged, "
        "shown as mean ± standard error.",
    ]
    notes += [n + "." for n in nonfinite_notes(runs)]
    if off:
        notes.append(f"Not on the frontier (no KL or no {metric} measured; run `rlcf eval --output RUN/eval.json`): "
                     + ", ".join(f"{g.algo} {g.strength_label}" for g in off) + ".")
    sections = [
        ("Runs", run_rows(runs), RUN_COLUMNS, []),
        (f"KL-{metric} frontier", group_rows(groups), GROUP_COLUMNS, ["frontier"]),
        ("Over training", None, None, ["reward", "kl"]),
    ]
    if fmt == "md":
        parts = [f"# {title}", ""]
        for heading, rows, columns, imgs in sections:
            parts += [f"## {heading}", ""]
            parts += [f"![{k}]({images[k].name})\n" for k in imgs if images[k] is not None]
            if rows is not None:
                parts += [_md_table(columns, rows), ""]
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        path = out / "report.md"
    else:
        parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:72em;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style>",
                 "</head><body>", f"<h1>{html.escape(title)}</h1>"]
        for heading, rows, columns, imgs in sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            parts += [f"<p><img src=\"{images[k].name}\" alt=\"{k}\"></p>" for k in imgs if images[k] is not None]
            if rows is not None:
                parts.append(_html_table(columns, rows))
        parts += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>",
                                                                                                "</body></html>", ""]
        path = out / "report.html"
    atomic_write(path, "\n".join(parts))
    return path


def run_plot(cfg) -> Path:
    """`rlcf plot` (PlotConfig): read cfg.runs, write the PNGs and the report into cfg.output_dir."""
    runs = collect_runs(cfg.runs)
    for note in nonfinite_notes(runs):
        print(f"rlcf plot: {note}", file=sys.stderr, flush=True)
    return write_report(runs, cfg.output_dir, title=cfg.title, fmt=cfg.format)
