"""Offline APA and AWR (APA paper, appendix D.3): fixed (prompt, response, reward) rows, a critic and
advantages computed on them, no sampling. The policy must move towards the high-reward responses."""

from __future__ import annotations

import json
import random

import pytest
import torch

from helpers.vowel_reward import reward as vowel_reward
from rlcf.config import TrainConfig
from rlcf.data import DataError, Prompt, tokenize_prompts
from rlcf.models import load_causal_lm, load_tokenizer
from rlcf.trainer import train

PROMPTS = ["describe the sea", "tell me about a cat", "write a note", "a rainy day", "the park", "good dog",
           "a sunny morning", "what is a mat"]
VOWELLY = ["aeiou", "area", "audio", "idea", "eau", "aioli"]
DRY = ["crypt", "rhythm", "myth", "strength", "lynx", "gym"]


def write_offline_data(path, n=192, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(VOWELLY if rng.random() < 0.5 else DRY) for _ in range(3)]
        response = " ".join(words)
        rows.append({"question": PROMPTS[i % len(PROMPTS)], "answer": response,
                     "score": vowel_reward(None, [response])[0]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def offline_config(model_dir, data, out, algo, steps=30):
    cfg = TrainConfig(algo=algo, offline_data=str(data), offline_columns="prompt=question,response=answer,reward=score",
                      steps=steps, output_dir=str(out), progress=False, save_every=0)
    cfg.model.name_or_path = model_dir
    cfg.model.critic = "value_head"
    cfg.rollout.prompts_per_step = 32
    cfg.rollout.max_new_tokens = 32
    cfg.optim.lr = 3e-3
    cfg.apa.temperature = 1.0  # 1/lambda = 1 offline (the APA paper)
    cfg.awr.inv_lam = 1.0
    return cfg


@torch.no_grad()
def mean_seq_logprob(model_dir, responses):
    """Mean over PROMPTS x responses of log pi(response + EOS | prompt), computed row by row."""
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    total, n = 0.0, 0
    for p in PROMPTS:
        q = tokenize_prompts([Prompt(p, None)], tok, 64)[0]
        for r in responses:
            y = tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            logits = model(torch.tensor([q + y])).logits[0, len(q) - 1 : -1].float()
            total += float(logits.log_softmax(-1).gather(-1, torch.tensor(y)[:, None]).sum())
            n += 1
    return total / n


@pytest.mark.parametrize("algo", ["apa", "awr"])
def test_offline_learning_prefers_what_the_rewards_prefer(tiny_model_dir, tmp_path, algo):
    """The same responses trained on twice, once with the vowel reward and once with it reversed (1 - r): the
    final policy's preference for vowel-heavy over dry responses, log pi(good) - log pi(bad), must be clearly
    larger under the true rewards. Cloning alone (what the two runs share) cannot make that difference."""
    write_offline_data(tmp_path / "offline.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "offline.jsonl").read_text().splitlines()]
    (tmp_path / "reversed.jsonl").write_text("".join(json.dumps({**r, "score": 1 - r["score"]}) + "\n" for r in rows))
    good, bad = [" ".join(VOWELLY[i : i + 3]) for i in range(3)], [" ".join(DRY[i : i + 3]) for i in range(3)]
    gaps = {}
    for name in ("offline", "reversed"):
        final = train(offline_config(tiny_model_dir, tmp_path / f"{name}.jsonl", tmp_path / name, algo, steps=20))
        gaps[name] = mean_seq_logprob(str(final), good) - mean_seq_logprob(str(final), bad)
    metrics = [json.loads(line) for line in (tmp_path / "offline" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 20
    assert metrics[0]["kl/k1_seq"] == pytest.approx(0.0, abs=1e-5)  # pi_old == pi_init on the first batch
    assert metrics[-1]["kl/k3_seq"] > 0.1  # the policy moved
    # measured on this tiny model: APA (1/lam=1) 40.2 vs 25.7, AWR (1/lam=1) 0.2 vs -12.0
    assert gaps["offline"] > gaps["reversed"] + 5.0, gaps


def test_offline_data_is_validated_and_only_for_offline_algorithms(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b", "reward": 1.0}) + "\n"
                    + json.dumps({"prompt": "a", "response": "b", "reward": "high"}) + "\n")
    cfg = offline_config(tiny_model_dir, data, tmp_path / "run", "apa")
    cfg.offline_columns = ""
    with pytest.raises(DataError, match=r"bad.jsonl, row 2, field 'reward': expected a finite number"):
        train(cfg)
    cfg.algo = "p3o"
    with pytest.raises(ValueError, match="--offline-data works with --algo apa, awr or ilql"):
        train(cfg)
    data.write_text(json.dumps({"prompt": "a", "text": "b", "reward": 1.0}) + "\n")
    cfg.algo = "awr"
    with pytest.raises(DataError, match=r"no column 'response'.*--offline-columns response=YOUR_COLUMN"):
        train(cfg)
    data.write_text(json.dumps({"prompt": "a", "response": "word " * 80, "reward": 1.0}) + "\n")
    with pytest.raises(DataError, match=r"row 1, field 'response': \d+ tokens, over the limit of 32"):
        train(cfg)
