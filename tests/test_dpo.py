"""`rlcf dpo`: raises the chosen-minus-rejected log-ratio margin against a reference that stays frozen (in all
three reference modes), builds sequences as the rollout does, names bad rows, runs from the CLI."""

from __future__ import annotations

import random

import pytest
import torch
import yaml

from rlcf.config import DataConfig, DPOStageConfig
from rlcf.data import DataError
from rlcf.dpo import dpo_collate, load_dpo_rows, run_dpo
from helpers.common import override, read_metrics, write_jsonl

GOOD = ["good", "great", "wonderful", "amazing", "happy", "lovely", "bright", "sunny"]
BAD = ["bad", "sad", "gloomy", "awful", "rainy", "cat", "mat", "park"]
PROMPTS = ["tell me about your day", "describe a rainy morning", "write a short note about the sea",
           "the cat sat on the mat", "a happy dog ran in the park", "what a day"]


def pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": rng.choice(PROMPTS), "chosen": " ".join(rng.choices(GOOD, k=rng.randint(2, 4))),
             "rejected": " ".join(rng.choices(BAD, k=rng.randint(2, 4)))} for _ in range(n)]


def dpo_config(model_dir, data, out, **over) -> DPOStageConfig:
    cfg = DPOStageConfig(data=DataConfig(path=data, eval_fraction=0.25), output_dir=str(out), progress=False, save_every=0)
    cfg.model.name_or_path = model_dir
    cfg.optim.lr, cfg.optim.epochs, cfg.optim.minibatch_prompts = 3e-3, 2, 8
    return override(cfg, **over)


@pytest.fixture()
def capture_models(monkeypatch):
    """The PolicyModels run_dpo builds, kept for inspection after the run."""
    import rlcf.dpo

    built = []
    original = rlcf.dpo.build_models

    def build(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(rlcf.dpo, "build_models", build)
    return built


@pytest.mark.parametrize("mode", ["copy", "top_blocks", "lora"])
def test_dpo_raises_the_margin_and_the_reference_stays_frozen(tiny_model_dir, tmp_path, capture_models, mode):
    from rlcf.models import load_causal_lm, load_tokenizer
    from rlcf.models import response_logprobs

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(32, seed=0))
    lr = 1e-2 if mode == "lora" else 3e-3
    run_dpo(dpo_config(tiny_model_dir, data, tmp_path / "out", **{"model.reference": mode, "optim.lr": lr}))
    rows = read_metrics(tmp_path / "out")
    evals = [r for r in rows if "eval/margin" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]  # 24 training pairs / 8 = 3 steps per epoch
    # at the start the policy is the reference: every implicit reward is exactly 0
    assert evals[0]["eval/margin"] == pytest.approx(0.0, abs=1e-5)
    assert evals[0]["eval/dpo"] == pytest.approx(0.6931, abs=1e-3)  # log 2
    # beta * (log-ratio of chosen - log-ratio of rejected); measured 1.07 (copy), 0.26 (top_blocks), 0.49 (lora)
    assert evals[-1]["eval/margin"] > 0.2, [r["eval/margin"] for r in evals]
    assert evals[-1]["eval/accuracy"] > 0.8
    assert evals[-1]["eval/chosen"] > evals[-1]["eval/rejected"]
    assert {"loss/dpo", "reward/chosen", "reward/rejected", "reward/margin", "reward/accuracy"} <= set(rows[1])

    # the reference still gives the initial model's log-probs; the policy does not
    models = capture_models[0]
    tok = load_tokenizer(tiny_model_dir)
    batch = dpo_collate(load_dpo_rows(dpo_config(tiny_model_dir, data, tmp_path), tok)[:4], tok.pad_token_id)
    device = next(models.policy.parameters()).device  # the GPU, where the suite runs on a machine with one
    args = tuple(batch[k].to(device) for k in ("query_ids", "query_mask", "response_ids", "response_mask"))
    mask = args[3].bool()
    with torch.no_grad():
        initial = response_logprobs(load_causal_lm(tiny_model_dir).to(device), *args)
        ref = models.ref_logprobs(*args)
        policy = models(*args)[0]
    torch.testing.assert_close(ref[mask], initial[mask], rtol=1e-5, atol=1e-5)
    assert (policy[mask] - initial[mask]).abs().max() > 1e-2


def test_sequences_are_built_as_the_rollout_builds_them(tiny_model_dir, tmp_path):
    from rlcf.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    rows = [{"prompt": "a day", "chosen": "good great", "rejected": "the cat sat on the mat"},
            {"prompt": "tell me about the sea", "chosen": "lovely", "rejected": "bad"}]
    encoded = load_dpo_rows(dpo_config(tiny_model_dir, write_jsonl(tmp_path / "p.jsonl", rows), tmp_path), tok)
    assert encoded[0]["prompt_ids"] == tok.apply_chat_template([{"role": "user", "content": "a day"}],
                                                               add_generation_prompt=True, return_dict=True)["input_ids"]
    assert encoded[0]["chosen_ids"] == tok("good great", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = dpo_collate(encoded, tok.pad_token_id)
    # [chosen_0, chosen_1, rejected_0, rejected_1], prompts repeated and left-padded, responses right-padded
    assert batch["query_ids"].shape[0] == batch["response_ids"].shape[0] == 4
    torch.testing.assert_close(batch["query_ids"][:2], batch["query_ids"][2:])
    assert batch["query_mask"][0, 0] == 0 and batch["query_mask"][:, -1].all()  # left padding
    lengths = batch["response_mask"].sum(1).tolist()
    assert lengths == [len(encoded[0]["chosen_ids"]), len(encoded[1]["chosen_ids"]),
                       len(encoded[0]["rejected_ids"]), len(encoded[1]["rejected_ids"])]
    for i, n in enumerate(lengths):
        assert batch["response_ids"][i, n - 1] == tok.eos_token_id  # each response ends with its EOS, in the mask


@pytest.mark.parametrize("rows,columns,max_length,message", [
    ([{"question": "a", "chosen": "b", "rejected": "c"}], "", 512,
     r"p\.jsonl: no column 'prompt' \(found: question, chosen, rejected\); .*--data\.columns prompt=YOUR_COLUMN"),
    ([{"question": "a", "good": "b", "bad": "c"}, {"question": "a", "good": "", "bad": "c"}],
     "prompt=question,chosen=good,rejected=bad", 512, r"p\.jsonl, row 2, field 'good': empty text"),
    ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": "the cat " * 30}],
     "", 40, r"p\.jsonl, row 2, fields 'prompt' \+ 'rejected': \d+ tokens, over the limit of 40"),
])
def test_bad_pairs_are_named(tiny_model_dir, tmp_path, rows, columns, max_length, message):
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=message):
        run_dpo(dpo_config(tiny_model_dir, data, tmp_path / "out", **{"data.columns": columns, "data.max_length": max_length}))


def test_cli_dpo_from_yaml_with_override(tiny_model_dir, tmp_path, capsys):
    from rlcf.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16, seed=0))
    out = tmp_path / "dpo"
    config = {"data": {"path": data, "eval_fraction": 0.25}, "output_dir": str(out), "progress": False, "beta": 0.5,
              "model": {"name_or_path": tiny_model_dir}, "optim": {"lr": 3e-3, "epochs": 1, "minibatch_prompts": 4}}
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["dpo", "--config", str(path), "--beta", "0.2"]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["beta"] == 0.2 and resolved["optim"]["minibatch_prompts"] == 4
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]  # 12 training pairs / 4
    assert (out / "final" / "model.safetensors").exists()
    # a separate evaluation file from the command line: all 16 pairs train, its 3 pairs are scored
    held = write_jsonl(tmp_path / "held.jsonl", pairs(3, seed=1))
    assert main(["dpo", "--config", str(path), "--data.eval-path", held, "--output-dir", str(tmp_path / "dpo2")]) == 0
    metrics = read_metrics(tmp_path / "dpo2")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4] and metrics[-1]["eval/examples"] == 3
    assert (out / "checkpoints" / "step_000003").exists()
    # a missing data file is a clean error (exit 2), not a traceback
    assert main(["dpo", "--config", str(path), "--data.path", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
