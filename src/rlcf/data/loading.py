"""Prompt data: load from the demo task, a local file or a hub dataset; validate; tokenize.

Every row is checked up front, so a bad row stops the run before any compute is spent, with an error
naming the file, the row and the field. Text is read as users have it: a UTF-8 byte-order mark (also at the start of
a later line, as `cat a.jsonl b.jsonl` leaves it), CRLF line ends, gzip-compressed .jsonl/.json/.csv. A NUL character
or a lone surrogate (a JSON escape such as "\\ud800" without its pair) in a text field is refused by row and field:
no tokenizer takes a lone surrogate, and a NUL is a sign of binary or corrupt data. A JSON row nested deeper than
Python can parse is refused by its line; a prompt far over the token limit is refused after tokenizing a prefix only.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import sys
import zlib
from dataclasses import dataclass, field

import datasets
import jinja2

from ..demo.task import load_prompts as demo_prompts
from ..errors import DataError, looks_like_local_path, near_miss, one_line

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
                  ".jsonl.gz": "json", ".json.gz": "json", ".csv.gz": "csv"}
_FORMATS_HINT = "a .jsonl, .json, .csv or .parquet file (or .jsonl.gz, .json.gz, .csv.gz)"
_GZ_LIMIT = 4 << 30
"""Bytes a .gz file may decompress to: a small file that inflates without end is refused, not read into memory."""
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
_CUT_CHARS_PER_TOKEN = 16
"""A text longer than limit * this many characters is first tokenized by a prefix of that length: a 50 MB prompt is
refused in milliseconds instead of tokenized for a minute."""
_MAX_CHARS_PER_TOKEN = 1024
"""No tokenizer's token spans more characters: a text longer than limit * this cannot fit in `limit` tokens."""
# extensions that mark a name as a file, never a hub dataset, even when the file is missing
_FILE_EXTS = set(_LOCAL_FORMATS) | {".txt", ".tsv", ".gz", ".zip", ".xz", ".bz2", ".arrow", ".xlsx", ".yaml", ".yml"}


def _missing_file(source: str, path: str) -> DataError:
    return DataError(f"{source}: no such file{near_miss(path)}; check the path, or pass {_FORMATS_HINT} "
                     "or a hub dataset name")


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _extension(path: str) -> str:
    """'.jsonl', or '.jsonl.gz' for a compressed file (lower case)."""
    root, ext = os.path.splitext(path)
    ext = ext.lower()
    if ext == ".gz":
        inner = os.path.splitext(root)[1].lower()
        return inner + ext if inner else ext
    return ext


def _read_bytes(path: str, source: str) -> bytes:
    """The file's bytes, decompressed for a .gz (at most _GZ_LIMIT of them); a damaged .gz is an error naming it."""
    if not path.lower().endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    chunks, size = [], 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                if size > _GZ_LIMIT:
                    raise DataError(f"{source}: decompresses to over {_GZ_LIMIT:,} bytes; decompress it yourself, "
                                    "check it is the file you meant, and split it")
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source}: not a readable gzip file ({one_line(e)}): it is truncated or damaged; compress "
                        "or download it again") from None
    return b"".join(chunks)


def _looks_utf16(data: bytes) -> bool:
    """UTF-16 (or UTF-32) text: a byte-order mark, or ASCII text with a zero byte beside every character."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    head = data[:1024]
    return len(head) >= 8 and any(half.count(0) >= 0.9 * len(half) for half in (head[0::2], head[1::2]))


def _read_text(path: str, source: str) -> str:
    """The file as text (UTF-8, a leading byte-order mark dropped); other bytes are an error naming the line."""
    data = _read_bytes(path, source)
    if _looks_utf16(data):
        raise DataError(f"{source}: UTF-16 (or UTF-32) text, not UTF-8; save the file as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{source}, line {line}: not UTF-8 text ({e.reason}, byte {data[e.start]:#x}); "
                        "save the file as UTF-8") from None


def _read_json(path: str, source: str) -> tuple[list[dict], list[int] | None]:
    """Rows of a JSON-lines file (one object per line; blank lines skipped) or of a JSON array of objects, read
    here rather than by datasets so that an error names its line. Returns the rows and, for JSON lines, the
    line of each row."""
    text = _read_text(path, source)
    if not text.strip():
        return [], None
    try:
        doc = json.loads(text)
        whole_error = None
    except json.JSONDecodeError as e:
        doc, whole_error = None, e
    except (RecursionError, ValueError) as e:  # nested too deep, or an integer too long for Python to read
        if text.lstrip().startswith("["):  # one array: no line to read alone, so find the culprit's line
            raise DataError(_unreadable_json(source, _culprit_line(text, e), e)) from None
        doc, whole_error = None, None  # JSON lines: the line-by-line reading names the line
    if isinstance(doc, list):
        for i, row in enumerate(doc):
            if not isinstance(row, dict):
                raise DataError(f"{source}, item {i + 1} of the JSON array: expected an object such as "
                                f'{{"prompt": "..."}}, got {_json_type(row)}; fix or delete it')
        return doc, None
    if isinstance(doc, dict) and ("\n" in text.strip() or _nested_rows_key(doc)):
        raise DataError(_single_object_message(doc, source))
    rows, lines = [], []
    first = True
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removeprefix("\ufeff")  # a byte-order mark where files were joined (cat a.jsonl b.jsonl)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            # a document spread over lines (a pretty-printed array or object): its own error has the right line
            if whole_error is not None and (text.lstrip().startswith("[") or (
                    first and whole_error.lineno > n and whole_error.msg != "Extra data")):
                e, n = whole_error, whole_error.lineno
            raise DataError(f"{source}, line {n}: not valid JSON ({e.msg} at column {e.colno}); "
                            "fix or delete that line") from None
        except (RecursionError, ValueError) as e:
            raise DataError(_unreadable_json(source, n, e)) from None
        if not isinstance(row, dict):
            raise DataError(f'{source}, line {n}: expected a JSON object such as {{"prompt": "..."}}, got '
                            f"{_json_type(row)}; fix or delete that line")
        rows.append(row)
        lines.append(n)
        first = False
    return rows, lines


def _unreadable_json(source: str, line: int, e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return (f"{source}, line {line}: JSON nested too deeply (lists or objects inside each other hundreds of "
                "levels deep); rlcf reads rows of text and numbers: fix or delete that line")
    return (f"{source}, line {line}: a number with more than {sys.get_int_max_str_digits()} digits; "
            "fix or delete that line")


def _culprit_line(text: str, e: BaseException, depth: int = 500) -> int:
    """The line where a JSON document first nests `depth` levels (for a RecursionError), or where its first integer
    too long for Python starts (for a ValueError): found by a scan, since json's error has no position."""
    if not isinstance(e, RecursionError):
        m = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
        return text.count("\n", 0, m.start()) + 1 if m else 1
    level, line = 0, 1
    for m in re.finditer(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"|[\[\]{}\n]', text):  # strings skipped whole
        ch = m.group()
        if ch == "\n":
            line += 1
        elif ch in "[{":
            level += 1
            if level >= depth:
                return line
        elif ch in "]}":
            level -= 1
    return line


def _nested_rows_key(doc: dict) -> str | None:
    """The key of a list of row objects inside one JSON object ({"data": [{...}, ...]}); chat messages are not rows."""
    for k, v in doc.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) and "role" not in x for x in v):
            return k
    return None


def _single_object_message(doc: dict, source: str) -> str:
    want = 'rlcf reads rows: JSON lines (one object per line) or a JSON array of objects [{"prompt": ...}, ...]'
    if (key := _nested_rows_key(doc)) is not None:
        return f"{source}: one JSON object with the rows under '{key}'; {want}: save that list on its own"
    if doc and all(isinstance(v, list) for v in doc.values()):
        return f"{source}: one JSON object of columns ({', '.join(doc)}), not rows; {want}"
    return f"{source}: one JSON object (fields: {', '.join(doc) or 'none'}), not a list of rows; {want}"


def _read_table(path: str, source: str, ext: str) -> list[dict]:
    if _LOCAL_FORMATS[ext] == "csv":
        if _check_csv(path, source) == 0:  # nothing, or a header only: datasets raises an opaque error
            return []
    elif os.path.getsize(path) == 0:
        return []
    try:
        return list(datasets.load_dataset(_LOCAL_FORMATS[ext], data_files=path, split="train"))
    except Exception as e:  # datasets wraps parse errors in many types: name the parser's own
        raise DataError(f"{source}: cannot be read as {_LOCAL_FORMATS[ext]} ({one_line(e)}); fix the file or save it "
                        f"as {_FORMATS_HINT}") from e


def _check_csv(path: str, source: str) -> int:
    """The number of data rows; a row with more fields than the header (an unquoted comma, which pandas would
    silently turn into an index column) or text that is not UTF-8 is an error naming its line."""
    text = _read_text(path, source)
    reader = csv.reader(io.StringIO(text, newline=""))
    header, n_rows = None, 0
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = fields
            continue
        n_rows += 1
        if len(fields) > len(header):
            raise DataError(f"{source}, line {reader.line_num}: {len(fields)} fields, but the header has {len(header)} "
                            f"({', '.join(header)}); put a field that holds a comma in double quotes")
    return n_rows


def _read_source(source: str, split: str) -> tuple[list[dict], list[int] | None]:
    """Rows of `source` and, for a JSON-lines file, the line of each row (else None)."""
    if not source or not source.strip():
        raise DataError(f"no data given: pass {_FORMATS_HINT}, or a hub dataset name")
    path = os.path.expanduser(source)
    ext = _extension(path)
    if os.path.isdir(path):
        raise DataError(f"{source} is a folder; pass {_FORMATS_HINT} (or a hub dataset name)")
    if os.path.exists(path):
        if _LOCAL_FORMATS.get(ext) == "json":
            return _read_json(path, source)
        if ext in _LOCAL_FORMATS:
            return _read_table(path, source, ext), None
        kind = f"file type '{ext}'" if ext else "file without an extension"
        raise DataError(f"{source}: unsupported {kind}; use {_FORMATS_HINT} (name it by its format)")
    if ext in _FILE_EXTS or os.path.splitext(path)[1].lower() in _FILE_EXTS or looks_like_local_path(source):
        raise _missing_file(source, path)

    try:
        return list(datasets.load_dataset(source, split=split)), None
    except Exception as e:  # not found, no network, no such split...: one line naming the name
        raise DataError(f"{source}: not a local file, and loading it as a hub dataset failed "
                        f"({one_line(e, innermost=False)}); pass {_FORMATS_HINT}, or a hub dataset name such as "
                        "'owner/name'") from e


def load_rows(source: str, split: str = "train") -> list[dict]:
    """Rows of a local JSONL / JSON / CSV / Parquet file, or of a hub dataset (needs the network). An unreadable
    file is a DataError naming it (and for JSON, the line); a missing file is never looked up on the hub."""
    return _read_source(source, split)[0]


def _type_name(value) -> str:
    return "NoneType (an empty cell or null)" if value is None else type(value).__name__


def _row_where(source: str, i: int, lines: list[int] | None) -> str:
    """'FILE, row 3', with its line when that differs (JSON lines with blank lines in between)."""
    line = f" (line {lines[i]})" if lines is not None and lines[i] != i + 1 else ""
    return f"{source}, row {i + 1}{line}"


def parse_columns(spec: str, known: tuple[str, ...], option: str = "--data.columns") -> dict[str, str]:
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
                 columns: str = "", split: str = "train", option: str = "--data.columns") -> list[dict]:
    """Rows of `source` with the named fields (TRL's column names, or others through the `columns` mapping),
    every row validated up front: a missing column, an empty or non-string text, a non-finite number or a
    malformed message list is an error naming the file, the row (1-based) and the field."""
    fields = text + numbers + messages
    mapping = parse_columns(columns, fields, option)
    rows, lines = _read_source(source, split)
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
            where = f"{_row_where(source, i, lines)}, field '{col[f]}'"
            if col[f] not in row:  # JSON lines need not all have the same fields
                raise DataError(f"{where}: missing; add the field or remove the row")
            if f in text:
                if not isinstance(value, str):
                    raise DataError(f"{where}: expected a string, got {_type_name(value)}; fix or remove the row")
                if not value.strip():
                    raise DataError(f"{where}: empty text; fill it in or remove the row")
                check_text(value, where)
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


def check_length(n_tokens: int, limit: int, where: str, option: str = "--data.max-length") -> None:
    if n_tokens > limit:
        raise DataError(f"{where}: {n_tokens} tokens, over the limit of {limit}; shorten or drop the row, or raise {option}")


@dataclass
class Prompt:
    text: str  # what the reward sees
    chat: list[dict] | None  # chat messages, when the prompt is (or is wrapped as) a conversation
    columns: dict = field(default_factory=dict)  # the row's other columns (a reference answer, a test case...)


def _others(row: dict, column: str) -> dict:
    return {k: v for k, v in row.items() if k != column}


def load_prompts(source: str, column: str = "prompt", split: str = "train") -> list[Prompt]:
    """Prompts of 'demo' (its train or test split), a local file, or a hub dataset's split."""
    if source == "demo":
        return [Prompt(text=p, chat=None) for p in demo_prompts(split)]
    rows, lines = _read_source(source, split)
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
        where = f"{_row_where(source, i, lines)}, field '{column}'"
        if column not in row:  # JSON lines need not all have the same fields
            raise DataError(f"{where}: missing; add the field or remove the row")
        if isinstance(value, list):
            prompts.append(Prompt(text=_messages_text(value, where), chat=value, columns=_others(row, column)))
        elif isinstance(value, str):
            if not value.strip():
                raise DataError(f"{where}: empty prompt; remove the row or fill it in")
            check_text(value, where)
            prompts.append(Prompt(text=value, chat=None, columns=_others(row, column)))
        else:
            raise DataError(f"{where}: expected a string or a list of chat messages, got {_type_name(value)}; "
                            "fix or remove the row")
    return prompts


def _messages_text(messages: list, where: str) -> str:
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            got = f"fields {', '.join(map(str, m))}" if isinstance(m, dict) else _json_type(m)
            raise DataError(f"{where}: message {j} must be {{'role': str, 'content': str}}, got {got}")
    if not messages:
        raise DataError(f"{where}: empty list of messages")
    for j, m in enumerate(messages):
        check_text(m["role"], f"{where}, message {j} 'role'")
        check_text(m["content"], f"{where}, message {j} 'content'")
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def check_text(value: str, where: str) -> None:
    """Refuse a NUL character or a lone surrogate in `value`, naming where it is (tokenizers take neither)."""
    m = _NOT_TEXT.search(value)
    if m is None:
        return
    at = f"character {m.start() + 1}"
    if m.group() == "\x00":
        raise DataError(f"{where}: holds a NUL character (\\u0000, {at}), a sign of binary or corrupt data; "
                        "remove it or the row")
    raise DataError(f"{where}: holds a lone surrogate (\\u{ord(m.group()):04x}, {at}), which is not Unicode text "
                    "(a JSON escape without its pair); fix that escape or remove the row")


class _TooLong(DataError):
    """A text over its token limit (prepare_prompts with long_prompts=skip leaves such prompts out)."""


def _template_owner(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the tokenizer"


def apply_chat_template(tokenizer, messages: list[dict], where: str, tokenize: bool = True):
    """The prompt's token ids (or, tokenize=False, its text) through the chat template with the generation prompt; a
    tokenizer without a template, a template that is not valid Jinja, or one that raises (`raise_exception('...')`)
    is an error naming the row, the tokenizer and the template's message."""
    owner = _template_owner(tokenizer)
    if not tokenizer.chat_template:
        raise DataError(f"{where}: a list of chat messages, but the tokenizer of {owner} has no chat template; give "
                        "the prompt as a string, or use a model with a chat template")
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize,
                                            return_dict=tokenize)
    except jinja2.TemplateSyntaxError as e:
        raise DataError(f"{where}: the chat template of {owner} is not valid Jinja (line {e.lineno}: {e.message}); "
                        f"fix chat_template in {owner}, or use --chat-template off for string prompts") from None
    except jinja2.TemplateError as e:
        raise DataError(f"{where}: the chat template of {owner} refused the messages ({' '.join(str(e).split())}); "
                        "change the messages to suit the template (roles, order), or the template") from None
    return list(out["input_ids"]) if tokenize else out


def text_token_ids(tokenizer, text: str, add_special_tokens: bool, limit: int | None, where: str,
                   option: str) -> list[int]:
    """tokenizer(text)'s ids. With a limit, a text far over it is refused before the whole is tokenized: the first
    limit * 16 characters alone over 2 * limit tokens, or more characters than `limit` tokens can span."""
    check_text(text, where)
    cut = None if limit is None else limit * _CUT_CHARS_PER_TOKEN
    if cut is not None and len(text) > cut:
        n = len(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])
        if n > 2 * limit:
            raise _TooLong(f"{where}: {len(text):,} characters, far over the limit of {limit} tokens (the first "
                           f"{cut:,} characters alone are {n} tokens); shorten or drop the row, or raise {option}")
        if len(text) > limit * _MAX_CHARS_PER_TOKEN:
            raise _TooLong(f"{where}: {len(text):,} characters, more than {limit} tokens can hold; shorten or drop the "
                           f"row, or raise {option}")
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def prompt_token_ids(tokenizer, prompt: str | list[dict], use_chat: bool, where: str, limit: int | None = None,
                     option: str = "--rollout.max-prompt-tokens") -> list[int]:
    """A prompt's token ids: a message list (or a string when use_chat) through the chat template with the
    generation prompt, else the text with the tokenizer's special tokens. With a limit, a prompt over it is an error
    naming `where` (a _TooLong), and a huge one is refused after tokenizing a prefix only."""
    if not isinstance(prompt, list) and not use_chat:
        ids = text_token_ids(tokenizer, prompt, True, limit, where, option)
    else:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        for m in messages:
            for value in m.values():
                if isinstance(value, str):
                    check_text(value, where)
        size = sum(len(v) for m in messages for v in m.values() if isinstance(v, str))
        if limit is not None and size > limit * _CUT_CHARS_PER_TOKEN:  # raises when far over the limit
            text_token_ids(tokenizer, apply_chat_template(tokenizer, messages, where, tokenize=False), False, limit,
                           where, option)
        ids = apply_chat_template(tokenizer, messages, where)
    if limit is not None and len(ids) > limit:
        raise _TooLong(f"{where}: prompt is {len(ids)} tokens, over the limit of {limit}; shorten it or raise {option}")
    return ids


def _use_chat(tokenizer, chat_template: str) -> bool:
    if chat_template == "on" and not tokenizer.chat_template:
        raise DataError("chat_template=on, but the tokenizer has no chat template; use chat_template=off")
    return chat_template == "on" or (chat_template == "auto" and bool(tokenizer.chat_template))


def tokenize_prompts(prompts: list[Prompt], tokenizer, max_tokens: int, chat_template: str = "auto", source: str = "prompts"):
    """Token ids per prompt (chat template applied as configured); a prompt over max_tokens is an error naming its
    row (a huge one found from a prefix, without tokenizing it whole)."""
    use_chat = _use_chat(tokenizer, chat_template)
    return [prompt_token_ids(tokenizer, p.chat if p.chat is not None else p.text, use_chat, f"{source}, row {i + 1}",
                             max_tokens) for i, p in enumerate(prompts)]


def prepare_prompts(prompts: list[Prompt], tokenizer, max_tokens: int, chat_template: str = "auto",
                    source: str = "prompts", long_prompts: str = "error") -> tuple[list[Prompt], list[list[int]]]:
    """The prompts and their token ids. long_prompts='error': a prompt over max_tokens is an error naming its row;
    'skip': such prompts are left out and counted (long dialogues in HH-style data, which the seeds truncated)."""
    if long_prompts == "error":
        return prompts, tokenize_prompts(prompts, tokenizer, max_tokens, chat_template, source)
    if long_prompts != "skip":
        raise ValueError(f"rollout.long_prompts={long_prompts!r}: choose error or skip")
    use_chat = _use_chat(tokenizer, chat_template)
    keep, ids = [], []
    for i, p in enumerate(prompts):
        try:
            ids.append(prompt_token_ids(tokenizer, p.chat if p.chat is not None else p.text, use_chat,
                                        f"{source}, row {i + 1}", max_tokens))
        except _TooLong:
            continue
        keep.append(i)
    if not keep:
        raise DataError(f"{source}: all {len(prompts)} prompts are over {max_tokens} tokens; raise --rollout.max-prompt-tokens")
    if len(keep) < len(prompts):
        print(f"{source}: left out {len(prompts) - len(keep)} of {len(prompts)} prompts over {max_tokens} tokens "
              "(rollout.long_prompts=skip)", flush=True)
    return [prompts[i] for i in keep], ids
