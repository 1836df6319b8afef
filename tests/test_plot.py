"""`rlcf plot`: fake run folders with known numbers -> PNGs, report tables that match them, clear errors."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from rlcf.config import PlotConfig
from rlcf.plot import PlotError, aggregate, collect_runs, flatten_numeric, run_plot, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, algo: str, strength: float, seed: int, rewards, kls, golds=None,
             eval_json=None, extra_config=None) -> Path:
    """A run folder like `rlcf train` writes: config.yaml and one metrics.jsonl record per step."""
    run = root / name
    run.mkdir(parents=True)
    key = {"p3o": "beta", "ppo": "beta", "apa": "temperature", "awr": "inv_lam"}[algo]
    cfg = {"algo": algo, "seed": seed, "steps": len(rewards), algo: {key: strength}}
    if algo == "ppo":
        cfg["ppo"]["kl_target"] = None
    cfg.update(extra_config or {})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for i, (r, k) in enumerate(zip(rewards, kls)):
        rec = {"step": i + 1, "reward/mean": r, "kl/k1_seq": k, "kl/k3_seq": abs(k), "loss/policy": 0.1,
               "perf/step_s": 1.0}
        if golds is not None:
            rec["gold/mean"] = golds[i]
        lines.append(json.dumps(rec))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if eval_json is not None:
        (run / "eval.json").write_text(json.dumps(eval_json))
    return run


def md_table(text: str, heading: str) -> list[dict]:
    """The Markdown table under '## HEADING' as a list of {column: cell}."""
    lines = text.split(f"## {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i, line in enumerate(lines[start:], start) if not line.startswith("|")), len(lines))
    rows = lines[start:end]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split(" | ")]  # noqa: E731
    columns = split(rows[0])
    return [dict(zip(columns, split(line))) for line in rows[2:]]


def num(cell: str) -> float | None:
    return None if cell == "-" else float(cell.split("±")[0])


def err(cell: str) -> float:
    return float(cell.split("±")[1]) if "±" in cell else 0.0


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


@pytest.fixture
def runs(tmp_path):
    """P3O at one beta over two seeds (with gold), APA at two temperatures, AWR with an eval.json."""
    root = tmp_path / "runs"
    return [
        make_run(root, "p3o-s0", "p3o", 0.05, 0, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0, 1, 2, 3, 4, 5, 6],
                 golds=[0, 0, 1, 1, 1, 1, 1]),
        make_run(root, "p3o-s1", "p3o", 0.05, 1, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0], [0, 0, 1, 1, 1, 1, 1],
                 golds=[0, 0, 0, 0, 0, 0, 0]),
        make_run(root, "apa-a", "apa", 0.1, 0, [0.5, 1.5], [0.2, 0.4]),
        make_run(root, "apa-b", "apa", 1.0, 0, [0.1, 0.3], [0.05, 0.15]),
        make_run(root, "awr", "awr", 0.5, 3, [9.0, 9.0], [9.0, 9.0],
                 eval_json={  # the layout `rlcf eval` writes
                     "policy": {"reward/mean": 2.5, "reward/stderr": 0.1, "gold/mean": 0.75, "gold/stderr": 0.1,
                                "response/length_mean": 40, "kl/k1_seq": 1.25, "kl/k3_seq": 1.0},
                     "reference": {"reward/mean": 0.5, "response/length_mean": 30},
                     "kl": {"unit": "nats", "temperature": 1.0, "note": None},
                     "win_rate": {"judge": "gold", "n": 8, "win_rate": 0.625, "ci95": [0.3, 0.8]},
                     "n_prompts": 8}),
    ]


def test_collect_runs_reads_config_metrics_and_eval(runs):
    summary = {r.name: r for r in collect_runs(runs, last_n=5)}
    s0 = summary["p3o-s0"]
    assert (s0.algo, s0.strength_name, s0.strength, s0.seed, s0.steps) == ("p3o", "beta", 0.05, 0, 7)
    assert s0.final_reward == pytest.approx(4.0)  # mean of the last 5 steps: 2..6
    assert s0.final_kl == pytest.approx(4.0) and s0.final_gold == pytest.approx(1.0)
    assert s0.source == "metrics" and s0.win_rate is None
    apa = summary["apa-a"]
    assert (apa.strength_name, apa.strength) == ("temperature", 0.1)
    assert apa.final_reward == pytest.approx(1.0) and apa.final_gold is None  # fewer steps than last_n: all
    awr = summary["awr"]
    assert (awr.strength_name, awr.strength, awr.source) == ("inv_lam", 0.5, "eval")
    assert (awr.final_reward, awr.final_gold, awr.final_kl, awr.win_rate) == (2.5, 0.75, 1.25, 0.625)
    assert awr.eval["policy/response/length_mean"] == 40 and "win_rate/judge" not in awr.eval


def test_eval_json_alternative_names_and_partial_eval(tmp_path):
    run = make_run(tmp_path, "a", "p3o", 0.05, 0, [1.0, 3.0], [0.5, 0.5], golds=[0.0, 1.0],
                   eval_json={"policy": {"reward/mean": 7.0}, "kl": {"k1_mean": 2.0, "k3_mean": 1.5},
                              "win_rate": None})
    (summary,) = collect_runs([run])
    assert (summary.final_reward, summary.final_kl, summary.win_rate) == (7.0, 2.0, None)
    assert summary.final_gold == 0.5 and summary.source == "eval+metrics"  # gold only in the metrics


def test_flatten_numeric_keeps_only_numbers():
    flat = flatten_numeric({"a": {"b/c": 1, "d": True, "e": "x", "f": [1, 2]}, "g": 2.5})
    assert flat == {"a/b/c": 1.0, "g": 2.5}


def test_aggregate_averages_seeds_with_standard_error(runs):
    groups = {(g.algo, g.strength): g for g in aggregate(collect_runs(runs))}
    assert set(groups) == {("p3o", 0.05), ("apa", 0.1), ("apa", 1.0), ("awr", 0.5)}
    p3o = groups[("p3o", 0.05)]
    # seed 0: reward 4, kl 4, gold 1; seed 1: reward 1.8, kl 1, gold 0
    assert p3o.mean["reward"] == pytest.approx(2.9) and p3o.stderr["reward"] == pytest.approx(1.1)
    assert p3o.mean["kl"] == pytest.approx(2.5) and p3o.stderr["kl"] == pytest.approx(1.5)
    assert p3o.mean["gold"] == pytest.approx(0.5) and p3o.stderr["gold"] == pytest.approx(0.5)


def test_markdown_report_pngs_and_tables_match_the_metrics(runs, tmp_path):
    out = tmp_path / "report"
    path = run_plot(PlotConfig(runs=tuple(str(r) for r in runs), output_dir=str(out), title="HH sweep"))
    assert path == out / "report.md"
    for png in ("reward.png", "kl.png", "frontier.png"):
        assert is_png(out / png), png
    text = path.read_text()
    assert text.startswith("# HH sweep")
    for png in ("reward.png", "kl.png", "frontier.png"):
        assert f"]({png})" in text  # embedded by relative path

    rows = {r["run"]: r for r in md_table(text, "Runs")}
    assert set(rows) == {"p3o-s0", "p3o-s1", "apa-a", "apa-b", "awr"}
    expected = {  # run: (algo, strength, seed, steps, reward, gold, kl, win-rate, source)
        "p3o-s0": ("p3o", "beta=0.05", "0", "7", 4.0, 1.0, 4.0, None, "metrics"),
        "p3o-s1": ("p3o", "beta=0.05", "1", "7", 1.8, 0.0, 1.0, None, "metrics"),
        "apa-a": ("apa", "temperature=0.1", "0", "2", 1.0, None, 0.3, None, "metrics"),
        "apa-b": ("apa", "temperature=1", "0", "2", 0.2, None, 0.1, None, "metrics"),
        "awr": ("awr", "inv_lam=0.5", "3", "2", 2.5, 0.75, 1.25, 0.625, "eval"),
    }
    for name, (algo, strength, seed, steps, reward, gold, kl, win, source) in expected.items():
        row = rows[name]
        assert (row["algo"], row["KL strength"], row["seed"], row["steps"], row["source"]) == \
            (algo, strength, seed, steps, source), name
        for col, want in (("final reward", reward), ("final gold", gold), ("final KL k1", kl), ("win-rate", win)):
            got = num(row[col])
            assert (got is None) if want is None else got == pytest.approx(want, rel=1e-3), (name, col, row[col])

    heading = next(line[3:] for line in text.splitlines() if line.startswith("## KL-"))
    assert heading == "KL-reward frontier"  # APA runs have no gold, so the frontier uses reward for all
    groups = {(g["algo"], g["KL strength"]): g for g in md_table(text, heading)}
    assert set(groups) == {("p3o", "beta=0.05"), ("apa", "temperature=0.1"), ("apa", "temperature=1"), ("awr", "inv_lam=0.5")}
    p3o = groups[("p3o", "beta=0.05")]
    assert p3o["runs"] == "2" and p3o["seeds"] == "0, 1"
    assert num(p3o["final reward"]) == pytest.approx(2.9) and err(p3o["final reward"]) == pytest.approx(1.1)
    assert num(p3o["final KL k1"]) == pytest.approx(2.5) and err(p3o["final KL k1"]) == pytest.approx(1.5)
    assert num(p3o["final gold"]) == pytest.approx(0.5) and err(p3o["final gold"]) == pytest.approx(0.5)
    assert "±" not in groups[("apa", "temperature=0.1")]["final reward"]  # one run: no error bar
    assert num(groups[("awr", "inv_lam=0.5")]["win-rate"]) == pytest.approx(0.625)


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.imgs, self.cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_html_report(runs, tmp_path):
    out = tmp_path / "html"
    path = write_report(collect_runs(runs), out, title="A <b> title", fmt="html")
    assert path == out / "report.html"
    text = path.read_text()
    assert "<h1>A &lt;b&gt; title</h1>" in text
    parser = _Tables()
    parser.feed(text)
    assert sorted(parser.imgs) == ["frontier.png", "kl.png", "reward.png"]
    assert all(is_png(out / src) for src in parser.imgs)
    header = parser.rows[0]
    by_run = {row[0]: dict(zip(header, row)) for row in parser.rows[1:6]}
    assert float(by_run["p3o-s1"]["final reward"]) == pytest.approx(1.8)
    assert float(by_run["awr"]["final KL k1"]) == pytest.approx(1.25)
    p3o_group = next(row for row in parser.rows if row[:2] == ["p3o", "beta=0.05"])
    assert num(p3o_group[4]) == pytest.approx(2.9) and err(p3o_group[4]) == pytest.approx(1.1)


def test_frontier_uses_gold_when_every_run_has_it_and_stages_without_kl_are_listed(tmp_path):
    a = make_run(tmp_path, "p3o", "p3o", 0.1, 0, [1.0], [2.0], golds=[0.5])
    b = make_run(tmp_path, "ppo", "ppo", 0.05, 0, [1.0], [3.0], golds=[0.25])
    dpo = tmp_path / "dpo"
    dpo.mkdir()
    (dpo / "config.yaml").write_text(yaml.safe_dump({"beta": 0.1, "data": "pairs.jsonl", "seed": 2}))
    (dpo / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss/dpo": 0.6, "reward/margin": 0.3,
                                                   "reward/accuracy": 0.7}) + "\n")
    text = write_report(collect_runs([a, b, dpo]), tmp_path / "out").read_text()
    assert "## KL-gold frontier" in text
    rows = {r["run"]: r for r in md_table(text, "Runs")}
    assert (rows["dpo"]["algo"], rows["dpo"]["KL strength"], rows["dpo"]["seed"]) == ("dpo", "beta=0.1", "2")
    assert rows["ppo"]["KL strength"] == "beta=0.05"  # kl_target null: fixed beta is the strength
    assert "Not on the frontier" in text and "dpo beta=0.1" in text
    assert is_png(tmp_path / "out" / "frontier.png")


def test_same_folder_names_are_made_unique(tmp_path):
    a = make_run(tmp_path / "seed0", "run", "p3o", 0.05, 0, [1.0], [1.0])
    b = make_run(tmp_path / "seed1", "run", "p3o", 0.05, 1, [2.0], [1.0])
    assert [r.name for r in collect_runs([a, b])] == ["seed0/run", "seed1/run"]


def test_errors_name_the_folder_and_what_to_do(tmp_path):
    with pytest.raises(PlotError, match="no run folders given; pass --runs"):
        collect_runs([])
    missing = tmp_path / "nope"
    with pytest.raises(PlotError, match=re.escape(str(missing)) + ": run folder does not exist"):
        collect_runs([missing])
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(PlotError, match=re.escape(str(bare)) + ": no metrics.jsonl in this folder.*output_dir"):
        collect_runs([bare])
    (bare / "metrics.jsonl").write_text("\n")
    with pytest.raises(PlotError, match=re.escape(str(bare / "metrics.jsonl")) + " is empty.*at least one step"):
        collect_runs([bare])
    (bare / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "reward/m\n')
    with pytest.raises(PlotError, match="line 2 is not valid JSON"):
        collect_runs([bare])
    assert issubclass(PlotError, ValueError)  # the CLI prints ValueErrors as `rlcf plot: ...`, exit 2
    with pytest.raises(PlotError, match="format 'pdf'"):
        write_report([], tmp_path / "x", fmt="pdf")


def test_no_nan_in_summaries_from_nonfinite_values(tmp_path):
    run = make_run(tmp_path, "r", "p3o", 0.05, 0, [1.0, 3.0], [1.0, 1.0])
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().replace("3.0", "NaN"))
    (summary,) = collect_runs([run])
    assert summary.final_reward == 1.0 and not math.isnan(summary.final_kl)


def test_cli_plot_prints_the_report_path_and_errors_exit_2(runs, tmp_path, capsys):
    from rlcf.cli import main

    out = tmp_path / "cli"
    assert main(["plot", "--runs", str(runs[0]), str(runs[2]), "--output-dir", str(out), "--format", "html"]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    assert main(["plot", "--runs", str(tmp_path / "missing")]) == 2
    assert f"rlcf plot: {tmp_path / 'missing'}: run folder does not exist" in capsys.readouterr().err


def test_a_token_mean_ratio_is_its_own_method_in_plots(tmp_path):
    a = make_run(tmp_path, "v2", "p3o", 0.05, 0, [1.0], [2.0], extra_config={"p3o": {"beta": 0.05, "variant": "v2"}})
    b = make_run(tmp_path, "v2tok", "p3o", 0.05, 0, [1.0], [2.0],
                 extra_config={"p3o": {"beta": 0.05, "variant": "v2", "ratio": "token_mean"}})
    assert [r.algo for r in collect_runs([a, b])] == ["p3o-v2", "p3o-v2-tokmean"]


def test_a_crowded_frontier_uses_a_log_kl_axis_and_no_point_labels(tmp_path):
    """Four algorithms from 0.5 to 12 nats: KL on a log axis, and no strength label beside each point (they stacked
    on each other below 6 nats); two algorithms over a narrow KL range keep the linear axis and the labels."""
    from rlcf.plot import aggregate, frontier_figure

    crowded = [make_run(tmp_path / algo, f"{algo}-{s}", algo, s, 0, [1.0], [kl], golds=[0.1 * kl])
               for algo, base in (("p3o", 0.5), ("apa", 1.0), ("ppo", 2.0), ("awr", 3.0))
               for s, kl in ((0.01, 4 * base), (0.05, base))]
    (ax,) = frontier_figure(aggregate(collect_runs(crowded)), "gold").axes
    assert ax.get_xscale() == "log" and not ax.texts
    few = [make_run(tmp_path / "few", f"{algo}-{s}", algo, s, 0, [1.0], [kl], golds=[0.1])
           for algo in ("p3o", "ppo") for s, kl in ((0.01, 2.0), (0.05, 1.5))]
    (ax,) = frontier_figure(aggregate(collect_runs(few)), "gold").axes
    assert ax.get_xscale() == "linear" and len(ax.texts) == 4
