"""`rlcf rm`: learns a synthetic preference, reads the score at the last real token with a pad distinct from
EOS, saves a folder the reward scorer loads, truncates backbones, names bad rows, runs from the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from rlcf.config import PairDataConfig, RMConfig
from rlcf.data import DataError
from rlcf.rm import load_rm_model, load_rm_rows, load_rm_tokenizer, rm_batch_loss, rm_collate, run_rm
from helpers.common import override, read_metrics, write_jsonl

GOOD = ["good", "great", "wonderful", "amazing", "happy", "lovely", "bright", "sunny"]
BAD = ["bad", "sad", "gloomy", "awful", "rainy", "the", "a", "mat"]
PROMPTS = ["tell me about your day", "describe a rainy morning", "write a short note about the sea",
           "the cat sat on the mat", "a happy dog ran in the park", "what a day"]


def pairs(n: int, seed: int) -> list[dict]:
    """Chosen responses are made of GOOD words, rejected ones of BAD words (3 to 5 each); one pair per prompt."""
    rng = random.Random(seed)
    return [{"prompt": f"{rng.choice(PROMPTS)} ({i})", "chosen": " ".join(rng.choices(GOOD, k=rng.randint(3, 5))),
             "rejected": " ".join(rng.choices(BAD, k=rng.randint(3, 5)))} for i in range(n)]


def rm_config(model_dir, data, out, **over) -> RMConfig:
    cfg = RMConfig(model=model_dir, data=PairDataConfig(path=data, eval_fraction=0.25), output_dir=str(out), progress=False,
                   save_every=0)
    cfg.optim.lr, cfg.optim.epochs, cfg.optim.minibatch_prompts = 3e-3, 4, 8
    return override(cfg, **over)


def build_tiny_bert_dir(path: Path) -> str:
    """A 2-layer random BERT encoder with the conftest tokenizer (no chat template: texts are 'prompt\nresponse')."""
    from conftest import build_tokenizer
    from transformers import BertConfig, BertModel

    tok = build_tokenizer(chat=False)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_rm_learns_a_preference_and_the_scorer_loads_it(tiny_model_dir_pad_eos, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from rlcf.rewards import RewardSource

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(40, seed=0))
    final = run_rm(rm_config(tiny_model_dir_pad_eos, data, tmp_path / "out",
                             **{"optim.epochs": 2, "optim.minibatch_prompts": 10}))
    rows = read_metrics(tmp_path / "out")
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]  # 30 training pairs / 10 = 3 steps per epoch
    assert evals[0]["eval/accuracy"] < 0.9  # the untrained head is no better than chance
    assert evals[-1]["eval/accuracy"] > 0.9, [r["eval/accuracy"] for r in evals]  # 10 of 10 held-out pairs
    assert {"loss/reward_model", "reward/accuracy", "reward/margin_mean", "eval/margin_mean"} <= set(evals[-1])

    # the tiny tokenizer pads with EOS: the saved reward model has its own pad token
    tok = AutoTokenizer.from_pretrained(final)
    config = AutoConfig.from_pretrained(final)
    assert tok.pad_token_id != tok.eos_token_id and config.pad_token_id == tok.pad_token_id
    assert tok.padding_side == "right"

    # the scorer `rlcf train --reward.model` uses loads the folder and ranks fresh pairs correctly
    scorer = RewardSource(model=str(final), batch_size=8)
    fresh = pairs(24, seed=1)
    prompts = [p["prompt"] for p in fresh]
    chosen = scorer(prompts, [p["chosen"] for p in fresh])
    rejected = scorer(prompts, [p["rejected"] for p in fresh])
    assert (chosen > rejected).float().mean() > 0.9


def test_pairs_of_one_prompt_share_a_row_and_each_text_is_scored_once(tiny_model_dir, tmp_path):
    """K = 3 samples a, b, c of one prompt judged in all three pairs: one row with three distinct texts; the batch
    loss equals the mean Bradley-Terry loss of the pairs each scored on its own; the held-out split keeps a
    prompt's pairs together and eval/accuracy counts pairs, not prompts."""
    import torch.nn.functional as F

    from rlcf.rewards import reward_texts
    from rlcf.train.supervised import split_rows

    a, b, c = "good great", "sad", "the mat"
    rows = [{"prompt": "p1", "chosen": a, "rejected": b}, {"prompt": "p1", "chosen": a, "rejected": c},
            {"prompt": "p1", "chosen": c, "rejected": b}, {"prompt": "p2", "chosen": "happy", "rejected": "rainy"}]
    data = write_jsonl(tmp_path / "k3.jsonl", rows)
    cfg = rm_config(tiny_model_dir, data, tmp_path / "out")
    tok = load_rm_tokenizer(tiny_model_dir)
    encoded = load_rm_rows(cfg, tok)
    assert len(encoded) == 2 and len(encoded[0]["texts"]) == 3 and len(encoded[1]["texts"]) == 2
    assert (encoded[0]["chosen"], encoded[0]["rejected"]) == ([0, 0, 2], [1, 2, 1])
    model = load_rm_model(cfg, tok).eval()
    batch = rm_collate(encoded, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 5  # 5 distinct texts for 4 pairs

    def score(prompt, text):
        ids = torch.tensor([tok(reward_texts(tok, [prompt], [text])[0])["input_ids"]])
        return model(input_ids=ids).logits[0, 0]

    with torch.no_grad():
        loss, m = rm_batch_loss(model, batch)
        gaps = torch.stack([score(r["prompt"], r["chosen"]) - score(r["prompt"], r["rejected"]) for r in rows])
    assert float(loss) == pytest.approx(float(-F.logsigmoid(gaps).mean()), abs=1e-5)
    assert float(m["reward/accuracy"]) == pytest.approx(float((gaps > 0).float().mean()))

    # held out: one of the two prompts (eval_fraction 0.5), counted as its number of pairs
    cfg.data.eval_fraction, cfg.optim.epochs = 0.5, 1
    run_rm(cfg)
    _, held = split_rows(2, 0.5, cfg.seed)
    first = read_metrics(tmp_path / "out")[0]
    assert first["eval/examples"] == len(encoded[held[0]]["chosen"])


def test_eval_path_scores_a_separate_file_and_every_row_trains(tiny_model_dir, tmp_path):
    from rlcf.rewards import RewardSource

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16, seed=0))
    held = pairs(6, seed=2)
    cfg = rm_config(tiny_model_dir, data, tmp_path / "out", **{"optim.epochs": 1, "optim.minibatch_prompts": 4,
                                                               "data.eval_path": write_jsonl(tmp_path / "held.jsonl", held)})
    final = run_rm(cfg)
    evals = [r for r in read_metrics(tmp_path / "out") if "eval/accuracy" in r]
    # all 16 prompts train (4 steps of 4; with eval_fraction 0.25 it would be 3), the 6 pairs of the file are scored
    assert [r["step"] for r in evals] == [0, 4] and evals[-1]["eval/examples"] == 6
    scorer = RewardSource(model=str(final), batch_size=8)
    prompts = [p["prompt"] for p in held]
    wins = scorer(prompts, [p["chosen"] for p in held]) > scorer(prompts, [p["rejected"] for p in held])
    assert evals[-1]["eval/accuracy"] == pytest.approx(float(wins.float().mean()))
    # a bad row of the evaluation file is named by its file, before anything trains
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": 3}])
    cfg = rm_config(tiny_model_dir, data, tmp_path / "out2", **{"data.eval_path": str(tmp_path / "bad.jsonl")})
    with pytest.raises(DataError, match=r"bad\.jsonl, row 1, field 'rejected'"):
        run_rm(cfg)
    assert not (tmp_path / "out2").exists()


def test_score_is_read_at_the_last_real_token(tiny_model_dir_pad_eos, tmp_path):
    """Right-padded with a pad distinct from EOS, the pooled score is the head applied to the last token of the
    unpadded text (the template's closing EOS), whatever the padding around it."""
    from rlcf.rewards import HFRewardModel, reward_texts

    cfg = rm_config(tiny_model_dir_pad_eos, "unused", tmp_path)
    tok = load_rm_tokenizer(tiny_model_dir_pad_eos)
    model = load_rm_model(cfg, tok).eval()
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = HFRewardModel(str(tmp_path / "rm"), batch_size=8)

    prompt, response = "describe a rainy morning", "good great"
    text = reward_texts(tok, [prompt], [response])[0]
    ids = torch.tensor([tok(text)["input_ids"]])
    assert ids[0, -1].item() == tok.eos_token_id  # the template closes the assistant turn with EOS
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        expected = model.score(hidden[:, -1]).item()
    alone = scorer([prompt], [response])[0]
    padded = scorer([prompt, "a much longer prompt about the cat and the dog in the park"],
                    [response, "wonderful amazing lovely bright sunny day " * 3])[0]
    assert alone == pytest.approx(expected, abs=1e-5)
    assert padded == pytest.approx(expected, abs=1e-5)


def test_pad_equal_to_eos_would_read_the_wrong_token(tiny_model_dir_pad_eos, tmp_path):
    """Why the pad token matters: with pad == eos, transformers' pooling skips the closing EOS."""
    from rlcf.rewards import reward_texts

    cfg = rm_config(tiny_model_dir_pad_eos, "unused", tmp_path)
    tok = load_rm_tokenizer(tiny_model_dir_pad_eos)
    model = load_rm_model(cfg, tok).eval()
    ids = torch.tensor([tok(reward_texts(tok, ["a day"], ["good"])[0])["input_ids"]])
    with torch.no_grad():
        right = model(input_ids=ids).logits[0, 0].item()
        model.config.pad_token_id = tok.eos_token_id
        wrong = model(input_ids=ids).logits[0, 0].item()
    assert abs(right - wrong) > 1e-4


def test_margin_column_and_column_mapping(tiny_model_dir, tmp_path):
    rows = [{"q": p["prompt"], "good": p["chosen"], "bad": p["rejected"], "gap": float(i)}
            for i, p in enumerate(pairs(4, seed=0))]
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    cfg = rm_config(tiny_model_dir, data, tmp_path, **{"data.columns": "prompt=q,chosen=good,rejected=bad",
                                                  "data.margin_column": "gap"})
    tok = load_rm_tokenizer(tiny_model_dir)
    encoded = load_rm_rows(cfg, tok)
    assert [r["margin"] for r in encoded] == [[0.0], [1.0], [2.0], [3.0]]
    model = load_rm_model(cfg, tok)
    batch = rm_collate(encoded, tok.pad_token_id)
    with torch.no_grad():
        with_margin = rm_batch_loss(model, batch)[0]
        batch.pop("margin")
        without = rm_batch_loss(model, batch)[0]
    assert with_margin > without  # a positive margin asks for a larger gap


def test_num_layers_truncates_decoders_and_encoders(tiny_model_dir, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    tok = load_rm_tokenizer(tiny_model_dir)
    model = load_rm_model(rm_config(tiny_model_dir, "unused", tmp_path, num_layers=1), tok)
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match=r"--num-layers 5: .* has 3 blocks; choose 1 to 3"):
        load_rm_model(rm_config(tiny_model_dir, "unused", tmp_path, num_layers=5), tok)

    bert_dir = build_tiny_bert_dir(tmp_path / "bert")
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16, seed=0))
    final = run_rm(rm_config(bert_dir, data, tmp_path / "out", num_layers=1, **{"optim.epochs": 1}))
    saved = BertForSequenceClassification.from_pretrained(final)
    assert isinstance(saved.config, BertConfig) and saved.config.num_hidden_layers == 1
    assert len(saved.bert.encoder.layer) == 1


@pytest.mark.parametrize("rows,max_length,message", [
    ([{"prompt": "a", "chosen": "b"}], 512, r"p\.jsonl: no column 'rejected' \(found: prompt, chosen\)"),
    ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": None}], 512,
     r"p\.jsonl, row 2, field 'rejected': expected a string, got NoneType"),
    ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "the cat " * 30, "rejected": "c"}],
     40, r"p\.jsonl, row 2, fields 'prompt' \+ 'chosen': \d+ tokens, over the limit of 40"),
])
def test_bad_pairs_are_named(tiny_model_dir, tmp_path, rows, max_length, message):
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=message):
        run_rm(rm_config(tiny_model_dir, data, tmp_path / "out", **{"data.max_length": max_length}))


def test_cli_rm_then_train_with_the_reward_model(tiny_model_dir, tmp_path, capsys):
    from rlcf.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16, seed=0))
    out = tmp_path / "rm"
    config = {"model": tiny_model_dir, "data": data, "output_dir": str(out), "progress": False,
              "optim": {"lr": 3e-3, "epochs": 1, "minibatch_prompts": 8}}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["rm", "--config", str(path), "--data.eval-fraction", "0.25"]) == 0
    assert "AutoModelForSequenceClassification" in capsys.readouterr().out
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["eval_fraction"] == 0.25
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]  # 12 training pairs / 8
    assert (out / "final" / "model.safetensors").exists()
    # the folder is a reward for online training as it is
    run = tmp_path / "train"
    assert main(["train", "--model.name-or-path", tiny_model_dir, "--reward.model", str(out / "final"),
                 "--steps", "1", "--rollout.prompts-per-step", "2", "--rollout.max-new-tokens", "4",
                 "--output-dir", str(run), "--no-progress"]) == 0
    assert "reward/mean" in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
