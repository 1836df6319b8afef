"""Hostile data files, text and model folders (issue 26, round three): text as users have it (byte-order marks, CRLF,
gzip) is read; NUL characters, lone surrogates, JSON nested too deeply, huge numbers and huge prompts, chat templates
that raise, tokenizers without EOS or pad, weights missing tensors or of the wrong shape, damaged safetensors and
pickles with a payload are refused with one line naming the file, row, field or folder, in bounded time and memory.

The table runs the CLI in-process (`rlcf.cli.main`), as tests/test_hostile_inputs.py does; unit tests below call the
loaders directly.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model_dir
from helpers.common import assert_one_clear_line
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcf.cli import main
from rlcf.data import (
    DataError,
    Prompt,
    encode_prompt,
    load_prompts,
    load_records,
    load_rows,
    loading,
    prepare_prompts,
    tokenize_prompts,
    tokenize_responses,
)
from rlcf.models import ModelError, load_causal_lm, load_tokenizer

RAISING_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                    "supported') }}{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class Payload:
    """A pickle that runs a shell command when unpickled without weights_only (it would create `marker`)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _copy_model(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _model_folders(tmp: Path, tiny: str, chat_free: str) -> None:
    """Broken copies of the tiny model, one per case."""
    weights = load_file(os.path.join(tiny, "model.safetensors"))
    half = _copy_model(tiny, tmp / "half")  # re-saved without layers 1 and 2
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k and ".layers.2." not in k},
              half / "model.safetensors", metadata={"format": "pt"})
    _edit_json(_copy_model(tiny, tmp / "shape") / "config.json", intermediate_size=48)
    (_copy_model(tiny, tmp / "empty-st") / "model.safetensors").write_bytes(b"")
    data = (tmp / "half" / "model.safetensors").read_bytes()
    (_copy_model(tiny, tmp / "cut-st") / "model.safetensors").write_bytes(data[: len(data) // 2])
    _edit_json(_copy_model(tiny, tmp / "vocab0") / "config.json", vocab_size=0)
    evil = _copy_model(tiny, tmp / "evil")
    os.remove(evil / "model.safetensors")
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Payload(str(tmp / "PAYLOAD_RAN"))},
               evil / "pytorch_model.bin")
    shard = _copy_model(tiny, tmp / "shard")
    os.remove(shard / "model.safetensors")
    names = sorted(weights)
    save_file({k: weights[k] for k in names[:10]}, shard / "model-00001-of-00002.safetensors",
              metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + (i >= 10)}-of-00002.safetensors"
                                            for i, k in enumerate(names)}}
    (shard / "model.safetensors.index.json").write_text(json.dumps(index))  # the second shard never arrived
    _edit_json(_copy_model(tiny, tmp / "noeos") / "tokenizer_config.json", eos_token=None, pad_token=None)
    (_copy_model(tiny, tmp / "tmpl-raises") / "chat_template.jinja").write_text(RAISING_TEMPLATE)
    _copy_model(chat_free, tmp / "no-template")
    other = _copy_model(tiny, tmp / "other-tok")
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)


def _data_files(tmp: Path) -> None:
    (tmp / "nul.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a\\u0000dog"}\n')
    (tmp / "sur.jsonl").write_text('{"prompt": "a \\ud800 cat"}\n')
    _jsonl(tmp / "msur.jsonl", [{"prompt": "a cat"}])
    with open(tmp / "msur.jsonl", "a") as f:
        f.write('{"prompt": [{"role": "user", "content": "hi \\udc00"}]}\n')
    (tmp / "deep.jsonl").write_text('{"prompt": "a"}\n{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (tmp / "deep.json").write_text('[\n {"prompt": "a"},\n {"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n]\n")
    (tmp / "bigint.jsonl").write_text('{"prompt": "a", "n": 1' + "0" * 5000 + "}\n")
    (tmp / "u16.jsonl").write_bytes('{"prompt": "a cat"}\n'.encode("utf-16"))
    full = gzip.compress("".join(json.dumps({"prompt": f"prompt {i} {i * i}"}) + "\n" for i in range(3000)).encode())
    (tmp / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    (tmp / "plain.jsonl.gz").write_text('{"prompt": "a cat"}\n')
    (tmp / "empty.jsonl.gz").write_bytes(b"")
    (tmp / "nul.csv").write_bytes(b"prompt,x\na\x00cat,1\n")
    (tmp / "giant.jsonl").write_text(json.dumps({"prompt": "the cat sat on the mat " * 220_000}) + "\n")  # ~5 MB
    _jsonl(tmp / "system.jsonl", [{"prompt": "a cat"}, {"prompt": [{"role": "system", "content": "be terse"},
                                                                   {"role": "user", "content": "hi"}]}])
    _jsonl(tmp / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    (tmp / "sft-sur.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                       '{"role": "assistant", "content": "\\ud83d oops"}]}\n')
    _jsonl(tmp / "sft-system.jsonl", [{"messages": [{"role": "system", "content": "s"},
                                                    {"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}]}])
    _jsonl(tmp / "prompts.jsonl", [{"prompt": "a cat"}, {"prompt": "a dog"}])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("hostile_round3")
    chat_free = build_tiny_model_dir(tmp_path_factory.mktemp("tiny_no_chat"), chat=False)
    _model_folders(tmp, tiny_model_dir, chat_free)
    _data_files(tmp)
    return {"tmp": str(tmp), "model": tiny_model_dir}


TRAIN = ["--model.name-or-path", "{model}", "--steps", "1", "--rollout.max-new-tokens", "4", "--no-progress",
         "--reward.function", "helpers.vowel_reward:reward", "--prompts", "{tmp}/prompts.jsonl",
         "--output-dir", "{out}"]


def _train(prompts: str | None = None, model: str | None = None) -> list[str]:
    args = list(TRAIN)
    if prompts:
        args += ["--prompts", "{tmp}/" + prompts]
    if model:
        args += ["--model.name-or-path", "{tmp}/" + model]
    return args


SFT = ["--model.name-or-path", "{model}", "--no-progress", "--output-dir", "{out}"]
# id -> (command, args, fragments the one line must contain)
CASES = {
    # text in data files (issue items 4-6 and relatives)
    "nul-in-prompt": ("train", _train("nul.jsonl"), ["nul.jsonl, row 2, field 'prompt'", "NUL"]),
    "lone-surrogate-in-prompt": ("train", _train("sur.jsonl"), ["sur.jsonl, row 1, field 'prompt'", "surrogate",
                                                                "\\ud800"]),
    "lone-surrogate-in-messages": ("train", _train("msur.jsonl"), ["msur.jsonl, row 2, field 'prompt', message 0",
                                                                   "surrogate"]),
    "nul-in-csv-cell": ("train", _train("nul.csv"), ["nul.csv, row 1, field 'prompt'", "NUL"]),
    "deeply-nested-json-line": ("train", _train("deep.jsonl"), ["deep.jsonl, line 2", "nested too deeply"]),
    "deeply-nested-json-array": ("train", _train("deep.json"), ["deep.json, line 3", "nested too deeply"]),
    "integer-of-5000-digits": ("train", _train("bigint.jsonl"), ["bigint.jsonl, line 1", "digits"]),
    "utf16-file": ("train", _train("u16.jsonl"), ["u16.jsonl", "UTF-16", "save the file as UTF-8"]),
    "truncated-gz": ("train", _train("cut.jsonl.gz"), ["cut.jsonl.gz", "not a readable gzip file", "truncated"]),
    "gz-that-is-not-gzip": ("train", _train("plain.jsonl.gz"), ["plain.jsonl.gz", "not a readable gzip file"]),
    "empty-gz": ("train", _train("empty.jsonl.gz"), ["empty.jsonl.gz", "empty"]),
    "5mb-prompt": ("train", _train("giant.jsonl"), ["giant.jsonl, row 1", "characters", "far over the limit",
                                                    "--rollout.max-prompt-tokens"]),
    "sft-lone-surrogate-in-messages": ("sft", SFT + ["--data.path", "{tmp}/sft-sur.jsonl"],
                                       ["sft-sur.jsonl, row 1, field 'messages', message 1 'content'", "surrogate"]),
    # chat templates and tokenizers (items 7, 8)
    "chat-template-raises": ("train", _train("system.jsonl", "tmpl-raises"),
                             ["system.jsonl, row 2", "chat template of", "tmpl-raises", "System role not supported"]),
    "sft-chat-template-raises": ("sft", SFT + ["--model.name-or-path", "{tmp}/tmpl-raises", "--data.path",
                                               "{tmp}/sft-system.jsonl"],
                                 ["chat template of", "tmpl-raises", "System role not supported"]),
    "messages-without-a-template": ("train", _train("chat.jsonl", "no-template"),
                                    ["chat.jsonl, row 1", "no-template", "no chat template"]),
    "tokenizer-without-eos-or-pad": ("train", _train(model="noeos"),
                                     ["noeos", "neither an EOS nor a pad token", "tokenizer_config.json"]),
    # model folders (items 9-11 and relatives)
    "weights-missing-half-the-tensors": ("train", _train(model="half"),
                                         ["half", "lack 18 of the model's", "model.layers.1.", "random"]),
    "weights-of-another-shape": ("train", _train(model="shape"),
                                 ["shape", "[32, 64] in the weights but [32, 48] by config.json"]),
    "pickle-with-a-payload": ("train", _train(model="evil"),
                              ["pytorch_model.bin", "weights-only", "posix.system", "weights_only=False",
                               "safe_serialization=True"]),
    "empty-model-safetensors": ("train", _train(model="empty-st"),
                                ["empty-st/model.safetensors", "cannot be read as safetensors"]),
    "truncated-model-safetensors": ("train", _train(model="cut-st"),
                                    ["cut-st/model.safetensors", "cannot be read as safetensors"]),
    "shard-missing": ("train", _train(model="shard"),
                      ["shard", "model.safetensors.index.json", "model-00002-of-00002.safetensors"]),
    "config-vocab-size-0": ("train", _train(model="vocab0"), ["vocab0/config.json", "vocab_size is 0"]),
    # item 12: policy and reference of different tokenizers
    "eval-reference-other-tokenizer": ("eval", ["--model", "{model}", "--reference", "{tmp}/other-tok", "--prompts",
                                                "{tmp}/prompts.jsonl", "--output", "{out}/eval.json"],
                                       ["other-tok", "different tokenizers"]),
}


def run_main(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    return rc, capsys.readouterr().err


def test_case_table_covers_the_issue():
    assert len(CASES) >= 16
    assert {c[0] for c in CASES.values()} == {"train", "sft", "eval"}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_clear_line(case, world, capsys, tmp_path):
    command, args, expected = CASES[case]
    values = dict(world, out=str(tmp_path / "out"))
    rc, err = run_main([command] + [a.format(**values) for a in args], capsys)
    line = assert_one_clear_line(case, rc, err, expected)
    assert "rerun with --debug" not in line  # an error rlcf names, not an unexpected one
    assert not (tmp_path / "out").exists(), f"{case}: the output folder was written"
    assert not (Path(world["tmp"]) / "PAYLOAD_RAN").exists()


# ---------------------------------------------------------------------------------------------------------------
# text as users have it is read (items 1-3)


def test_byte_order_marks_and_crlf_are_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n{"prompt": "b"}\r\n')
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf[{"prompt": "a"},\r\n {"prompt": "b"}]\r\n')
    (tmp_path / "bom.csv").write_bytes(b'\xef\xbb\xbfprompt,x\r\na,1\r\n"b\r\nc",2\r\n')
    # files joined with cat: the second one's byte-order mark starts a later line
    (tmp_path / "joined.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\xef\xbb\xbf{"prompt": "b"}\n')
    assert load_rows("bom.jsonl") == [{"prompt": "a"}, {"prompt": "b"}]
    assert load_rows("bom.json") == [{"prompt": "a"}, {"prompt": "b"}]
    assert load_rows("joined.jsonl") == [{"prompt": "a"}, {"prompt": "b"}]
    rows = load_rows("bom.csv")
    assert list(rows[0]) == ["prompt", "x"]  # the first column's name does not carry the mark
    assert [r["prompt"] for r in rows] == ["a", "b\r\nc"]


@pytest.mark.parametrize("name", ["p.jsonl.gz", "p.json.gz", "p.csv.gz", "P.JSONL.GZ"])
def test_gzip_files_are_read_like_plain_ones(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": "a cat", "reward": 1.5}, {"prompt": "café, with a comma", "reward": -2.0}]
    if ".csv" in name.lower():
        text = 'prompt,reward\r\n"a cat",1.5\r\n"café, with a comma",-2.0\r\n'
    elif ".jsonl" in name.lower():
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows)
    (tmp_path / name).write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))
    assert load_records(name, text=("prompt",), numbers=("reward",)) == rows


def test_gzip_rows_are_checked_and_errors_name_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a"}\n\n{"prompt" "b"}\n'))
    with pytest.raises(DataError, match=r"^p\.jsonl\.gz, line 3: not valid JSON"):
        load_prompts("p.jsonl.gz")
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a"}\n\n{"prompt": ""}\n'))
    with pytest.raises(DataError, match=r"^e\.jsonl\.gz, row 2 \(line 3\), field 'prompt': empty prompt"):
        load_prompts("e.jsonl.gz")
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"prompt,x\nhello,1\nhi, there,2\n"))
    with pytest.raises(DataError, match=r"^c\.csv\.gz, line 3: 3 fields, but the header has 2"):
        load_prompts("c.csv.gz")
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(b"hello\n"))
    with pytest.raises(DataError, match=r"^t\.txt\.gz: unsupported file type '\.txt\.gz'"):
        load_prompts("t.txt.gz")


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "_GZ_LIMIT", 1 << 20)
    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "a"}\n' + b" " * (8 << 20)))
    with pytest.raises(DataError, match=r"^bomb\.jsonl\.gz: decompresses to over 1,048,576 bytes"):
        load_prompts("bomb.jsonl.gz")


# ---------------------------------------------------------------------------------------------------------------
# text that is refused (items 4-6)


def test_nul_and_lone_surrogates_are_refused_in_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                                      '{"prompt": "a", "chosen": "b\\ud800", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"^r\.jsonl, row 2, field 'chosen': holds a lone surrogate \(\\ud800, "
                                        r"character 2\)"):
        load_records("r.jsonl", text=("prompt", "chosen", "rejected"))
    (tmp_path / "m.jsonl").write_text('{"messages": [{"role": "user\\u0000", "content": "q"}]}\n')
    with pytest.raises(DataError, match=r"^m\.jsonl, row 1, field 'messages', message 0 'role': holds a NUL"):
        load_records("m.jsonl", messages=("messages",))
    # a surrogate pair is one character, and fine
    (tmp_path / "ok.jsonl").write_text('{"prompt": "smile \\ud83d\\ude00"}\n')
    assert load_prompts("ok.jsonl")[0].text == "smile \U0001F600"


def test_deep_nesting_within_reach_is_a_row_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"prompt": ' + "[" * 50 + "]" * 50 + "}\n")
    with pytest.raises(DataError, match=r"^d\.jsonl, row 1, field 'prompt': message 0 must be"):
        load_prompts("d.jsonl")


def _spy_on_tokenizer(monkeypatch, tok) -> list[int]:
    """The length of every text the tokenizer is called on."""
    seen, call = [], type(tok).__call__

    def spy(self, text=None, *args, **kwargs):
        seen.append(len(text) if isinstance(text, str) else -1)
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", spy)
    return seen


def test_a_huge_prompt_is_refused_from_a_prefix(tiny_model_dir, monkeypatch):
    tok = load_tokenizer(tiny_model_dir)
    giant = "the cat sat on the mat " * 220_000  # ~5 MB
    seen = _spy_on_tokenizer(monkeypatch, tok)
    prompts = [Prompt("a cat", None), Prompt(giant, None), Prompt("a dog", None)]
    for chat_template in ("off", "auto"):
        with pytest.raises(DataError, match=r"^p\.jsonl, row 2: 5,060,0\d\d characters, far over the limit of 64 "
                                            r"tokens \(the first 1,024 characters alone are \d+ tokens\)"):
            tokenize_prompts(prompts, tok, 64, chat_template, "p.jsonl")
    kept, ids = prepare_prompts(prompts, tok, 64, "off", "p.jsonl", long_prompts="skip")
    assert [p.text for p in kept] == ["a cat", "a dog"] and len(ids) == 2
    with pytest.raises(DataError, match=r"^d\.jsonl, row 7, field 'prompt': 5,060,000 characters, far over .* "
                                        r"--data\.max-length$"):
        encode_prompt(tok, giant, False, 64, "d.jsonl, row 7, field 'prompt'")
    with pytest.raises(DataError, match=r"^o\.jsonl, row 1, field 'response': 5,060,000 characters, far over"):
        tokenize_responses([giant], tok, 64, "o.jsonl")
    assert seen and max(seen) <= 1024  # the giant text was never tokenized whole
    # a long prompt of few tokens (spaces merge) under the cut is still tokenized and measured exactly
    assert len(tokenize_prompts([Prompt("a " * 300, None)], tok, 1024, "off")[0]) <= 1024


def test_chat_templates_that_raise_name_the_row_and_the_tokenizer(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = RAISING_TEMPLATE
    system = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    with pytest.raises(DataError, match=rf"^p\.jsonl, row 2: the chat template of {tiny_model_dir} refused the "
                                        r"messages \(System role not supported\)"):
        tokenize_prompts([Prompt("a", None), Prompt("q", system)], tok, 64, "auto", "p.jsonl")
    with pytest.raises(DataError, match=r"^d\.jsonl, row 3, field 'prompt': the chat template of .*System role"):
        encode_prompt(tok, system, True, where="d.jsonl, row 3, field 'prompt'")
    assert encode_prompt(tok, [{"role": "user", "content": "q"}], True)  # other messages still pass
    tok.chat_template = "{% for m in messages %}{{ m.content"
    with pytest.raises(DataError, match=r"^p\.jsonl, row 1: the chat template of .* is not valid Jinja \(line 1"):
        tokenize_prompts([Prompt("a", None)], tok, 64, "auto", "p.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# model folders (items 9-11)


def test_a_pickle_payload_never_runs(tmp_path, tiny_model_dir):
    marker = tmp_path / "PAYLOAD_RAN"
    for kind in ("torch.save", "pickle.dump"):
        folder = _copy_model(tiny_model_dir, tmp_path / kind)
        os.remove(folder / "model.safetensors")
        if kind == "torch.save":
            torch.save({"w": Payload(str(marker))}, folder / "pytorch_model.bin")
        else:
            with open(folder / "pytorch_model.bin", "wb") as f:
                pickle.dump(Payload(str(marker)), f)
        with pytest.raises(ModelError, match=rf"^{folder}/pytorch_model\.bin: torch's weights-only loader refused "
                                             r"this pickle .* torch\.load\(the file, weights_only=False\)"):
            load_causal_lm(str(folder))
        assert not marker.exists()
    with open(tmp_path / "pickle.dump" / "pytorch_model.bin", "rb") as f:  # the payload is live: unpickled, it runs
        pickle.load(f)
    assert marker.exists()


def test_an_untied_lm_head_may_not_be_missing(tmp_path, tiny_model_dir):
    untied = tmp_path / "untied"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    model.save_pretrained(untied)
    assert type(load_causal_lm(str(untied))).__name__ == "LlamaForCausalLM"  # complete: loads
    weights = load_file(untied / "model.safetensors")
    assert "lm_head.weight" in weights
    save_file({k: v for k, v in weights.items() if k != "lm_head.weight"}, untied / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"untied: the weights lack 1 of the model's \d+ tensors \(lm_head\.weight\)"):
        load_causal_lm(str(untied))
    # tied (the tiny model): lm_head.weight is not in the file, and that is fine
    assert "lm_head.weight" not in load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert load_causal_lm(tiny_model_dir).lm_head.weight is not None


def test_a_tokenizer_with_pad_but_no_eos_still_loads(tmp_path, tiny_model_dir):
    folder = _copy_model(tiny_model_dir, tmp_path / "pad-only")
    _edit_json(folder / "tokenizer_config.json", eos_token=None)
    assert load_tokenizer(str(folder)).pad_token == "<pad>"
    _edit_json(folder / "tokenizer_config.json", pad_token=None)
    with pytest.raises(ModelError, match=r"pad-only: the tokenizer has neither an EOS nor a pad token, .*; "
                                         r"set eos_token .* in .*pad-only/tokenizer_config\.json"):
        load_tokenizer(str(folder))
