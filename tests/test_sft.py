"""`rlcf sft`: learns a prompt -> completion mapping, trains on completion tokens only, reads messages rows,
names bad rows, resumes exactly, and runs from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
import torch
import yaml

from rlcf.config import DataConfig, SFTConfig
from rlcf.data import DataError
from rlcf.sft import load_sft_rows, run_sft, sft_batch_loss, sft_collate
from helpers.common import override, read_metrics, write_jsonl

COMPLETIONS = {"cat": "the cat sat on the mat", "dog": "a happy dog ran in the park",
               "sea": "write a short note about the sea", "sun": "what a lovely bright sunny day"}
OPENERS = ["tell me about the", "describe a", "a note on the", "what is the"]


def mapping_rows() -> list[dict]:
    return [{"prompt": f"{o} {k}", "completion": c} for k, c in COMPLETIONS.items() for o in OPENERS]


def sft_config(model_dir, data, out, **over) -> SFTConfig:
    cfg = SFTConfig(data=DataConfig(path=data, eval_fraction=0.25), output_dir=str(out), progress=False, save_every=0)
    cfg.model.name_or_path = model_dir
    cfg.optim.lr, cfg.optim.epochs, cfg.optim.minibatch_prompts = 1e-2, 2, 4
    return override(cfg, **over)


def test_sft_lowers_held_out_completion_nll(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", mapping_rows())
    final = run_sft(sft_config(tiny_model_dir, data, tmp_path / "out", **{"optim.epochs": 10}))
    rows = read_metrics(tmp_path / "out")
    evals = [r for r in rows if "eval/nll" in r]
    # a record before training (step 0), then one per epoch end: 12 train rows / 4 = 3 steps per epoch
    assert [r["step"] for r in evals] == list(range(0, 31, 3))
    before, after = evals[0]["eval/nll"], evals[-1]["eval/nll"]
    assert before > 4.5  # a random model: about log(vocab = 320) = 5.8 nats per token
    assert after < 2.5 and after < before - 3.0, (before, after)
    assert [r["step"] for r in rows] == list(range(0, 31))
    assert {"loss/nll", "optim/grad_norm", "perf/step_s", "perf/rows_per_s", "epoch"} <= set(rows[1])
    assert (final / "model.safetensors").exists() and (Path(tmp_path / "out") / "config.yaml").exists()
    card = ModelCard.load(final / "README.md")  # the model card, as after every training command
    assert "sft" in card.data.tags and card.data.library_name == "transformers"


def test_eval_path_replaces_the_held_out_share(tiny_model_dir, tmp_path):
    rows = mapping_rows()
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", rows[:5])
    run_sft(sft_config(tiny_model_dir, data, tmp_path / "out", **{"optim.epochs": 1, "data.eval_path": held}))
    evals = [r for r in read_metrics(tmp_path / "out") if "eval/nll" in r]
    # every row trains (16 / 4 = 4 steps, not 3) and the 5 rows of the file are the held-out ones
    assert len(rows) == 16 and [r["step"] for r in evals] == [0, 4]
    assert {r["eval/examples"] for r in evals} == {5}


def test_loss_covers_completion_tokens_and_eos_only(tiny_model_dir, tmp_path):
    """The padded-batch loss equals the mean NLL of completion tokens (EOS included) computed row by row on
    unpadded sequences: prompt tokens and padding contribute nothing."""
    from rlcf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    lm = load_causal_lm(tiny_model_dir)
    rows = [{"prompt": "tell me about the cat and the dog in the park", "completion": "sat"},
            {"prompt": "sea", "completion": "write a short note about the sea and a rainy morning"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    encoded = load_sft_rows(sft_config(tiny_model_dir, data, tmp_path / "o"), tok)
    for r in encoded:
        assert r["completion_ids"][-1] == tok.eos_token_id
    chat = tok.apply_chat_template([{"role": "user", "content": rows[0]["prompt"]}], add_generation_prompt=True,
                                   return_dict=True)
    assert encoded[0]["prompt_ids"] == chat["input_ids"]
    batch = sft_collate(encoded, tok.pad_token_id)
    assert batch["response_mask"].sum().item() == sum(len(r["completion_ids"]) for r in encoded)
    loss, metrics = sft_batch_loss(lm, batch)

    nll, n = 0.0, 0
    with torch.no_grad():
        for r in encoded:
            ids = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
            logp = torch.log_softmax(lm(ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
            per_token = logp.gather(-1, targets[:, None])[:, 0]
            completion = per_token[len(r["prompt_ids"]) - 1 :]  # targets from the first completion token on
            nll -= completion.sum().item()
            n += completion.numel()
    assert loss.item() == pytest.approx(nll / n, rel=1e-4)
    assert metrics["loss/nll"].item() == pytest.approx(nll / n, rel=1e-4)


def test_messages_rows_train_on_the_last_assistant_turn(tiny_model_dir, tmp_path):
    from rlcf.models import load_tokenizer

    convs = []
    for k, c in COMPLETIONS.items():
        for o in OPENERS[:2]:
            convs.append({"messages": [{"role": "system", "content": "be good"}, {"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "hello"},
                                       {"role": "user", "content": f"{o} {k}"}, {"role": "assistant", "content": c}]})
    data = write_jsonl(tmp_path / "chat.jsonl", convs)
    cfg = sft_config(tiny_model_dir, data, tmp_path / "out", **{"optim.epochs": 3})
    tok = load_tokenizer(tiny_model_dir)
    encoded = load_sft_rows(cfg, tok)
    msgs = convs[0]["messages"]
    prompt = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    completion = tok(msgs[-1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert encoded[0]["prompt_ids"] == prompt and encoded[0]["completion_ids"] == completion
    run_sft(cfg)
    evals = [r["eval/nll"] for r in read_metrics(tmp_path / "out") if "eval/nll" in r]
    assert evals[-1] < evals[0] - 1.0, evals


@pytest.mark.parametrize("rows,columns,max_length,message", [
    ([{"prompt": "a", "answer": "b"}], "", 512, r"d\.jsonl: no column 'completion' \(found: prompt, answer\)"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": " "}], "", 512,
     r"d\.jsonl, row 2, field 'completion': empty text"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": 7, "completion": "b"}], "", 512,
     r"d\.jsonl, row 2, field 'prompt': expected a string, got int"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "the cat sat " * 20}], "", 40,
     r"d\.jsonl, row 2, fields 'prompt' \+ 'completion': \d+ tokens, over the limit of 40; .*--data\.max-length"),
    ([{"q": "a", "answer": "b"}, {"q": "a", "answer": ""}], "prompt=q,completion=answer", 512,
     r"d\.jsonl, row 2, field 'answer': empty text"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
      {"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]}], "", 512,
     r"d\.jsonl, row 2, field 'messages': the last message must be the assistant's"),
])
def test_bad_rows_are_named(tiny_model_dir, tmp_path, rows, columns, max_length, message):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = sft_config(tiny_model_dir, data, tmp_path / "out", **{"data.columns": columns, "data.max_length": max_length})
    with pytest.raises(DataError, match=message):
        run_sft(cfg)
    assert not (tmp_path / "out" / "final").exists()


def test_column_mapping(tiny_model_dir, tmp_path):
    from rlcf.models import load_tokenizer

    rows = [{"question": r["prompt"], "answer": r["completion"]} for r in mapping_rows()]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    tok = load_tokenizer(tiny_model_dir)
    mapped = load_sft_rows(sft_config(tiny_model_dir, data, tmp_path, **{"data.columns": "prompt=question,completion=answer"}), tok)
    plain = load_sft_rows(sft_config(tiny_model_dir, write_jsonl(tmp_path / "pc.jsonl", mapping_rows()), tmp_path), tok)
    assert mapped == plain


def test_resume_repeats_the_uninterrupted_run(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", mapping_rows())
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_sft(sft_config(tiny_model_dir, data, straight, **{"optim.epochs": 2, "optim.grad_accum": 2}))
    run_sft(sft_config(tiny_model_dir, data, split, **{"optim.epochs": 1, "optim.grad_accum": 2}))  # "killed"
    run_sft(sft_config(tiny_model_dir, data, split, **{"optim.epochs": 2, "optim.grad_accum": 2}))
    a, b = read_metrics(straight), read_metrics(split)
    # 3 minibatches per epoch, 2 per step: steps of 2 and 1 minibatches
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("loss/nll", "eval/nll", "optim/grad_norm"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra["step"], key)


@pytest.mark.parametrize("mode", ["lora", "top_blocks"])
def test_lora_and_top_blocks_save_a_plain_changed_model(tiny_model_dir, tmp_path, mode):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sft.jsonl", mapping_rows())
    final = run_sft(sft_config(tiny_model_dir, data, tmp_path / "out",
                               **{"model.reference": mode, "optim.epochs": 1, "optim.lr": 1e-2}))
    assert not (final / "adapter_config.json").exists()
    trained = AutoModelForCausalLM.from_pretrained(final).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    changed = {n for n in initial if not torch.equal(initial[n], trained[n])}
    assert "model.layers.2.self_attn.q_proj.weight" in changed  # a top block trained either way
    if mode == "top_blocks":  # trainable_blocks=2 of 3: block 0 and the embeddings stay
        assert not any(n.startswith("model.layers.0.") or "embed" in n for n in changed), changed


def test_cli_sft_from_yaml_with_override_and_resume(tiny_model_dir, tmp_path, capsys):
    from rlcf.cli import main

    data = write_jsonl(tmp_path / "sft.jsonl", mapping_rows())
    out = tmp_path / "run"
    config = {"data": {"path": data, "eval_fraction": 0.25}, "output_dir": str(out), "progress": False, "save_every": 2,
              "model": {"name_or_path": tiny_model_dir}, "optim": {"lr": 3e-3, "epochs": 1, "minibatch_prompts": 4}}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sft", "--config", str(path), "--optim.minibatch-prompts", "6"]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["optim"]["minibatch_prompts"] == 6 and resolved["optim"]["lr"] == 3e-3
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]  # 12 rows / 6
    assert (out / "final" / "model.safetensors").exists()
    assert (out / "checkpoints" / "step_000002").exists()
    # a second run with more epochs picks up from the checkpoint
    assert main(["sft", "--config", str(path), "--optim.minibatch-prompts", "6", "--optim.epochs", "2"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3, 4]
