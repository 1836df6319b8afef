"""Preference pairs in the shapes the field publishes (TRL's preference formats), read from a file or a hub dataset,
their shape detected once and every row checked against it:

- string pairs: `prompt`, `chosen`, `rejected` strings;
- conversational, explicit prompt: `prompt` a list of chat messages, `chosen` / `rejected` the replies (lists of
  messages, usually one assistant message);
- conversational, implicit prompt: no prompt column; `chosen` / `rejected` whole conversations, the prompt being
  their longest shared message prefix;
- plain-text dialogue, implicit prompt (Anthropic HH's text form): no prompt column; `chosen` / `rejected` strings
  of "\\n\\nHuman: ... \\n\\nAssistant: ..." turns, the prompt being their shared start up to and including the last
  "Assistant:" marker they share (cut at the marker, never inside a word).

A file that mixes shapes is an error naming the first row that differs; a pair whose chosen and rejected share no
prompt, or whose response is empty or ends in a turn other than the assistant's, is an error naming its row.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ..errors import DataError
from .loading import (
    _messages_text,
    _read_source,
    _row_where,
    _type_name,
    check_text,
    parse_columns,
)

STRING = "string pairs"
CHAT = "conversational, explicit prompt"
CHAT_IMPLICIT = "conversational, implicit prompt"
DIALOGUE = "plain-text dialogue, implicit prompt"
SHAPES = (STRING, CHAT, CHAT_IMPLICIT, DIALOGUE)
FIELDS = ("prompt", "chosen", "rejected")

_TURN = re.compile(r"^(Human|Assistant):", re.MULTILINE)
"""A turn marker of a plain-text dialogue, at the start of a line (HH writes '\\n\\nHuman: ...\\n\\nAssistant: ...')."""


@dataclass
class Pairs:
    """Normalised pairs, one per row in file order: {'prompt', 'chosen', 'rejected'} (and the number fields asked
    for, e.g. 'margin'). The prompt is a string or a list of chat messages; chosen and rejected are strings (string
    and dialogue shapes) or lists of messages ending in an assistant turn (conversational shapes)."""

    rows: list[dict]
    shape: str  # one of SHAPES
    source: str
    columns: dict[str, str]  # field -> the column it was read from
    lines: list[int] | None = None  # each row's line in a JSON-lines file (named when it differs from the row)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def conversational(self) -> bool:
        return self.shape in (CHAT, CHAT_IMPLICIT)

    def summary(self, command: str) -> str:
        """'rlcf rm: read 1200 pairs from pairs.jsonl (conversational, implicit prompt)'."""
        n = len(self.rows)
        return f"{command}: read {n} pair{'' if n == 1 else 's'} from {self.source} ({self.shape})"

    def where(self, i: int, *fields: str) -> str:
        """'FILE, row 3, fields 'prompt' + 'chosen'' (column names as in the file). An implicit prompt lives in each
        response's column: there 'prompt' beside a response names nothing more, and alone names the chosen column."""
        if self.shape in (CHAT_IMPLICIT, DIALOGUE):
            fields = tuple(f for f in fields if f != "prompt") or ("chosen",)
        names = []
        for f in fields:
            if self.columns[f] not in names:
                names.append(self.columns[f])
        label = "field" if len(names) == 1 else "fields"
        return f"{_row_where(self.source, i, self.lines)}, {label} " + " + ".join(f"'{n}'" for n in names)


def chat_text(messages: list[dict]) -> str:
    """The text of a message list as a reward or a gold scorer reads a chat prompt: its non-system contents, one per
    line (what `load_prompts` gives as Prompt.text)."""
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def load_pairs(source: str, columns: str = "", split: str = "train", numbers: tuple[str, ...] = (),
               option: str = "--data.columns") -> Pairs:
    """The pairs of a local file or a hub dataset, in whichever of the four shapes it holds (see the module), every
    row checked up front; `columns` maps the fields (prompt, chosen, rejected, and `numbers` such as margin) to
    other column names. Errors name the file, the row and the field."""
    known = FIELDS + tuple(numbers)
    mapping = parse_columns(columns, known, option)
    col = {f: mapping.get(f, f) for f in known}
    rows, lines = _read_source(source, split)
    if not rows:
        raise DataError(f"{source}: the dataset is empty; it needs rows with fields {', '.join(known)} (or chosen "
                        "and rejected as whole conversations)")
    shape = _detect(rows[0], source, col, "prompt" in mapping, numbers, option)
    pairs = Pairs([], shape, source, {f: col[f] for f in FIELDS}, lines)
    for i, row in enumerate(rows):
        at = _row_where(source, i, lines)
        value = {f: _field(row, f, shape, at, col, i) for f in FIELDS if f != "prompt" or shape in (STRING, CHAT)}
        if shape in (CHAT_IMPLICIT, DIALOGUE):
            split_off = _split_messages if shape == CHAT_IMPLICIT else _split_dialogue
            value = dict(zip(FIELDS, split_off(value["chosen"], value["rejected"], at, col)))
        if shape in (CHAT, CHAT_IMPLICIT):
            for side in ("chosen", "rejected"):
                _check_reply(value[side], f"{at}, field '{col[side]}'")
        for f in numbers:
            value[f] = _number(row, col[f], at)
        pairs.rows.append(value)
    return pairs


def _detect(first: dict, source: str, col: dict, prompt_named: bool, numbers: tuple[str, ...], option: str) -> str:
    """The shape of the file, from its first row; a missing column is an error naming it and the option to map it."""
    missing = [f for f in ("chosen", "rejected", *numbers) if col[f] not in first]
    has_prompt = col["prompt"] in first
    chosen = first.get(col["chosen"])
    implicit = not missing and not has_prompt and not prompt_named and (
        isinstance(chosen, list) or (isinstance(chosen, str) and "Assistant" in _TURN.findall(chosen)))
    if not has_prompt and not implicit:
        missing.insert(0, "prompt")
    if missing:
        named = ", ".join(f"'{col[f]}'" + (f" (for {f})" if col[f] != f else "") for f in missing)
        hint = ("; or give chosen and rejected as whole conversations (lists of chat messages, or text of "
                "'Human:' / 'Assistant:' turns)" if missing[0] == "prompt" else "")
        raise DataError(f"{source}: no column {named} (found: {', '.join(map(str, first))}); rename it or map it "
                        f"with {option} {missing[0]}=YOUR_COLUMN{hint}")
    if implicit:
        return CHAT_IMPLICIT if isinstance(chosen, list) else DIALOGUE
    prompt = first[col["prompt"]]
    if isinstance(prompt, str):
        return STRING
    if isinstance(prompt, list):
        return CHAT
    raise DataError(f"{source}, row 1, field '{col['prompt']}': expected a string or a list of chat messages, got "
                    f"{_type_name(prompt)}; fix or remove the row")


def _field(row: dict, f: str, shape: str, at: str, col: dict, i: int):
    """Row's field `f`, checked for the file's shape: a string (string and dialogue shapes) or a message list."""
    where = f"{at}, field '{col[f]}'"
    if col[f] not in row:
        raise DataError(f"{where}: missing; add the field or remove the row")
    if i > 0 and shape in (CHAT_IMPLICIT, DIALOGUE) and f == "chosen" and row.get(col["prompt"]) is not None:
        raise DataError(f"{at}: has a '{col['prompt']}' field, but row 1 has none ({shape}); a file holds one shape "
                        "of pairs: give every row a prompt, or none")
    value = row[col[f]]
    wants_text = shape in (STRING, DIALOGUE)
    other = isinstance(value, list) if wants_text else isinstance(value, str)
    if other:
        kind = "a list of chat messages" if wants_text else "a string"
        if i > 0:
            raise DataError(f"{where}: {kind}, but row 1 is {shape}; a file holds one shape of pairs: convert the "
                            "rows to one shape or split the file")
        raise DataError(f"{where}: {kind}, unlike the row's other fields ({shape}); give prompt, chosen and rejected "
                        "all as strings or all as lists of chat messages")
    if wants_text:
        if not isinstance(value, str):
            raise DataError(f"{where}: expected a string, got {_type_name(value)}; fix or remove the row")
        if not value.strip():
            raise DataError(f"{where}: empty text; fill it in or remove the row")
        check_text(value, where)
        return value
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of chat messages, got {_type_name(value)}; fix or remove the row")
    _messages_text(value, where)  # each message {'role': str, 'content': str}, no NUL or lone surrogate
    return value


def _split_messages(chosen: list[dict], rejected: list[dict], at: str, col: dict):
    """(prompt, chosen reply, rejected reply): the prompt is the longest message prefix the two share."""
    n = 0
    while n < min(len(chosen), len(rejected)) and _same(chosen[n], rejected[n]):
        n += 1
    if n == 0:
        raise DataError(f"{at}, fields '{col['chosen']}' + '{col['rejected']}': chosen and rejected share no prompt "
                        "(their first messages differ); give whole conversations that differ only in the reply, "
                        f"or a '{col['prompt']}' column")
    return chosen[:n], chosen[n:], rejected[n:]


def _same(a: dict, b: dict) -> bool:
    return a.get("role") == b.get("role") and a.get("content") == b.get("content")


def _split_dialogue(chosen: str, rejected: str, at: str, col: dict):
    """(prompt, chosen reply, rejected reply) of two plain-text dialogues: the prompt ends with the last
    'Assistant:' marker inside the text they share, so a reply is never cut inside a word."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = None
    for m in _TURN.finditer(chosen, 0, shared):
        if m.group(1) == "Assistant":
            cut = m.end()
    if cut is None:
        raise DataError(f"{at}, fields '{col['chosen']}' + '{col['rejected']}': chosen and rejected share no prompt "
                        "(no 'Assistant:' turn starts in the text they share); give dialogues that differ only in the "
                        f"last assistant turn, or a '{col['prompt']}' column")
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        reply = text[cut:]
        where = f"{at}, field '{col[side]}'"
        if not reply.strip():
            raise DataError(f"{where}: empty response after the shared prompt (the text up to its last "
                            "'Assistant:'); fill in the reply or remove the row")
        turns = _TURN.findall(reply)
        if turns and turns[-1] != "Assistant":
            raise DataError(f"{where}: the response ends in a non-assistant turn ('{turns[-1]}:'); a response "
                            "must end with the assistant's reply: fix or remove the row")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _check_reply(reply: list[dict], where: str) -> None:
    if not reply:
        raise DataError(f"{where}: empty response (no messages after the prompt it shares); add the reply or remove "
                        "the row")
    if reply[-1]["role"] != "assistant":
        raise DataError(f"{where}: the response ends in a non-assistant turn ('{reply[-1]['role']}'); a response "
                        "must end with the assistant's reply: fix or remove the row")
    if not reply[-1]["content"].strip():
        raise DataError(f"{where}: empty response (its last, assistant message has no text); fill it in or remove "
                        "the row")


def _number(row: dict, column: str, at: str) -> float:
    where = f"{at}, field '{column}'"
    if column not in row:
        raise DataError(f"{where}: missing; add the field or remove the row")
    value = row[column]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: expected a finite number, got {value!r}; fix or remove the row")
    return float(value)
