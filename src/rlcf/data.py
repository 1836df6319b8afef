"""Prompt data: load from the demo task, a local file or a hub dataset; validate; tokenize.

Every row is checked up front, so a bad row stops the run before any compute is spent, with an error
naming the file, the row and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    pass


def load_rows(source: str, split: str = "train") -> list[dict]:
    """Rows of a local JSONL / JSON / CSV / Parquet file, or of a hub dataset (needs the network)."""
    import datasets

    ext = os.path.splitext(source)[1].lower()
    if ext in _LOCAL_FORMATS:
        if not os.path.exists(source):
            raise DataError(f"{source}: no such file")
        try:
            ds = datasets.load_dataset(_LOCAL_FORMATS[ext], data_files=source, split="train")
        except Exception as e:  # datasets wraps parse errors in many types
            raise DataError(f"{source}: cannot be read as {ext[1:]} ({type(e).__name__}: {e})") from e
    elif os.path.exists(source):
        raise DataError(f"{source}: unsupported file type '{ext}'; use .jsonl, .json, .csv or .parquet")
    else:
        ds = datasets.load_dataset(source, split=split)
    return list(ds)


def parse_columns(spec: str, known: tuple[str, ...], option: str = "--columns") -> dict[str, str]:
    """'prompt=question,chosen=good' -> {'prompt': 'question', 'chosen': 'good'}; names not in `known` are errors."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise DataError(f"{option} {spec!r}: each entry must be name=column, e.g. 'prompt=question'")
        if name not in known:
            raise DataError(f"{option} {spec!r}: '{name}' is not a field here; fields: {', '.join(known)}")
        mapping[name] = column
    return mapping


def load_records(source: str, text: tuple[str, ...] = (), numbers: tuple[str, ...] = (), messages: tuple[str, ...] = (),
                 columns: str = "", split: str = "train", option: str = "--columns") -> list[dict]:
    """Rows of `source` with the named fields (TRL's column names, or others through the `columns` mapping),
    every row validated up front: a missing column, an empty or non-string text, a non-finite number or a
    malformed message list is an error naming the file, the row (1-based) and the field."""
    import math

    fields = text + numbers + messages
    mapping = parse_columns(columns, fields, option)
    rows = load_rows(source, split)
    if not rows:
        raise DataError(f"{source}: the dataset is empty; it needs rows with fields {', '.join(fields)}")
    col = {f: mapping.get(f, f) for f in fields}
    missing = [f for f in fields if col[f] not in rows[0]]
    if missing:
        named = ", ".join(f"'{col[f]}'" + (f" (for {f})" if col[f] != f else "") for f in missing)
        raise DataError(f"{source}: no column {named} (found: {', '.join(rows[0])}); "
                        f"rename it or map it with {option} {missing[0]}=YOUR_COLUMN")
    out = []
    for i, row in enumerate(rows):
        rec = {}
        for f in fields:
            value = row.get(col[f])
            where = f"{source}, row {i + 1}, field '{col[f]}'"
            if f in text:
                if not isinstance(value, str):
                    raise DataError(f"{where}: expected a string, got {type(value).__name__}; fix or remove the row")
                if not value.strip():
                    raise DataError(f"{where}: empty text; fill it in or remove the row")
            elif f in numbers:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise DataError(f"{where}: expected a finite number, got {value!r}; fix or remove the row")
                value = float(value)
            else:
                if not isinstance(value, list):
                    raise DataError(f"{where}: expected a list of chat messages, got {type(value).__name__}")
                _messages_text(value, where)
            rec[f] = value
        out.append(rec)
    return out


def check_length(n_tokens: int, limit: int, where: str, option: str = "--max-length") -> None:
    if n_tokens > limit:
        raise DataError(f"{where}: {n_tokens} tokens, over the limit of {limit}; shorten or drop the row, or raise {option}")


@dataclass
class Prompt:
    text: str  # what the reward sees
    chat: list[dict] | None  # chat messages, when the prompt is (or is wrapped as) a conversation


def load_prompts(source: str, column: str = "prompt", split: str = "train") -> list[Prompt]:
    """Prompts of 'demo' (its train or test split), a local file, or a hub dataset's split."""
    if source == "demo":
        from .demo.task import load_prompts as demo_prompts

        return [Prompt(text=p, chat=None) for p in demo_prompts(split)]
    rows = load_rows(source, split)
    if not rows:
        raise DataError(f"{source}: the dataset is empty; it needs at least one row with a '{column}' field")
    if column not in rows[0]:
        raise DataError(
            f"{source}: no '{column}' column (found: {', '.join(rows[0])}); "
            f"set --prompt-column to the column holding the prompts"
        )
    prompts = []
    for i, row in enumerate(rows):
        value = row.get(column)
        where = f"{source}, row {i + 1}, field '{column}'"
        if isinstance(value, list):
            prompts.append(Prompt(text=_messages_text(value, where), chat=value))
        elif isinstance(value, str):
            if not value.strip():
                raise DataError(f"{where}: empty prompt; remove the row or fill it in")
            prompts.append(Prompt(text=value, chat=None))
        else:
            raise DataError(f"{where}: expected a string or a list of chat messages, got {type(value).__name__}")
    return prompts


def _messages_text(messages: list, where: str) -> str:
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {j} must be {{'role': str, 'content': str}}")
    if not messages:
        raise DataError(f"{where}: empty list of messages")
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def tokenize_prompts(prompts: list[Prompt], tokenizer, max_tokens: int, chat_template: str = "auto", source: str = "prompts"):
    """Token ids per prompt (chat template applied as configured); a prompt over max_tokens is an error."""
    use_chat = chat_template == "on" or (chat_template == "auto" and bool(tokenizer.chat_template))
    if chat_template == "on" and not tokenizer.chat_template:
        raise DataError("chat_template=on, but the tokenizer has no chat template; use chat_template=off")
    out = []
    for i, p in enumerate(prompts):
        if p.chat is not None or use_chat:
            messages = p.chat if p.chat is not None else [{"role": "user", "content": p.text}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        else:
            ids = tokenizer(p.text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_tokens:
            raise DataError(
                f"{source}, row {i + 1}: prompt is {len(ids)} tokens, over the limit of {max_tokens}; "
                "shorten it or raise --rollout.max-prompt-tokens"
            )
        out.append(list(ids))
    return out


def prepare_prompts(prompts: list[Prompt], tokenizer, max_tokens: int, chat_template: str = "auto",
                    source: str = "prompts", long_prompts: str = "error") -> tuple[list[Prompt], list[list[int]]]:
    """The prompts and their token ids. long_prompts='error': a prompt over max_tokens is an error naming its row;
    'skip': such prompts are left out and counted (long dialogues in HH-style data, which the seeds truncated)."""
    if long_prompts == "error":
        return prompts, tokenize_prompts(prompts, tokenizer, max_tokens, chat_template, source)
    if long_prompts != "skip":
        raise ValueError(f"rollout.long_prompts={long_prompts!r}: choose error or skip")
    ids = tokenize_prompts(prompts, tokenizer, 1 << 62, chat_template, source)
    keep = [i for i, x in enumerate(ids) if len(x) <= max_tokens]
    if not keep:
        raise DataError(f"{source}: all {len(ids)} prompts are over {max_tokens} tokens; raise --rollout.max-prompt-tokens")
    if len(keep) < len(ids):
        print(f"{source}: left out {len(ids) - len(keep)} of {len(ids)} prompts over {max_tokens} tokens "
              "(rollout.long_prompts=skip)", flush=True)
    return [prompts[i] for i in keep], [ids[i] for i in keep]


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x) :] = 1
    return ids, mask
