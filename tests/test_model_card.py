"""final/README.md: a Hugging Face model card that huggingface_hub loads, for every training command."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from rlcf.config import DPOStageConfig, RMConfig, SFTConfig, TrainConfig, to_dict
from rlcf.train.model_card import CONFIG_FILE, EMBEDDED_HUB_ID, write_model_card


@pytest.mark.parametrize("cfg,command,tag", [
    (TrainConfig(algo="apa", prompts="trl-lib/some-prompts"), "train", "apa"),
    (SFTConfig(), "sft", "sft"),
    (RMConfig(), "rm", "rm"),
    (DPOStageConfig(), "dpo", "dpo"),
])
def test_card_loads_with_huggingface_hub_and_says_how_to_reproduce(tmp_path, cfg, command, tag):
    out, final = tmp_path / "run", tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.1}) + "\n" +
                                       json.dumps({"step": 2, "reward/mean": 0.25, "kl/k1_seq": 1.5}) + "\n{torn")
    config = to_dict(cfg)
    card = ModelCard.load(write_model_card(final, config, out))
    assert card.data.library_name == "transformers" and tag in card.data.tags
    assert card.data.base_model == EMBEDDED_HUB_ID  # 'embedded' is named by its hub id
    assert f"rlcf {command} --config {CONFIG_FILE}" in card.text
    assert yaml.safe_load((final / CONFIG_FILE).read_text()) == json.loads(json.dumps(config, default=list))
    assert "| `reward/mean` | 0.25 |" in card.text and "At step 2" in card.text
    if command == "train":
        assert card.data.datasets == ["trl-lib/some-prompts"] and "`apa.temperature` | `0.1`" in card.text


def test_local_folders_are_not_named_as_hub_repos(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    cfg = TrainConfig(prompts=str(tmp_path / "prompts.jsonl"))
    cfg.model.name_or_path = str(model)
    (tmp_path / "final").mkdir()
    card = ModelCard.load(write_model_card(tmp_path / "final", to_dict(cfg), tmp_path))
    assert card.data.base_model is None and card.data.datasets is None
    assert str(model) in card.text
