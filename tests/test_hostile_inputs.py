"""Hostile input across every command, as a user types it: each case must end with a non-zero exit, one clear
line naming the culprit, no traceback, and no file written into the output folder.

The cases run the CLI in-process (`rlcf.cli.main`) to keep the table fast; test_cli.py runs it in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from helpers.common import assert_one_clear_line

from rlcf.cli import main
from rlcf.config import DataConfig, DPOStageConfig, TrainConfig, to_dict

TESTS = Path(__file__).parent


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _earlier_run(folder: Path, cfg) -> None:
    """A folder as an earlier run leaves it: its config, two metrics records and a checkpoint marker."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in (1, 2)))


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# id -> (command, args, what the one line must contain); {tmp} is the test's folder, {model} the tiny model,
# {out} the output folder (must stay untouched or absent)
TRAIN = ["--model.name-or-path", "{model}", "--steps", "1", "--rollout.max-new-tokens", "4", "--no-progress",
         "--reward.function", "helpers.vowel_reward:reward", "--prompts", "{prompts}", "--output-dir", "{out}"]
CASES = {
    # config values: types (YAML), ranges, Literal choices, rules between fields
    "yaml-steps-word": ("train", ["--config", "{tmp}/steps.yaml"], ["steps.yaml", "steps", "integer", "'ten'"]),
    "yaml-section-not-mapping": ("train", ["--config", "{tmp}/optim5.yaml"], ["optim", "mapping"]),
    "yaml-top-level-list": ("train", ["--config", "{tmp}/list.yaml"], ["list.yaml", "mapping"]),
    "yaml-unknown-field": ("train", ["--config", "{tmp}/unknown.yaml"], ["unknown field 'betta'"]),
    "yaml-variant": ("train", ["--config", "{tmp}/variant.yaml"], ["p3o.variant", "'v1', 'v2'", "'v3'"]),
    "yaml-not-yaml": ("train", ["--config", "{tmp}/broken.yaml"], ["broken.yaml", "not valid YAML"]),
    "config-missing": ("train", ["--config", "{tmp}/nope.yaml"], ["nope.yaml", "does not exist"]),
    "steps-0": ("train", TRAIN + ["--steps", "0"], ["--steps=0", "at least 1"]),
    "lr-negative": ("train", TRAIN + ["--optim.lr", "-1"], ["--optim.lr=-1.0", "greater than 0"]),
    "epochs-0": ("train", TRAIN + ["--optim.epochs", "0"], ["--optim.epochs=0"]),
    "p3o-k1": ("train", TRAIN + ["--rollout.group-size", "1"], ["--rollout.group-size=1", "p3o", "2 or more"]),
    "rloo-k1": ("train", TRAIN + ["--algo", "rloo", "--rollout.group-size", "1"], ["--rollout.group-size=1", "rloo"]),
    "grpo-k1": ("train", TRAIN + ["--algo", "grpo", "--rollout.group-size", "1"], ["--rollout.group-size=1", "grpo"]),
    "prompts-per-step-0": ("train", TRAIN + ["--rollout.prompts-per-step", "0"], ["--rollout.prompts-per-step=0"]),
    "dual-clip-inside-trust-region": ("train", TRAIN + ["--p3o.dual-clip", "1.1"], ["--p3o.dual-clip=1.1", "1.2"]),
    "temperature-0": ("train", TRAIN + ["--rollout.temperature", "0"], ["--rollout.temperature=0.0"]),
    "top-p-above-1": ("train", TRAIN + ["--rollout.top-p", "1.5"], ["--rollout.top-p=1.5", "(0, 1]"]),
    "ppo-gamma-2": ("train", TRAIN + ["--algo", "ppo", "--ppo.gamma", "2"], ["--ppo.gamma=2.0", "[0, 1]"]),
    "betas-above-1": ("train", TRAIN + ["--optim.betas", "0.9", "1.5"], ["--optim.betas", "[0, 1)"]),
    "trainable-blocks-0": ("train", TRAIN + ["--model.trainable-blocks", "0"], ["--model.trainable-blocks=0"]),
    "lora-dropout-1": ("train", TRAIN + ["--model.lora-dropout", "1"], ["--model.lora-dropout=1.0"]),
    "reward-clip-0": ("train", TRAIN + ["--reward.clip", "0"], ["--reward.clip=0.0"]),
    "nonfinite-limit-0": ("train", TRAIN + ["--optim.max-nonfinite-steps", "0"], ["--optim.max-nonfinite-steps=0"]),
    "no-reward": ("train", TRAIN + ["--reward.function", "None"], ["no reward", "--reward.model"]),
    "offline-with-p3o": ("train", TRAIN + ["--offline-data", "{prompts}"], ["--offline-data", "apa, awr or ilql"]),
    "ilql-online": ("train", TRAIN + ["--algo", "ilql"], ["ilql", "offline only", "--offline-data"]),
    # run folders: never clobbered, never mixed
    "output-dir-is-a-file": ("train", TRAIN + ["--output-dir", "{tmp}/afile"], ["afile", "is a file"]),
    "resume-other-settings": ("train", TRAIN + ["--output-dir", "{tmp}/earlier", "--p3o.beta", "0.2"],
                              ["earlier", "p3o.beta: 0.1 -> 0.2", "--overwrite", "--force-resume"]),
    "resume-off-into-a-run": ("train", TRAIN + ["--output-dir", "{tmp}/earlier", "--p3o.beta", "0.1",
                                                "--no-resume"], ["earlier", "--resume is off", "--overwrite"]),
    "dpo-resume-other-settings": ("dpo", ["--data.path", "{pairs}", "--model.name-or-path", "{model}", "--output-dir",
                                          "{tmp}/earlier-dpo", "--beta", "0.3"], ["beta: 0.1 -> 0.3"]),
    # supervised stages
    "sft-no-data": ("sft", ["--model.name-or-path", "{model}", "--output-dir", "{out}"], ["--data.path"]),
    "sft-eval-fraction-1": ("sft", ["--data.path", "{pairs}", "--data.eval-fraction", "1", "--output-dir", "{out}"],
                            ["--data.eval-fraction=1.0", "[0, 1)"]),
    "sft-max-length-0": ("sft", ["--data.path", "{pairs}", "--data.max-length", "0", "--output-dir", "{out}"],
                         ["--data.max-length=0"]),
    "rm-num-layers-0": ("rm", ["--data.path", "{pairs}", "--num-layers", "0", "--output-dir", "{out}"],
                        ["--num-layers=0"]),
    "rm-lr-0": ("rm", ["--data.path", "{pairs}", "--optim.lr", "0", "--output-dir", "{out}"], ["--optim.lr=0.0"]),
    "dpo-beta-0": ("dpo", ["--data.path", "{pairs}", "--beta", "0", "--output-dir", "{out}"], ["--beta=0.0"]),
    # label, eval, plot, pipeline
    "label-k1": ("label", ["--rollout.group-size", "1", "--output", "{out}/pairs.jsonl"],
                 ["--rollout.group-size=1", "pairs"]),
    "label-no-judge": ("label", ["--judge", "None", "--output", "{out}/pairs.jsonl"], ["no judge", "--judge-model"]),
    "label-noise-negative": ("label", ["--noise-temperature", "-1", "--output", "{out}/pairs.jsonl"],
                             ["--noise-temperature=-1.0"]),
    "label-max-prompts-0": ("label", ["--max-prompts", "0", "--output", "{out}/pairs.jsonl"], ["--max-prompts=0"]),
    "eval-max-prompts-0": ("eval", ["--max-prompts", "0", "--output", "{out}/eval.json"], ["--max-prompts=0"]),
    "eval-samples-0": ("eval", ["--samples-per-prompt", "0", "--output", "{out}/eval.json"],
                       ["--samples-per-prompt=0"]),
    "eval-judge-retries-negative": ("eval", ["--judge.retries", "-1", "--output", "{out}/eval.json"],
                                    ["--judge.retries=-1"]),
    "eval-judge-timeout-0": ("eval", ["--judge.timeout-s", "0", "--output", "{out}/eval.json"],
                             ["--judge.timeout-s=0.0"]),
    "plot-no-runs": ("plot", ["--output-dir", "{out}"], ["no run folders"]),
    "plot-missing-run": ("plot", ["--runs", "{tmp}/nope", "--output-dir", "{out}"], ["nope", "does not exist"]),
    "pipeline-k1": ("pipeline", ["--train.rollout.group-size", "1", "--output-dir", "{out}"],
                    ["--train.rollout.group-size=1", "p3o"]),
    "pipeline-rm-eval-fraction": ("pipeline", ["--rm.data.eval-fraction", "1.5", "--output-dir", "{out}"],
                                  ["--rm.data.eval-fraction=1.5"]),
    # data files and model folders (more in test_bad_inputs_data_models.py)
    "prompts-empty-file": ("train", TRAIN + ["--prompts", "{tmp}/empty.jsonl"], ["empty.jsonl", "empty"]),
    "prompts-bad-json-line": ("train", TRAIN + ["--prompts", "{tmp}/badline.jsonl"],
                              ["badline.jsonl, line 2", "not valid JSON"]),
    "prompts-missing-file": ("train", TRAIN + ["--prompts", "{tmp}/data/prompts.jsonl"], ["prompts.jsonl", "no such file"]),
    "prompts-csv-unquoted-comma": ("train", TRAIN + ["--prompts", "{tmp}/comma.csv"], ["comma.csv, line 3", "fields"]),
    "sft-data-missing-file": ("sft", ["--data.path", "{tmp}/nope.jsonl", "--model.name-or-path", "{model}",
                                      "--output-dir", "{out}"], ["nope.jsonl", "no such file"]),
    "rm-pairs-missing-column": ("rm", ["--data.path", "{prompts}", "--model", "{model}", "--output-dir", "{out}"],
                                ["prompts.jsonl", "chosen"]),
    "policy-folder-missing": ("train", TRAIN + ["--model.name-or-path", "{tmp}/no-such-model"],
                              ["no-such-model", "does not exist"]),
    "policy-folder-empty": ("train", TRAIN + ["--model.name-or-path", "{tmp}/emptydir"], ["emptydir", "config.json"]),
    "policy-is-a-reward-model": ("train", TRAIN + ["--model.name-or-path", "{tmp}/rm-like"],
                                 ["rm-like", "ForSequenceClassification", "--reward.model"]),
    "reward-model-is-a-policy": ("train", TRAIN + ["--reward.model", "{model}"], ["ForCausalLM", "score head"]),
    "eval-model-missing": ("eval", ["--model", "{tmp}/no-such-model", "--output", "{out}/eval.json"],
                           ["no-such-model", "does not exist"]),
    "label-prompts-empty": ("label", ["--prompts", "{tmp}/empty.jsonl", "--output", "{out}/pairs.jsonl"],
                            ["empty.jsonl", "empty"]),
    # reward functions misbehaving mid-run (the run folder exists by then; nothing of an earlier run is touched)
    "reward-raises": ("train", TRAIN + ["--reward.function", "test_bad_inputs_rewards_judges:raises"],
                      ["step 1", "raises", "ZeroDivisionError"], True),
    "reward-returns-strings": ("train", TRAIN + ["--reward.function", "test_bad_inputs_rewards_judges:strings"],
                               ["strings", "row 0", "not a number"], True),
    "reward-hangs": ("train", TRAIN + ["--reward.function", "helpers.vowel_reward:hangs",
                                       "--reward.timeout-s", "0.5"], ["hangs", "no answer within 0.5 s"], True),
    "reward-wrong-count": ("train", TRAIN + ["--reward.function", "helpers.vowel_reward:wrong_count"],
                           ["wrong_count", "values for"], True),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("hostile")
    _write(tmp / "steps.yaml", 'steps: "ten"\n')
    _write(tmp / "optim5.yaml", "optim: 5\n")
    _write(tmp / "list.yaml", "- steps\n- 3\n")
    _write(tmp / "unknown.yaml", "p3o:\n  betta: 0.1\n")
    _write(tmp / "variant.yaml", "p3o:\n  variant: v3\n")
    _write(tmp / "broken.yaml", "steps: [1, 2\n")
    _write(tmp / "afile", "not a folder\n")
    _write(tmp / "empty.jsonl", "")
    _write(tmp / "badline.jsonl", '{"prompt": "a"}\n{"prompt": "b",\n')
    _write(tmp / "comma.csv", "prompt,x\na,1\nb, c,2\n")
    (tmp / "emptydir").mkdir()
    import shutil

    shutil.copytree(tiny_model_dir, tmp / "rm-like")
    config = json.loads((tmp / "rm-like" / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    _write(tmp / "rm-like" / "config.json", json.dumps(config))
    prompts = _write(tmp / "prompts.jsonl", "".join(json.dumps({"prompt": p}) + "\n" for p in ("a cat", "a dog")))
    pairs = _write(tmp / "pairs.jsonl", "".join(json.dumps({"prompt": "p", "chosen": "aei", "rejected": "xyz"}) + "\n"
                                                for _ in range(4)))
    earlier = TrainConfig(output_dir=str(tmp / "earlier"))
    earlier.model.name_or_path, earlier.steps, earlier.p3o.beta = tiny_model_dir, 1, 0.1
    earlier.rollout.max_new_tokens, earlier.reward.function, earlier.prompts = 4, "helpers.vowel_reward:reward", prompts
    _earlier_run(tmp / "earlier", earlier)
    dpo = DPOStageConfig(data=DataConfig(path=pairs), output_dir=str(tmp / "earlier-dpo"), beta=0.1)
    dpo.model.name_or_path = tiny_model_dir
    _earlier_run(tmp / "earlier-dpo", dpo)
    return {"tmp": str(tmp), "model": tiny_model_dir, "prompts": prompts, "pairs": pairs}


def run_main(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argument errors (tyro, a missing --config file) exit from parsing
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if isinstance(e.code, str):
            print(e.code, file=__import__("sys").stderr)
    captured = capsys.readouterr()
    return rc, captured.err


def test_case_table_is_large_enough():
    assert len(CASES) >= 40
    assert {c[0] for c in CASES.values()} == {"train", "sft", "rm", "dpo", "label", "eval", "plot", "pipeline"}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_clear_line(case, world, capsys, tmp_path):
    command, args, expected, *started = CASES[case]
    values = dict(world, out=str(tmp_path / "out"))
    argv = [command] + [a.format(**values) for a in args]
    folders = [Path(world["tmp"]) / name for name in ("earlier", "earlier-dpo")]
    before = [_snapshot(f) for f in folders]
    rc, err = run_main(argv, capsys)
    assert_one_clear_line(case, rc, err, expected)
    if not started:  # refused before the run began: nothing written
        assert not (tmp_path / "out").exists(), f"{case}: the output folder was written"
    assert [_snapshot(f) for f in folders] == before, f"{case}: an earlier run's folder changed"
