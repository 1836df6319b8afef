"""`rlcf <command>`: each command is one config dataclass, read from `--config FILE.yaml` and then
overridden field by field on the command line (nested fields as `--ppo.beta 0.1`)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from .config import TrainConfig, from_dict

COMMANDS = {
    "train": (TrainConfig, "online RL against a reward: P3O, APA, PPO, AWR, RLOO, GRPO"),
}


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, path = [], None
    it = iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
            if path is None:
                raise SystemExit("rlcf: --config needs a YAML file path")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    return path, rest


def load_config(cls, path: str | None):
    if path is None:
        return cls()
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"rlcf: config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SystemExit(f"rlcf: {path} is not valid YAML: {e}")
    try:
        return from_dict(cls, data, where=str(path))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"rlcf: {e}")


def parse(command: str, argv: list[str]):
    import tyro

    cls, doc = COMMANDS[command]
    path, rest = _split_config_flag(argv)
    default = load_config(cls, path)
    return tyro.cli(cls, args=rest, default=default, prog=f"rlcf {command}", description=f"rlcf {command}: {doc}. "
                    "Values come from --config FILE.yaml, then these flags.")


def _usage() -> str:
    lines = ["usage: rlcf <command> [--config FILE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines.append("\n`rlcf <command> --help` lists every option with its default.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rlcf: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    cfg = parse(command, rest)
    if command == "train":
        from .data import DataError
        from .trainer import train

        try:
            final = train(cfg)
        except (DataError, ValueError) as e:
            print(f"rlcf train: {e}", file=sys.stderr)
            return 2
        print(f"\nDone. Outputs in {Path(cfg.output_dir).resolve()}:\n"
              f"  metrics   {Path(cfg.output_dir) / 'metrics.jsonl'}\n"
              f"  config    {Path(cfg.output_dir) / 'config.yaml'}\n"
              f"  model     {final} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
