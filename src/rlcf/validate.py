"""Config checks that run before any file is written or any model loads: every field's type (YAML reads
`1e-5` as a string, `ten` is not a number), its range, and the rules between fields (K >= 2 for pairwise
and group algorithms). Each problem is one line naming the option, the value and what is allowed.

Imports only the standard library and config.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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


# (field, test, allowed) per config class; a field path is relative to the class
def _ge(lo):
    return lambda v: v >= lo, f"at least {lo}"


def _gt(lo):
    return lambda v: v > lo, f"greater than {lo}"


def _in(lo, hi, closed_hi=True):
    return ((lambda v: lo <= v <= hi) if closed_hi else (lambda v: lo <= v < hi),
            f"in [{lo}, {hi}{']' if closed_hi else ')'}")


_OPEN01 = (lambda v: 0 < v <= 1, "in (0, 1]")

RULES: dict[type, dict[str, tuple]] = {
    C.P3OConfig: {"beta": _ge(0), "eps": _gt(0), "clip_c": _ge(1)},
    C.PPOConfig: {"beta": _ge(0), "kl_target": _gt(0), "kl_horizon": _ge(1), "gamma": _in(0, 1), "lam": _in(0, 1),
                  "eps": _gt(0), "eps_v": _gt(0), "vf_coef": _ge(0)},
    C.RLOOConfig: {"beta": _ge(0), "eps": _gt(0)},
    C.GRPOConfig: {"beta": _ge(0), "eps": _gt(0), "std_eps": _gt(0)},
    C.GSPOConfig: {"beta": _ge(0), "eps": _gt(0), "eps_high": _gt(0), "std_eps": _gt(0)},
    C.APAConfig: {"beta": _ge(0), "lam": _gt(0), "gamma": _in(0, 1), "gae_lambda": _in(0, 1), "vf_coef": _ge(0)},
    C.AWRConfig: {"inv_lam": _gt(0), "gamma": _in(0, 1), "gae_lambda": _in(0, 1), "vf_coef": _ge(0),
                  "max_weight": _gt(0)},
    C.ILQLConfig: {"tau": (lambda v: 0 < v < 1, "in (0, 1)"), "gamma": _in(0, 1), "cql_scale": _ge(0),
                    "awac_scale": _ge(0), "alpha": _in(0, 1), "steps_for_target_q_sync": _ge(1), "beta": _ge(0)},
    C.ModelConfig: {"trainable_blocks": _ge(1), "lora_r": _ge(1), "lora_alpha": _gt(0), "lora_dropout": _in(0, 1, False)},
    C.RolloutConfig: {"prompts_per_step": _ge(1), "group_size": _ge(1), "max_new_tokens": _ge(1),
                      "max_prompt_tokens": _ge(1), "temperature": _gt(0), "top_k": _ge(0), "top_p": _OPEN01,
                      "generation_chunk": _ge(1), "forward_chunk": _ge(1), "vllm_gpu_memory_utilization": _OPEN01},
    C.RewardConfig: {"batch_size": _ge(1), "clip": _gt(0), "timeout_s": _gt(0)},
    C.OptimConfig: {"lr": _gt(0), "betas": (lambda v: all(0 <= b < 1 for b in v), "each in [0, 1)"),
                    "weight_decay": _ge(0), "critic_lr": _gt(0), "epochs": _ge(1), "minibatch_prompts": _ge(1),
                    "grad_accum": _ge(1), "max_grad_norm": _ge(0), "max_nonfinite_steps": _ge(1)},
    C.RunControl: {"seed": _ge(0), "save_every": _ge(0)},
    C.DataConfig: {"max_length": _ge(2), "eval_fraction": _in(0, 1, False)},
    C.TrainConfig: {"steps": _ge(1)},
    C.DPOStageConfig: {"beta": _gt(0)},
    C.RMConfig: {"num_layers": _ge(1)},
    C.LabelConfig: {"max_prompts": _ge(1), "noise_temperature": _ge(0), "seed": _ge(0)},
    C.JudgeConfig: {"timeout_s": _gt(0), "retries": _ge(0)},
    C.EvalConfig: {"max_prompts": _ge(1), "samples_per_prompt": _ge(1), "seed": _ge(0)},
}


def check_ranges(cfg, where: str = "") -> None:
    rules = {k: v for cls in reversed(type(cfg).__mro__) for k, v in RULES.get(cls, {}).items()}  # inherited too
    for f in dataclasses.fields(cfg):
        path = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, path)
        elif f.name in rules and value is not None:
            test, allowed = rules[f.name]
            ok = test(value)
            if isinstance(value, float) and not math.isfinite(value):
                ok = False
            if not ok:
                raise ConfigError(f"{_option(path)}={value!r}: must be {allowed}")


def check_rules(cfg) -> None:
    """The rules between fields."""
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
        if cfg.offline_data is None and not cfg.reward.function and not cfg.reward.model:
            raise ConfigError("no reward: set --reward.function MODULE:FUNCTION or --reward.model FOLDER")
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
