"""Every YAML preset under configs/ parses into its command's config class, says how to run it, and holds
the seeds' values where spot-checked."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from rlcf import config as rlcf_config
from rlcf.cli import COMMANDS, load_config
from rlcf.config import TrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

STEM_CLASSES = {"dpo": "DPOStageConfig", "rm": "RMConfig", "sft": "SFTConfig", "label": "LabelConfig",
                "eval": "EvalConfig", "plot": "PlotConfig"}
"""In a preset folder (configs/hh/, configs/tldr/, ...): file stem -> class; any other stem is a TrainConfig."""

TOP_LEVEL = {"demo.yaml": "TrainConfig"}
"""Files directly in configs/: name -> class name. A class rlcf.config does not define (yet) is skipped, as is
a file listed nowhere; add new top-level files here."""


def type_errors(cfg, where: str = "") -> list[str]:
    """Fields whose value does not fit the annotation (dataclasses do not check; YAML turns `off` into False)."""
    errors = []
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint, name = getattr(cfg, f.name), hints[f.name], f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            errors += type_errors(value, name + ".")
        elif not fits(value, hint):
            errors.append(f"{name}={value!r} is not a {hint}")
    return errors


def fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def class_name_for(path: Path) -> str | None:
    rel = path.relative_to(CONFIGS)
    if len(rel.parts) == 1:
        return TOP_LEVEL.get(rel.name)
    return STEM_CLASSES.get(path.stem, "TrainConfig")


def command_of(cls) -> str:
    return next(name for name, (c, _, _) in COMMANDS.items() if c is cls)


ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))  # accelerate's own launch configs, not rlcf's
ALL = [p for p in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml")) if p not in ACCELERATE]
PRESETS = [p for p in ALL if len(p.relative_to(CONFIGS).parts) > 1]


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_validates_into_its_config_class(path):
    name = class_name_for(path)
    if name is None:
        pytest.skip(f"{path.relative_to(CONFIGS)}: no config class known; add it to TOP_LEVEL in this test")
    cls = getattr(rlcf_config, name, None)
    if cls is None:
        pytest.skip(f"{path.relative_to(CONFIGS)}: rlcf.config has no {name} yet")
    cfg = load_config(cls, str(path))  # SystemExit on an unknown field
    assert isinstance(cfg, cls)
    assert not type_errors(cfg), f"{path}: {type_errors(cfg)}"


def test_type_check_catches_yaml_off_and_bad_literals():
    cfg = rlcf_config.TrainConfig(chat_template=False, algo="dqn")
    cfg.optim.betas = (0.9, "x")
    assert [e.split("=")[0] for e in type_errors(cfg)] == ["algo", "chat_template", "optim.betas"]
    assert not type_errors(rlcf_config.TrainConfig())


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_presets_start_with_what_they_reproduce_and_how_to_run_them(path):
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert header and len(header[0]) > 10, f"{path}: must start with a comment saying what it reproduces"
    head = "\n".join(header)
    rel = path.relative_to(CONFIGS.parent).as_posix()
    command = command_of(getattr(rlcf_config, class_name_for(path)))
    wanted = f"rlcf {command} --config {rel}"
    assert re.search(rf"{re.escape(wanted)}\b", head), f"{path}: say `{wanted}`"
    assert "network" in head and "GPU" in head, f"{path}: say it needs the network and a GPU"


def test_presets_write_to_distinct_output_dirs():
    dirs = {}
    for path in PRESETS:
        cls = getattr(rlcf_config, class_name_for(path))
        out = load_config(cls, str(path)).output_dir
        assert out not in dirs, f"{path} and {dirs[out]} both write to {out}"
        dirs[out] = path


def load(rel: str):
    path = CONFIGS / rel
    return load_config(getattr(rlcf_config, class_name_for(path)), str(path))


def test_hh_presets_hold_the_seeds_values():
    for algo in ("p3o", "ppo", "apa", "awr"):
        cfg = load(f"hh/{algo}.yaml")
        assert cfg.algo == algo
        assert (cfg.prompts, cfg.prompt_column, cfg.chat_template) == ("Dahoas/rm-static", "prompt", "off")
        assert (cfg.model.name_or_path, cfg.model.dtype, cfg.optim.mixed_precision) == ("Dahoas/pythia-1B-static-sft", "float32", "bf16")
        assert cfg.rollout.max_new_tokens == 128 and (cfg.rollout.top_k, cfg.rollout.top_p) == (0, 1.0)
        assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 1e-6
        assert cfg.reward.model and cfg.reward.function is None
    ppo = load("hh/ppo.yaml")
    assert (ppo.ppo.beta, ppo.ppo.kl_target, ppo.ppo.kl_horizon) == (0.05, 6.0, 10000)
    assert (ppo.ppo.gamma, ppo.ppo.gae_lambda, ppo.ppo.eps, ppo.ppo.eps_v) == (1.0, 0.95, 0.2, 0.2)
    assert (ppo.optim.epochs, ppo.optim.lr) == (4, 6e-6)
    apa = load("hh/apa.yaml")
    assert (apa.apa.temperature, apa.apa.anchor, apa.optim.lr, apa.optim.epochs) == (0.1, "init", 1e-6, 2)
    assert load("hh/awr.yaml").awr.inv_lam == 0.5
    p3o = load("hh/p3o.yaml")
    assert (p3o.p3o.beta, p3o.p3o.eps, p3o.p3o.clip_c, p3o.rollout.group_size) == (0.05, 0.2, 10.0, 2)
    assert (p3o.optim.epochs, p3o.optim.lr) == (4, 6e-6)
    dpo = load("hh/dpo.yaml")
    assert isinstance(dpo, rlcf_config.DPOStageConfig)
    assert (dpo.beta, dpo.data.path, dpo.data.split, dpo.chat_template) == (0.1, "Dahoas/rm-static", "train", "off")


def test_tldr_presets():
    for algo in ("p3o", "ppo", "awr"):
        cfg = load(f"tldr/{algo}.yaml")
        assert cfg.algo == algo and cfg.prompts == "CarperAI/openai_summarize_tldr"
        assert cfg.rollout.max_new_tokens == 53 and cfg.chat_template == "off"
        assert cfg.reward.model == "cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr"
    assert load("tldr/awr.yaml").awr.inv_lam == 1.0
    dpo = load("tldr/dpo.yaml")
    assert (dpo.data.path, dpo.beta) == ("CarperAI/openai_summarize_comparisons", 0.1)


def test_demo_is_a_train_config():
    assert load("demo.yaml").algo == "p3o"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_launch_configs_load_in_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))  # raises on a key accelerate does not know
    assert cfg.num_processes >= 2 and cfg.num_machines == 1
    text = path.read_text()
    # each says what it has run on: the tests' CPU processes, or not yet GPUs
    assert text.startswith("#") and ("Run by the test suite" in text or "not yet run on GPUs" in text)


def test_the_main_job_preset_is_yaml_only_and_flags_and_files_layer_on_it(tmp_path):
    """`rlcf pipeline` starts from rlcf/presets/pipeline.yaml; the dataclass holds only plain stage defaults, so
    the main job's values live in one place. A user's --config file and flags override the preset field by field."""
    from rlcf.cli import parse, preset

    cfg = preset("pipeline")
    assert not type_errors(cfg)
    plain = rlcf_config.PipelineConfig()
    assert (plain.train, plain.rm, plain.label) == (rlcf_config.TrainConfig(), rlcf_config.RMConfig(),
                                                   rlcf_config.LabelConfig())
    assert (cfg.label.rollout.group_size, cfg.rm.num_layers, cfg.rm.data.eval_fraction) == (4, 4, 0.15)
    assert (cfg.train.model.reference, cfg.train.steps, cfg.train.reward.function) == ("top_blocks", 20, None)
    assert parse("pipeline", []) == cfg
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  steps: 5\nrm:\n  data:\n    max_length: 256\n")
    layered = parse("pipeline", ["--config", str(mine), "--train.p3o.beta", "0.1"])
    assert (layered.train.steps, layered.rm.data.max_length, layered.train.p3o.beta) == (5, 256, 0.1)
    assert (layered.rm.data.eval_fraction, layered.train.model.reference) == (0.15, "top_blocks")  # the preset's
    assert parse("train", []) == rlcf_config.TrainConfig()  # commands without a preset start from the dataclass


def test_a_data_section_may_be_given_as_its_path(tmp_path):
    path = tmp_path / "rm.yaml"
    path.write_text("data: pairs.jsonl\n")
    cfg = load_config(rlcf_config.RMConfig, str(path))
    assert cfg.data == rlcf_config.PairDataConfig(path="pairs.jsonl", eval_fraction=0.1)  # RM's own default kept
    path.write_text("eval_fraction: 0.2\n")  # the fields moved into data: the old flat key names the known ones
    with pytest.raises(SystemExit, match=r"unknown field 'eval_fraction' for RMConfig"):
        load_config(rlcf_config.RMConfig, str(path))


def test_a_renamed_field_names_its_new_name():
    from rlcf.config import from_dict

    with pytest.raises(ValueError, match=r"'lam' of APAConfig was renamed 'temperature'"):
        from_dict(TrainConfig, {"apa": {"lam": 0.1}}, "old.yaml")
    with pytest.raises(ValueError, match=r"'lam' of PPOConfig was renamed 'gae_lambda'"):
        from_dict(TrainConfig, {"ppo": {"lam": 0.9}}, "old.yaml")


def test_a_fields_range_lives_beside_it_and_is_what_validation_enforces():
    import dataclasses

    from rlcf.config import APAConfig, RolloutConfig
    from rlcf.validate import ConfigError, validate

    (temperature,) = [f for f in dataclasses.fields(APAConfig) if f.name == "temperature"]
    assert temperature.metadata["range"] == ("gt", 0)
    cfg = TrainConfig(algo="apa")
    cfg.apa.temperature = 0.0
    with pytest.raises(ConfigError, match=r"--apa.temperature=0.0: must be greater than 0"):
        validate(cfg)
    (top_p,) = [f for f in dataclasses.fields(RolloutConfig) if f.name == "top_p"]
    cfg = TrainConfig()
    cfg.rollout.top_p = 1.5
    with pytest.raises(ConfigError, match=r"--rollout.top-p=1.5: must be in \(0, 1\]"):
        validate(cfg)
    assert top_p.metadata["range"] == ("open_closed", 0, 1)


def test_the_fields_a_resumed_run_may_change_are_marked_beside_them():
    from rlcf.config import neutral_fields

    neutral = neutral_fields(TrainConfig)
    assert {"steps", "save_every", "output_dir", "rollout.generation_chunk", "reward.gold"} <= neutral
    assert not {"seed", "p3o.beta", "optim.lr", "rollout.max_new_tokens"} & neutral
