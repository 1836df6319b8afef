"""Bad data files and bad model folders stop the run before any compute, with one line naming the culprit (the
file and its line / row / field, or the folder and its architecture) and what to do; valid inputs still load."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from rlcf.data import DataError, load_prompts, load_records, load_rows
from rlcf.models import ModelError, build_models, load_causal_lm, load_tokenizer, resolve_reward_model

# ---------------------------------------------------------------------------------------------------------------
# data files


def _no_hub(monkeypatch):
    """Fail the test if anything is sent to datasets.load_dataset (i.e. the hub or datasets' parsers for JSON)."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError(f"datasets.load_dataset called with {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


BAD_FILES = [
    # (file name, bytes, expected message)
    ("empty.jsonl", b"", r"empty\.jsonl: the dataset is empty; it needs at least one row with a 'prompt' field"),
    ("blank.jsonl", b"\n  \n", r"blank\.jsonl: the dataset is empty"),
    ("prompts.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt" "c"}\n',
     r"^prompts\.jsonl, line 3: not valid JSON \(Expecting ':' delimiter at column 11\); fix or delete that line$"),
    ("prompts.jsonl", b'{"prompt": "a"}\n\n{"prompt": "b",}\n',
     r"^prompts\.jsonl, line 3: not valid JSON \(Expecting property name .* at column 16\)"),
    ("prompts.jsonl", b'{"prompt": "a"}\n"just text"\n',
     r"prompts\.jsonl, line 2: expected a JSON object such as \{\"prompt\": \"...\"\}, got a string"),
    ("latin1.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"latin1\.jsonl, line 2: not UTF-8 text"),
    ("pretty.json", b'[\n  {"prompt": "a"},\n  {"prompt": "b"\n]\n',
     r"pretty\.json, line 4: not valid JSON \(Expecting ',' delimiter at column 1\)"),
    ("one.json", b'{\n  "prompt": "a",\n  "x": 1\n}\n',
     r"one\.json: one JSON object \(fields: prompt, x\), not a list of rows; rlcf reads rows: JSON lines"),
    ("nested.json", b'{"data": [{"prompt": "a"}, {"prompt": "b"}]}',
     r"nested\.json: one JSON object with the rows under 'data'"),
    ("columns.json", b'{\n "prompt": ["a", "b"]\n}', r"columns\.json: one JSON object of columns \(prompt\), not rows"),
    ("strings.json", b'["a", "b"]', r"strings\.json, item 1 of the JSON array: expected an object"),
    ("empty.csv", b"", r"empty\.csv: the dataset is empty"),
    ("header.csv", b"prompt,x\n\n", r"header\.csv: the dataset is empty"),
    ("comma.csv", b"prompt,x\nhello,1\nhi, there,2\n",
     r"comma\.csv, line 3: 3 fields, but the header has 2 \(prompt, x\); put a field that holds a comma in double quotes"),
    ("bad.parquet", b"PAR1 not parquet", r"bad\.parquet: cannot be read as parquet \(ArrowInvalid: .*magic bytes"),
    ("prompts.txt", b"hello\n", r"prompts\.txt: unsupported file type '\.txt'; use a \.jsonl, \.json, \.csv or \.parquet"),
    ("prompts", b"hello\n", r"prompts: unsupported file without an extension"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[f"{n}:{m[:20]}" for n, _, m in BAD_FILES])
def test_bad_files_are_named(tmp_path, monkeypatch, name, content, message):
    (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    if not name.endswith(".parquet"):
        _no_hub(monkeypatch)  # JSON is read line by line here, CSV is checked before datasets sees it
    with pytest.raises(DataError, match=message):
        load_prompts(name)


BAD_ROWS = [
    ([{"prompt": "a"}, {"prompt": ""}], "prompt", r"^p\.jsonl, row 2, field 'prompt': empty prompt"),
    ([{"prompt": "a"}, {"prompt": 3}], "prompt",
     r"^p\.jsonl, row 2, field 'prompt': expected a string or a list of chat messages, got int"),
    ([{"prompt": "a"}, {"prompt": None}], "prompt", r"row 2, field 'prompt': .*got NoneType \(an empty cell or null\)"),
    ([{"prompt": "a"}, {"text": "b"}], "prompt", r"^p\.jsonl, row 2, field 'prompt': missing; add the field or remove"),
    ([{"prompt": "a"}, {"prompt": ["hi"]}], "prompt", r"row 2, field 'prompt': message 0 must be .*, got a string"),
    ([{"prompt": "a"}], "question",
     r"^p\.jsonl: no 'question' column \(found: prompt\); set --prompt-column to the column holding the prompts$"),
]


@pytest.mark.parametrize("rows,column,message", BAD_ROWS)
def test_bad_prompt_rows_are_named(tmp_path, monkeypatch, rows, column, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=message):
        load_prompts("p.jsonl", column)


def test_row_errors_give_the_line_when_blank_lines_shift_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n\n{"prompt": " "}\n')
    with pytest.raises(DataError, match=r"^p\.jsonl, row 2 \(line 4\), field 'prompt': empty prompt"):
        load_prompts("p.jsonl")


def test_records_name_the_mapped_column_and_the_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text('prompt,answer\n"a, b",x\nc,\n')
    with pytest.raises(DataError, match=r"^d\.csv: no column 'question' \(for prompt\) \(found: prompt, answer\); "
                                        r"rename it or map it with --data\.columns prompt=YOUR_COLUMN$"):
        load_records("d.csv", text=("prompt", "completion"), columns="prompt=question,completion=answer")
    with pytest.raises(DataError, match=r"^d\.csv, row 2, field 'answer': expected a string, got NoneType"):
        load_records("d.csv", text=("prompt", "completion"), columns="completion=answer")
    (tmp_path / "r.jsonl").write_text('{"prompt": "a", "response": "b", "reward": 1}\n{"prompt": "a", "response": "b"}\n')
    with pytest.raises(DataError, match=r"^r\.jsonl, row 2, field 'reward': missing"):
        load_records("r.jsonl", text=("prompt", "response"), numbers=("reward",))


@pytest.mark.parametrize("source", ["nope.jsonl", "./nope", "data/sub/nope", "/no/such/dir/p.jsonl",
                                    "~/rlcf-no-such-file.jsonl", "prompts.tsv", "runs/p"])
def test_a_missing_file_is_never_sent_to_the_hub(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").mkdir()  # 'runs/p' would be a valid hub id, but ./runs exists: it is a local path
    _no_hub(monkeypatch)
    with pytest.raises(DataError, match=rf"^{source.replace('.', r'[.]')}: no such file.*; check the path"):
        load_prompts(source)


def test_a_missing_file_names_a_close_match_and_a_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"^prompt\.jsonl: no such file \(did you mean prompts\.jsonl\?\)"):
        load_prompts("prompt.jsonl")
    with pytest.raises(DataError, match=r"^data/nope\.jsonl: no such file \(the folder data does not exist either\)"):
        load_prompts("data/nope.jsonl")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"^data is a folder; pass a \.jsonl, \.json, \.csv or \.parquet file"):
        load_prompts("data")
    with pytest.raises(DataError, match=r"^no data given"):
        load_rows("")


def test_hub_names_still_go_to_datasets_and_a_failure_is_one_line(monkeypatch):
    import datasets

    calls = []

    def fake(name, split):
        calls.append((name, split))
        if name == "owner/missing":
            raise ConnectionError("Couldn't reach 'owner/missing' on the Hub\n(LocalEntryNotFoundError)")
        return [{"prompt": "from the hub"}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert [p.text for p in load_prompts("owner/dataset", split="test")] == ["from the hub"]
    with pytest.raises(DataError, match=r"^owner/missing: not a local file, and loading it as a hub dataset failed "
                                        r"\(ConnectionError: Couldn't reach 'owner/missing' on the Hub "
                                        r"\(LocalEntryNotFoundError\)\); pass a \.jsonl"):
        load_prompts("owner/missing")
    assert calls == [("owner/dataset", "test"), ("owner/missing", "train")]


def test_valid_files_still_load(tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    chat = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    (tmp_path / "p.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\n{"prompt": "caf\xc3\xa9", "x": 1}\n'
                                       + json.dumps({"prompt": chat}).encode() + b"\n")
    prompts = load_prompts("p.jsonl")
    assert [p.text for p in prompts] == ["a", "café", "hi"] and prompts[2].chat == chat
    assert [p.text for p in load_prompts("~/p.jsonl")] == ["a", "café", "hi"]  # '~' is expanded
    (tmp_path / "a.json").write_text('[\n {"prompt": "a"},\n {"prompt": "b"}\n]\n')
    (tmp_path / "one.json").write_text('{"prompt": "only"}\n')  # one line: JSON lines with one row
    (tmp_path / "c.csv").write_text('prompt,n\n"a, with comma",1\nb,2\n')
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]).to_parquet(str(tmp_path / "p.parquet"))
    assert [p.text for p in load_prompts("a.json")] == ["a", "b"]
    assert [p.text for p in load_prompts("one.json")] == ["only"]
    assert [p.text for p in load_prompts("c.csv")] == ["a, with comma", "b"]
    assert [p.text for p in load_prompts("p.parquet")] == ["a", "b"]
    (tmp_path / "r.jsonl").write_text('{"prompt": "a", "response": "b", "reward": 1}\n')
    assert load_records("r.jsonl", text=("prompt", "response"), numbers=("reward",)) == [
        {"prompt": "a", "response": "b", "reward": 1.0}]


# ---------------------------------------------------------------------------------------------------------------
# model folders


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    """A sequence-classification model (what `rlcf rm` saves) with the tiny tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("tiny_rm")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _both(name):
    """Run load_tokenizer and load_causal_lm on `name`; both must raise the same ModelError."""
    messages = []
    for load in (load_tokenizer, load_causal_lm):
        with pytest.raises(ModelError) as info:
            load(name)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[0]


@pytest.mark.parametrize("name", ["./nope", "../nope", "~/nope", "/no/such/model", "a/b/c", "runs/final"])
def test_a_missing_model_folder_is_named(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").mkdir()  # 'runs/final' would be a valid hub id, but ./runs exists: it is a local path
    message = _both(name)
    assert message.startswith(f"model folder {name} does not exist")
    assert "a hub model id such as" in message and "'embedded'" in message and "Repo id" not in message


def test_folders_that_are_not_model_folders_are_named(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert _both("empty").startswith("empty has no config.json: not a transformers model folder; pass a folder")
    shutil.copytree(tiny_model_dir, tmp_path / "run" / "final")
    assert _both("run").startswith(f"run has no config.json: not a transformers model folder ({os.path.join('run', 'final')} has one)")
    assert _both("run/final/config.json").startswith(
        "run/final/config.json is a file, not a model folder (pass the folder it is in, run/final)")
    shutil.copytree(tiny_model_dir, tmp_path / "noweights")
    os.remove(tmp_path / "noweights" / "model.safetensors")
    assert _both("noweights").startswith("noweights has a config.json but no weights (model.safetensors or "
                                         "pytorch_model.bin)")
    (tmp_path / "badconfig").mkdir()
    (tmp_path / "badconfig" / "config.json").write_text("{oops")
    assert _both("badconfig").startswith("badconfig/config.json cannot be read (JSONDecodeError")


def test_a_folder_without_tokenizer_files_is_named(tmp_path, tiny_model_dir):
    folder = tmp_path / "notok"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model_dir, f), folder)
    with pytest.raises(ModelError, match=rf"^{folder} has no tokenizer files \(tokenizer\.json"):
        load_tokenizer(str(folder))


def test_a_reward_model_is_refused_as_the_policy_before_its_weights_load(reward_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from rlcf.config import ModelConfig

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    message = (rf"^{reward_model_dir} holds a LlamaForSequenceClassification \(a score head, no language-model "
               r"head\): it looks like a reward model, e\.g\. one saved by `rlcf rm`; pass it as --reward\.model instead")
    with pytest.raises(ModelError, match=message):
        load_causal_lm(reward_model_dir)
    with pytest.raises(ModelError, match=message):
        build_models(ModelConfig(name_or_path=reward_model_dir), critic_kind=None)
    assert resolve_reward_model(reward_model_dir) == reward_model_dir  # as a reward model it is fine


def test_a_causal_lm_is_refused_as_a_reward_model(tiny_model_dir):
    with pytest.raises(ModelError, match=rf"^{tiny_model_dir} holds a LlamaForCausalLM \(a language model, no score "
                                         r"head\): as a reward model its score would come from a random head"):
        resolve_reward_model(tiny_model_dir)


def test_custom_code_needs_trust_remote_code(tmp_path, tiny_model_dir):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_lm", architectures=["MyLM"], auto_map={"AutoModelForCausalLM": "m.MyLM"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=rf"^{folder} needs its own Python code to load \(auto_map in config\.json, "
                                         r"model_type 'my_custom_lm' unknown to transformers\); turn on trust_remote_code"):
        load_causal_lm(str(folder))


def test_hub_ids_still_go_to_transformers_and_a_failure_is_one_line(monkeypatch):
    from transformers import AutoTokenizer

    calls = []

    def fake(name, **kwargs):
        calls.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files,\nand couldn't find them")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(ModelError, match=r"^owner/model: not a local folder, and its tokenizer cannot be loaded from "
                                         r"the hub \(OSError: We couldn't connect .* to load the files, and couldn't"):
        load_tokenizer("owner/model")
    assert calls == ["owner/model"]


def test_valid_folders_still_load_and_safetensors_win_over_a_pickle(tmp_path, monkeypatch, tiny_model_dir):
    from safetensors.torch import load_file

    reference = load_causal_lm(tiny_model_dir).state_dict()
    assert load_tokenizer(tiny_model_dir).padding_side == "left"
    # a stray pytorch_model.bin next to model.safetensors is never unpickled
    both = tmp_path / "both"
    shutil.copytree(tiny_model_dir, both)
    (both / "pytorch_model.bin").write_bytes(b"not a pickle")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(load_causal_lm(str(both)).state_dict()[name], reference[name])
    # only a .bin: still loads (transformers uses torch.load with weights_only=True)
    bin_only = tmp_path / "bin_only"
    shutil.copytree(tiny_model_dir, bin_only)
    torch.save(load_file(bin_only / "model.safetensors"), bin_only / "pytorch_model.bin")
    os.remove(bin_only / "model.safetensors")
    torch.testing.assert_close(load_causal_lm(str(bin_only)).state_dict()[name], reference[name])
    # '~' is expanded, and a relative folder works
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert type(load_causal_lm("~/both")).__name__ == "LlamaForCausalLM"
    assert load_tokenizer("both").eos_token == "<eos>"
