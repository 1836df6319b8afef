"""`rlcf <command>`: each command is one config dataclass, read from `--config FILE.yaml` and then
overridden field by field on the command line (nested fields as `--ppo.beta 0.1`).

The whole config is checked (types, ranges, rules between fields) before a command starts. An error reaches
the user as one line; `--debug` (or RLCF_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.resources import files
from pathlib import Path

import torch
import tyro

from .config import (
    DPOStageConfig,
    EvalConfig,
    LabelConfig,
    PipelineConfig,
    PlotConfig,
    RMConfig,
    SFTConfig,
    TrainConfig,
    from_dict,
)
from .errors import near_miss
from .train.safety import RunStopped
from .validate import check_types, validate
from .yaml_safe import YAMLFileError, load_yaml_file, shorten

# command -> (config dataclass, one line of help, runner "module:function" taking the config)
COMMANDS = {
    "train": (TrainConfig, "online RL against a reward (P3O, APA, PPO, AWR, RLOO, GRPO, GSPO), or APA/AWR/ILQL on --offline-data",
              "rlcf.trainer:train"),
    "sft": (SFTConfig, "supervised fine-tuning on prompt/completion or messages data", "rlcf.sft:run_sft"),
    "rm": (RMConfig, "reward model from (prompt, chosen, rejected) pairs, Bradley-Terry loss", "rlcf.rm:run_rm"),
    "dpo": (DPOStageConfig, "DPO on (prompt, chosen, rejected) pairs against the frozen initial policy",
            "rlcf.dpo:run_dpo"),
    "label": (LabelConfig, "sample K responses per prompt from a policy and let a judge compare them in pairs",
              "rlcf.label:run_label"),
    "eval": (EvalConfig, "reward, gold score, KL to the reference, length and win-rate of a policy",
             "rlcf.evaluate:run_eval"),
    "pipeline": (PipelineConfig, "the main job: label pairs with a judge -> reward model -> P3O -> eval -> report",
                 "rlcf.pipeline:run_pipeline"),
    "plot": (PlotConfig, "plots of reward and KL over steps, the KL-reward frontier, and a report",
             "rlcf.plot:run_plot"),
}


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --config file or None, the other arguments); --config with no file, an empty one, a flag in its place,
    or given twice is an error."""
    rest, paths = [], []
    it = iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
            if path is None or path.startswith("--"):
                got = f" (got the flag {path})" if path else ""
                raise SystemExit(f"rlcf: --config needs a YAML file path{got}, e.g. --config configs/demo.yaml")
            paths.append(path)
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
            if not path:
                raise SystemExit("rlcf: --config= is empty; it needs a YAML file path, e.g. --config configs/demo.yaml")
            paths.append(path)
        else:
            rest.append(a)
    if len(paths) > 1:
        raise SystemExit(f"rlcf: --config is given {len(paths)} times ({', '.join(paths)}); give one file (later "
                         "flags override its values)")
    return (paths[0] if paths else None), rest


PRESETS = {"pipeline": "pipeline.yaml"}
"""Commands whose defaults are a YAML preset in rlcf/presets/ (the main job's values live only there)."""


def preset(command: str):
    """The config `rlcf COMMAND` starts from: its preset from rlcf/presets/, else the dataclass defaults."""
    cls = COMMANDS[command][0]
    if command not in PRESETS:
        return cls()
    return load_config(cls, str(files("rlcf.presets").joinpath(PRESETS[command])))


def load_config(cls, path: str | None, base=None):
    """`cls` from a YAML file, on top of `base` (default: the dataclass defaults): fields the file leaves out keep
    base's values. An empty or comments-only file keeps them all. Any problem with the file (see rlcf.yaml_safe:
    a folder, not UTF-8, a duplicate key, an alias, a Python tag, ...) or with a value exits with one short line."""
    if path is None:
        return cls() if base is None else base
    if not os.path.lexists(path):
        raise SystemExit(f"rlcf: config file {path} does not exist{near_miss(str(path))}")
    try:
        data = load_yaml_file(str(path), "config file")
    except YAMLFileError as e:
        raise SystemExit(f"rlcf: {shorten(e)}") from None
    data = {} if data is None else data
    try:
        return check_types(from_dict(cls, data, where=str(path), base=base), yaml_file=str(path))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"rlcf: {shorten(e)}") from None


def parse(command: str, argv: list[str]):
    cls, doc, _ = COMMANDS[command]
    path, rest = _split_config_flag(argv)
    default = load_config(cls, path, base=preset(command))
    return tyro.cli(cls, args=rest, default=default, prog=f"rlcf {command}", description=f"rlcf {command}: {doc}. "
                    "Values come from --config FILE.yaml, then these flags. --debug shows an error's traceback.")


def _usage() -> str:
    lines = ["usage: rlcf <command> [--config FILE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, doc, _) in COMMANDS.items()]
    lines.append("\n`rlcf <command> --help` lists every option with its default; --debug (or RLCF_DEBUG=1) shows an "
                 "error's traceback.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        # several processes (accelerate launch, torchrun): leave the process group before the interpreter exits;
        # a process that exits with gloo's threads still running aborts ("terminate called without an active
        # exception", exit code -6), which the launcher reports as a failed run
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    debug = "--debug" in rest or os.environ.get("RLCF_DEBUG", "") not in ("", "0")
    rest = [a for a in rest if a != "--debug"]
    if command not in COMMANDS:
        print(f"rlcf: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    cfg = parse(command, rest)

    module, _, fn = COMMANDS[command][2].partition(":")
    try:
        validate(cfg)
        runner = getattr(importlib.import_module(module), fn)
        result = runner(cfg)
    except RunStopped as e:  # a signal: the checkpoint is written, the message says how to resume
        print(f"rlcf {command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"rlcf {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error reaches the user as one line unless --debug
        if debug:
            raise
        print(f"rlcf {command}: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, (ValueError, OSError)) else 1
    if os.environ.get("RANK", "0") != "0":  # several processes: the summary once, from the main one
        return 0
    if command in ("train", "sft", "rm", "dpo"):
        out = Path(cfg.output_dir)
        print(f"\nDone. Outputs in {out.resolve()}:\n"
              f"  metrics   {out / 'metrics.jsonl'}\n"
              f"  config    {out / 'config.yaml'}\n"
              f"  model     {result} (loads with transformers.{'AutoModelForSequenceClassification' if command == 'rm' else 'AutoModelForCausalLM'}.from_pretrained)")
    elif command != "pipeline":
        print(f"\nDone: {result}")
    return 0


def one_line(e: BaseException) -> str:
    """The error as one line: rlcf's own errors (ValueError and its kin) by their message; anything else with its
    type and a pointer to --debug, since it may be a bug."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, ValueError):
        return text
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {text}"
    return f"{type(e).__name__}: {text} (rerun with --debug for the traceback; if the input looks right, please report it)"


if __name__ == "__main__":
    raise SystemExit(main())
