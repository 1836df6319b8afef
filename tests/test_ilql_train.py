"""ILQL end to end on a tiny model: offline rows (or preference pairs) in, a saved model whose advantage-perturbed
decoding prefers the high-reward responses more than its behaviour-cloned LM alone does."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard
from test_offline_rl import DRY, VOWELLY, mean_seq_logprob, offline_config, write_offline_data

from rlcf.train.offline import load_offline_rows
from rlcf.trainer import train


def _gap(model_dir):
    return mean_seq_logprob(model_dir, VOWELLY) - mean_seq_logprob(model_dir, DRY)


def test_ilql_prefers_the_rewarded_responses_through_its_advantage(tiny_model_dir, tmp_path):
    data = tmp_path / "offline.jsonl"
    write_offline_data(data)
    cfg = offline_config(tiny_model_dir, data, tmp_path / "ilql", "ilql")
    cfg.optim.epochs, cfg.optim.minibatch_prompts, cfg.optim.lr = 6, 16, 3e-3
    # 72 steps: targets that follow the Q heads at trlX's alpha 0.001 would still be the random initial heads
    cfg.ilql.beta, cfg.ilql.alpha, cfg.ilql.steps_for_target_q_sync = 4.0, 1.0, 1
    final = train(cfg)
    assert json.loads((final / "ilql.json").read_text())["beta"] == 4.0
    card = ModelCard.load(final / "README.md")  # the model card, as after every training command
    assert "ilql" in card.data.tags and "rlcf train --config rlcf_config.yaml" in card.text
    rows = [json.loads(x) for x in (tmp_path / "ilql" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[1], rows[-1]
    assert last["loss/awac"] < first["loss/awac"]  # behaviour cloning learns the data
    # the same weights decoded with beta = 0: the behaviour-cloned LM alone
    plain = tmp_path / "beta0"
    shutil.copytree(final, plain)
    meta = json.loads((plain / "ilql.json").read_text())
    (plain / "ilql.json").write_text(json.dumps({**meta, "beta": 0.0}))
    cloned, ilql = _gap(plain), _gap(final)
    # the advantage term moves the decoding towards the vowelly (rewarded) responses, the more the larger beta
    assert ilql > cloned + 1.0, (cloned, ilql)
    (plain / "ilql.json").write_text(json.dumps({**meta, "beta": 16.0}))
    assert _gap(plain) > ilql + 1.0


def test_preference_pairs_become_rows(tmp_path):
    from rlcf.config import TrainConfig

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad",
                                         "chosen_score": 0.9, "rejected_score": 0.1}) + "\n" for i in range(3)))
    cfg = TrainConfig(algo="apa", offline_data=str(pairs))
    rows = load_offline_rows(cfg)
    assert rows[:2] == [{"prompt": "p0", "response": "good", "reward": 1.0},
                        {"prompt": "p0", "response": "bad", "reward": -1.0}] and len(rows) == 6
    cfg.offline_pair_rewards = "reward_model"
    with pytest.raises(ValueError, match="--reward.model"):
        from rlcf.validate import validate

        validate(cfg)
