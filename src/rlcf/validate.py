"""Config checks that run before any file is written or any model loads: every field's type (YAML reads
`1e-5` as a string, `ten` is not a number), its range, and the rules between fields (K >= 2 for pairwise
and group algorithms). Each problem is one line naming the option, the value and what is allowed.

Imports only the standard library and config.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from typing import Any, Literal, Union

from . import config as C
from .config import wire
from .errors import ConfigError
from .losses.registry import ALGORITHMS, offline_algorithms
from .trackers import trackers


def _option(path: str) -> str:
    return "--" + path.replace("_", "-")


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or None" if type(None) in args else "")
    if origin is tuple:
        return "a list of " + (_describe(args[0]) + "s" if args and args[-1] is Ellipsis else f"{len(args)} values")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


_NO = object()


def coerce(value, tp):
    """`value` as type `tp`, or _NO. Numbers in strings (YAML's `1e-5`) become numbers; nothing else is guessed."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _NO
    if origin in (Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _NO
        for a in args:
            if a is not type(None):
                out = coerce(value, a)
                if out is not _NO:
                    return out
        return _NO
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _NO
        kinds = [args[0]] * len(value) if args and args[-1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            return _NO
        out = tuple(coerce(v, k) for v, k in zip(value, kinds))
        return _NO if any(o is _NO for o in out) else out
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp in (int, float):  # bools are not numbers here; a number in a string (YAML's 1e-5) is read as one
        if isinstance(value, bool):
            return _NO
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                return _NO
        if tp is float and isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, int) or isinstance(value, float) and value.is_integer():
            return int(value)
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    return value


def check_types(cfg, where: str = "", fix: bool = True, yaml_file: str | None = None):
    """Check (and, with fix, convert in place) every field of a config dataclass against its annotation.
    yaml_file: name the key in that file rather than the command-line option."""
    for f in dataclasses.fields(cfg):
        path = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, path, fix, yaml_file)
            continue
        tp = _hints(type(cfg))[f.name]
        out = coerce(value, tp)
        if out is _NO:
            shown = f"{value!r}" + (f" (a {type(value).__name__})" if not isinstance(value, (int, float)) or
                                    isinstance(value, bool) else "")
            name = f"{yaml_file}: {path}" if yaml_file else _option(path)
            raise ConfigError(f"{name}: expected {_describe(tp)}, got {shown}")
        if fix and out is not value:
            object.__setattr__(cfg, f.name, out)
    return cfg


_RANGES = {
    "ge": (lambda v, lo: v >= lo, "at least {0}"),
    "gt": (lambda v, lo: v > lo, "greater than {0}"),
    "closed": (lambda v, lo, hi: lo <= v <= hi, "in [{0}, {1}]"),
    "open": (lambda v, lo, hi: lo < v < hi, "in ({0}, {1})"),
    "closed_open": (lambda v, lo, hi: lo <= v < hi, "in [{0}, {1})"),
    "open_closed": (lambda v, lo, hi: lo < v <= hi, "in ({0}, {1}]"),
    "each_closed_open": (lambda v, lo, hi: all(lo <= x < hi for x in v), "each in [{0}, {1})"),
}
"""A field's range as config.py states it (metadata `range`: kind, bounds) -> (test, what is allowed)."""


def check_ranges(cfg, where: str = "") -> None:
    """Every field against the range config.py states beside it."""
    for f in dataclasses.fields(cfg):
        path = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, path)
        elif "range" in f.metadata and value is not None:
            kind, *bounds = f.metadata["range"]
            test, allowed = _RANGES[kind]
            allowed = allowed.format(*bounds)
            ok = test(value, *bounds)
            if isinstance(value, float) and not math.isfinite(value):
                ok = False
            if not ok:
                raise ConfigError(f"{_option(path)}={value!r}: must be {allowed}")


def _path(value) -> str | None:
    """`value` as an absolute path when it names something on this disk (not 'demo', 'embedded' or a hub id)."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = os.path.abspath(os.path.expanduser(value))
    return path if os.path.exists(path) else None


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _inputs(cfg) -> dict[str, str]:
    """option -> existing path, for every file or folder a command reads."""
    named = {
        C.TrainConfig: lambda c: {"--model.name-or-path": c.model.name_or_path, "--prompts": c.prompts,
                                  "--offline-data": c.offline_data, "--reward.model": c.reward.model},
        C.SFTConfig: lambda c: {"--model.name-or-path": c.model.name_or_path, "--data.path": c.data.path,
                                "--data.eval-path": c.data.eval_path},
        C.DPOStageConfig: lambda c: {"--model.name-or-path": c.model.name_or_path, "--data.path": c.data.path,
                                     "--data.eval-path": c.data.eval_path},
        C.RMConfig: lambda c: {"--model": c.model, "--data.path": c.data.path, "--data.eval-path": c.data.eval_path},
        C.LabelConfig: lambda c: {"--prompts": c.prompts, "--model.name-or-path": c.model.name_or_path,
                                  "--judge-model": c.judge_model},
        C.EvalConfig: lambda c: {"--prompts": c.prompts, "--model": c.model, "--reference": c.reference,
                                 "--reward-model": c.reward_model},
    }.get(type(cfg), lambda c: {})(cfg)
    return {option: path for option, value in named.items() if (path := _path(value)) is not None}


def _first_record(path: str):
    """The first non-blank line of a text file parsed as JSON (None: empty file; _NO: not JSON)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    return json.loads(line)
    except (OSError, ValueError):
        return _NO
    return None


def _ours(path: str, kind: str) -> bool:
    """Whether an existing output file is one this command wrote earlier (so it may be replaced): `rlcf label`'s
    pairs (JSON lines with chosen_score and rejected_score), `rlcf eval`'s report (a JSON object with policy and
    reference) or its samples (JSON lines with policy_response). An empty file counts as one."""
    if kind == "eval":
        try:
            with open(path) as f:
                text = f.read(1 << 24)
            report = json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return False
        return isinstance(report, dict) and (not report or {"policy", "reference"} <= report.keys())
    first = _first_record(path)
    keys = {"label": {"chosen_score", "rejected_score"}, "samples": {"policy_response"}}[kind]
    return first is None or (isinstance(first, dict) and keys <= first.keys())


def _check_outputs(cfg) -> None:
    """Where a command writes: not empty, never one of its own inputs, and never over a file it did not write.

    - train, sft, rm, dpo: --output-dir must not be an input (a model folder, a data file); with --overwrite, no
      input may lie inside it (the folder is moved aside).
    - label, eval: --output (and the files written beside it: label's .summary.json and .partial, eval's
      .samples.jsonl) must not be an input; an existing file there is replaced only when it is an earlier output of
      the same command (see _ours); anything else is refused: delete it or give another --output.
    - plot: --output-dir must not be a file.
    """
    if isinstance(cfg, (C.LabelConfig, C.EvalConfig)):
        if not cfg.output.strip():
            example = "runs/label/pairs.jsonl" if isinstance(cfg, C.LabelConfig) else "runs/eval/eval.json"
            raise ConfigError(f"--output is empty; give the file to write, e.g. {example}")
        out = os.path.abspath(os.path.expanduser(cfg.output))
        stem = os.path.splitext(out)[0]
        written = ({out: "label", stem + ".summary.json": None, out + ".partial": None}
                   if isinstance(cfg, C.LabelConfig) else {out: "eval", stem + ".samples.jsonl": "samples"})
        for option, path in _inputs(cfg).items():
            for target in written:
                if os.path.exists(target) and _same(target, path) or target == path:
                    what = "--output" if target == out else f"{target} (written beside --output)"
                    raise ConfigError(f"{what} is {option} {path}, an input of this command: it would be written "
                                      "over; give another --output")
        if os.path.isdir(out):
            name = "pairs.jsonl" if isinstance(cfg, C.LabelConfig) else "eval.json"
            raise ConfigError(f"--output {cfg.output} is a folder; give a file name, e.g. "
                              f"{os.path.join(cfg.output, name)}")
        command = "rlcf label" if isinstance(cfg, C.LabelConfig) else "rlcf eval"
        for target, kind in written.items():
            if kind and os.path.isfile(target) and not _ours(target, kind):
                raise ConfigError(f"--output: {target} exists and is not an earlier `{command}` output; refusing to "
                                  "replace it: delete it or give another --output")
        return
    if not isinstance(cfg, (C.RunControl, C.PlotConfig)):
        return
    if not cfg.output_dir.strip():
        raise ConfigError("--output-dir is empty; give the folder to write into, e.g. runs/my-run")
    out = os.path.abspath(os.path.expanduser(cfg.output_dir))
    if isinstance(cfg, C.PlotConfig):
        if os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--output-dir {cfg.output_dir} is a file, not a folder: the report (report.md or .html "
                              f"and its PNGs) goes into a folder; give a folder name, e.g. {cfg.output_dir}-report")
        return
    for option, path in _inputs(cfg).items():
        if _same(out, path) if os.path.exists(out) else out == path:
            raise ConfigError(f"--output-dir {cfg.output_dir} is {option}, an input of this run: the run would write "
                              "into it; give another --output-dir")
        if cfg.overwrite and (path + os.sep).startswith(out.rstrip(os.sep) + os.sep):
            raise ConfigError(f"--overwrite would move {cfg.output_dir} aside, and {option} {path} lies in it; give "
                              "another --output-dir (or move the input out of it)")


def check_rules(cfg) -> None:
    """The rules between fields."""
    _check_outputs(cfg)
    if isinstance(cfg, C.TrainConfig):
        k, row = cfg.rollout.group_size, ALGORITHMS.get(cfg.algo)
        if cfg.offline_data is None and row is not None and k < row.min_group:
            raise ConfigError(f"--rollout.group-size={k}: --algo {cfg.algo} needs at least {row.min_group} responses "
                              f"per prompt ({row.needs_group}); use {row.min_group} or more")
        offline = offline_algorithms()
        if cfg.offline_data is not None and cfg.algo not in offline:
            raise ConfigError(f"--offline-data works with --algo {', '.join(offline[:-1])} or {offline[-1]} (fixed "
                              f"rows); {cfg.algo} learns from its own samples. For preference pairs use `rlcf dpo`.")
        if cfg.algo == "ilql" and cfg.offline_data is None:
            raise ConfigError("--algo ilql learns offline only: give --offline-data FILE with (prompt, response, "
                              "reward) rows or (prompt, chosen, rejected) pairs")
        if cfg.offline_data is not None and cfg.offline_pair_rewards == "reward_model" and not cfg.reward.model:
            raise ConfigError("--offline-pair-rewards reward_model needs --reward.model FOLDER to score the pairs")
        r = cfg.reward
        if cfg.offline_data is None and not (r.function or r.functions or r.model or r.url):
            raise ConfigError("no reward: set --reward.function MODULE:FUNCTION, --reward.functions, --reward.model "
                              "FOLDER or --reward.url URL")
        if cfg.p3o.dual_clip is not None and cfg.p3o.dual_clip <= 1 + cfg.p3o.eps:
            raise ConfigError(f"--p3o.dual-clip={cfg.p3o.dual_clip}: must be greater than 1 + --p3o.eps "
                              f"({1 + cfg.p3o.eps:g}), or None for the paper's unbounded V1")
    if isinstance(getattr(cfg, "data", None), C.DataConfig) and not cfg.data.path:
        rows = {C.SFTConfig: "prompt/completion or messages rows"}.get(type(cfg), "prompt, chosen and rejected columns")
        raise ConfigError(f"no training data: give --data.path FILE (JSONL/JSON/CSV/Parquet) or a hub dataset with {rows}")
    if isinstance(cfg, C.LabelConfig):
        if cfg.rollout.group_size < 2:
            raise ConfigError(f"--rollout.group-size={cfg.rollout.group_size}: labelling compares responses in pairs; "
                              "use 2 or more")
        if not cfg.judge and not cfg.judge_model:
            raise ConfigError("no judge: set --judge MODULE:FUNCTION or --judge-model FOLDER")
    if getattr(cfg, "report_to", ()):  # a tracker's package is missing: say which, before anything loads

        try:
            trackers(cfg.report_to)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if isinstance(cfg, C.PlotConfig) and not cfg.runs:
        raise ConfigError("no run folders given; pass --runs RUN_DIR [RUN_DIR ...] (the output_dir of each run)")


def validate(cfg):
    """Types (converted where unambiguous), ranges and cross-field rules of any rlcf config; raises ConfigError.
    A pipeline's stage configs are checked one by one; the pipeline fills in the paths between them itself."""
    check_types(cfg)
    check_ranges(cfg)
    if isinstance(cfg, C.PipelineConfig):
        wired = wire(cfg)
        for name in ("label", "rm", "train"):
            try:
                check_rules(getattr(wired, name))
            except ConfigError as e:
                raise ConfigError(str(e).replace("--", f"--{name}.", 1)) from None
    else:
        check_rules(cfg)
    return cfg
