"""Preference pairs in every common shape (data/pairs.py): string pairs, conversational with an explicit or an
implicit prompt, and HH-style plain-text dialogue. Each trains `rlcf rm` and `rlcf dpo` with its shape reported,
a conversational pair tokenizes as the chat template of the whole conversation, bad pairs are one line naming the
row, and offline APA learns from conversational pairs."""

from __future__ import annotations

import math
import random

import datasets
import pytest
from huggingface_hub import ModelCard

from helpers.common import read_metrics, write_jsonl
from rlcf.cli import main
from rlcf.config import DataConfig, DPOStageConfig, TrainConfig
from rlcf.data import SHAPES, encode_chat_response, encode_prompt, load_pairs
from rlcf.dpo import load_dpo_rows
from rlcf.models import load_tokenizer
from rlcf.rewards.sources import chat_reward_texts, reward_texts
from rlcf.train.offline import load_offline_rows
from rlcf.trainer import train

GOOD = ["good", "great", "wonderful", "amazing", "happy", "lovely", "bright", "sunny"]
BAD = ["bad", "sad", "gloomy", "awful", "rainy", "cat", "mat", "park"]
PROMPTS = ["tell me about your day", "describe a rainy morning", "write a short note about the sea",
           "the cat sat on the mat", "a happy dog ran in the park", "what a day"]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def triples(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(PROMPTS), " ".join(rng.choices(GOOD, k=3)), " ".join(rng.choices(BAD, k=3)))
            for _ in range(n)]


def rows_of(shape: str, n: int = 8) -> list[dict]:
    out = []
    for p, c, r in triples(n):
        if shape == "explicit":  # a system turn and an earlier exchange in the prompt
            prompt = [{"role": "system", "content": "be kind"}, user("hello"), assistant("good day"), user(p)]
            out.append({"prompt": prompt, "chosen": [assistant(c)], "rejected": [assistant(r)]})
        elif shape == "implicit":
            out.append({"chosen": [user(p), assistant(c)], "rejected": [user(p), assistant(r)]})
        else:  # HH's text form
            start = f"\n\nHuman: {p}\n\nAssistant:"
            out.append({"chosen": f"{start} {c}", "rejected": f"{start} {r}"})
    return out


LABEL = {"explicit": "conversational, explicit prompt", "implicit": "conversational, implicit prompt",
         "dialogue": "plain-text dialogue, implicit prompt"}


def write_shape(tmp_path, shape: str) -> str:
    """JSON lines by hand, except the conversational shapes, written by `datasets` (Parquet, and its to_json)."""
    rows = rows_of(shape)
    if shape == "explicit":
        path = str(tmp_path / "pairs.parquet")
        datasets.Dataset.from_list(rows).to_parquet(path)
    elif shape == "implicit":
        path = str(tmp_path / "pairs.jsonl")
        datasets.Dataset.from_list(rows).to_json(path)
    else:
        path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    return path


@pytest.mark.parametrize("shape", ["explicit", "implicit", "dialogue"])
def test_each_shape_trains_rm_and_dpo(tiny_model_dir, tmp_path, capsys, shape):
    data = write_shape(tmp_path, shape)
    common = ["--data.path", data, "--data.eval-path", data, "--optim.epochs", "1", "--save-every", "0",
              "--no-progress"]
    assert main(["rm", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "rm"), "--optim.lr", "3e-3",
                 "--optim.minibatch-prompts", "4", *common]) == 0
    out = capsys.readouterr().out
    assert f"rlcf rm: read 8 pairs from {data} ({LABEL[shape]})" in out
    assert "eval/accuracy" in read_metrics(tmp_path / "rm")[-1]

    assert main(["dpo", "--model.name-or-path", tiny_model_dir, "--output-dir", str(tmp_path / "dpo"),
                 "--optim.lr", "1e-2", "--optim.minibatch-prompts", "2", *common]) == 0
    assert f"rlcf dpo: read 8 pairs from {data} ({LABEL[shape]})" in capsys.readouterr().out
    metrics = read_metrics(tmp_path / "dpo")
    evals = [m for m in metrics if "eval/margin" in m]
    assert len(evals) >= 2 and evals[0]["eval/margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert all(math.isfinite(m["loss/dpo"]) for m in metrics if "loss/dpo" in m)
    # 4 steps at a high lr on these very pairs: chosen log-probs rise against rejected ones (measured 0.9 to 1.2)
    assert evals[-1]["eval/margin"] > evals[0]["eval/margin"] + 0.3, [m["eval/margin"] for m in evals]
    # both finals carry a model card that huggingface_hub loads
    for command in ("rm", "dpo"):
        card = ModelCard.load(tmp_path / command / "final" / "README.md")
        assert command in card.data.tags and f"rlcf {command} --config rlcf_config.yaml" in card.text


def test_conversational_tokens_are_the_template_of_the_whole_conversation(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rows = rows_of("explicit", 2) + [{"prompt": [user("the cat")],  # a reply of two assistant turns and a tool turn
                                      "chosen": [assistant("good"), {"role": "tool", "content": "sunny"},
                                                 assistant("great day")],
                                      "rejected": [assistant("bad")]}]
    cfg = DPOStageConfig(data=DataConfig(path=write_jsonl(tmp_path / "p.jsonl", rows)), output_dir=str(tmp_path))
    cfg.model.name_or_path = tiny_model_dir
    encoded = load_dpo_rows(cfg, tok)
    for row, enc in zip(rows, encoded):
        for side in ("chosen", "rejected"):
            whole = tok.apply_chat_template(row["prompt"] + row[side], return_dict=True)["input_ids"]
            assert enc["prompt_ids"] + enc[f"{side}_ids"] == list(whole)
            assert enc[f"{side}_ids"][-1] == tok.eos_token_id  # the template closes the assistant turn
    assert enc["prompt_ids"] == tok.apply_chat_template([user("the cat")], add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]
    # the reward model reads the whole conversation; a one-turn one reads as the string pair would
    assert chat_reward_texts(tok, [rows[0]["prompt"]], [rows[0]["chosen"]]) == [
        tok.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"], tokenize=False)]
    assert chat_reward_texts(tok, [[user("a day")]], [[assistant("good")]]) == reward_texts(tok, ["a day"], ["good"])


def test_a_template_that_renders_the_prompt_otherwise_falls_back_to_the_reply_text(tiny_model_dir):
    """A template whose prompt (with the generation prompt) is no prefix of the whole conversation: the reply's
    assistant text is encoded as a string response is, ending in EOS."""
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = "{% if add_generation_prompt %}<bos>{% endif %}" + tok.chat_template
    prompt = [user("the cat")]
    prompt_ids = encode_prompt(tok, prompt, True)
    ids = encode_chat_response(tok, prompt, [assistant("good"), user("?"), assistant("great day")], prompt_ids)
    assert ids == tok("good\ngreat day", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_dialogue_prompt_is_cut_at_the_assistant_marker(tmp_path):
    # the replies share "Sun" (TRL's character cut would split the word); the prompt ends at the last shared marker
    start = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is bright?\n\nAssistant:"
    rows = [{"chosen": start + " Sunlight.", "rejected": start + " Sunday."},
            {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: yes", "rejected": "\n\nHuman: a"
             "\n\nAssistant: b\n\nHuman: c\n\nAssistant: no\n\nHuman: why?\n\nAssistant: because"}]
    pairs = load_pairs(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert pairs.shape == "plain-text dialogue, implicit prompt" and pairs.shape in SHAPES
    assert pairs.rows[0] == {"prompt": start, "chosen": " Sunlight.", "rejected": " Sunday."}
    assert pairs.rows[1]["prompt"].endswith("Human: c\n\nAssistant:")
    assert pairs.rows[1]["rejected"] == " no\n\nHuman: why?\n\nAssistant: because"  # ends with the assistant


def test_conversational_implicit_prompt_is_the_longest_shared_prefix(tmp_path):
    rows = [{"chosen": [user("a"), assistant("b"), user("c"), assistant("yes")],
             "rejected": [user("a"), assistant("b"), user("c"), assistant("no"), user("why"), assistant("so")]}]
    pairs = load_pairs(write_jsonl(tmp_path / "c.jsonl", rows))
    assert pairs.rows == [{"prompt": [user("a"), assistant("b"), user("c")], "chosen": [assistant("yes")],
                           "rejected": [assistant("no"), user("why"), assistant("so")]}]


@pytest.mark.parametrize("rows,message", [
    ([{"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("c")]},
      {"chosen": [user("x"), assistant("b")], "rejected": [user("y"), assistant("c")]}],
     "row 2, fields 'chosen' + 'rejected': chosen and rejected share no prompt"),
    ([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: b"}],
     "row 1, fields 'chosen' + 'rejected': chosen and rejected share no prompt"),
    ([{"chosen": [user("a"), assistant("b"), user("more?")], "rejected": [user("a"), assistant("c")]}],
     "row 1, field 'chosen': the response ends in a non-assistant turn ('user')"),
    ([{"prompt": [user("a")], "chosen": [assistant("b")], "rejected": [assistant("c")]},
      {"prompt": "a", "chosen": "b", "rejected": "c"}],
     "row 2, field 'prompt': a string, but row 1 is conversational, explicit prompt; a file holds one shape"),
    ([{"prompt": [user("a")], "chosen": [assistant("b")], "rejected": [{"role": "assistant"}]}],
     "row 1, field 'rejected': message 0 must be {'role': str, 'content': str}"),
])
def test_bad_pairs_are_one_line_naming_the_row(tiny_model_dir, tmp_path, capsys, rows, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["dpo", "--model.name-or-path", tiny_model_dir, "--data.path", data,
                 "--output-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert err.startswith(f"rlcf dpo: {data}, {message}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything trains


def test_label_output_round_trips_as_string_pairs(tmp_path):
    """`rlcf label` writes string pairs with scores and flags beside them: read back as they were written."""
    row = {"prompt": "describe the sea", "chosen": " aeiou", "rejected": " rhythm", "chosen_score": 0.8,
           "rejected_score": 0.1, "chosen_truncated": False, "rejected_truncated": True}
    pairs = load_pairs(write_jsonl(tmp_path / "label.jsonl", [row, {**row, "prompt": "a cat"}]))
    assert pairs.shape == "string pairs" and not pairs.conversational
    assert pairs.rows[0] == {k: row[k] for k in ("prompt", "chosen", "rejected")}


def test_offline_apa_on_conversational_pairs(tiny_model_dir, tmp_path):
    rows = rows_of("implicit", 4)
    rows[0]["chosen"] = rows[0]["chosen"][:1] + [assistant("good"), user("and?"), assistant("great")]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = TrainConfig(algo="apa", offline_data=data, steps=1, output_dir=str(tmp_path / "run"), progress=False,
                      save_every=0)
    cfg.model.name_or_path = tiny_model_dir
    cfg.model.critic = "value_head"
    cfg.rollout.prompts_per_step = 4
    offline = load_offline_rows(cfg)
    assert len(offline) == 8 and [r["reward"] for r in offline[:2]] == [1.0, -1.0]
    # a reply's earlier turns join the prompt's messages; its last assistant message is the response
    assert offline[0]["chat"] == [rows[0]["chosen"][0], assistant("good"), user("and?")]
    assert offline[0]["response"] == "great"
    assert offline[0]["prompt"] == f"{rows[0]['chosen'][0]['content']}\ngood\nand?"  # what a reward reads
    assert offline[1]["chat"] == rows[0]["rejected"][:1] and offline[1]["response"] == rows[0]["rejected"][1]["content"]
    train(cfg)
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1] and metrics[0]["optim/skipped_updates"] == 0
    assert math.isfinite(metrics[0]["loss/policy"]) and (tmp_path / "run" / "final" / "model.safetensors").exists()
