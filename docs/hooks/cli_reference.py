"""MkDocs hook: writes the CLI reference (docs/cli.md) from the code at build time, so it cannot drift.

Every command of `rlcf.cli.COMMANDS` (command -> (config dataclass, help line, runner)) gets one section: each
field of its config as the option `--a.b-c`, its type, the default of the instance the command starts from
(`rlcf.cli.preset(command)`: the dataclass defaults, or `rlcf pipeline`'s preset), and its doc line. The doc
lines are the attribute docstrings under each field in the dataclass's source file, read with `ast`
(inherited fields included). `cli_reference_markdown()` is what tests/test_docs.py checks.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import types
import typing

MARKER = "<!-- cli-reference -->"
PAGE = "cli.md"


def on_page_markdown(markdown, page, config, files):  # MkDocs event
    if page.file.src_uri == PAGE and MARKER in markdown:
        return markdown.replace(MARKER, cli_reference_markdown())
    return markdown


@functools.cache
def _module_tree(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """{field: doc}: the string literal right under each annotated field, base classes first so that a
    subclass's own doc wins; whitespace collapsed to one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = _module_tree(inspect.getsourcefile(klass))
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == klass.__name__), None)
        if node is None:
            continue
        for a, b in zip(node.body, node.body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(names) + (" | None" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{_type_name(args[0])} ..."
        return " ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _value(v) -> str:
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    if isinstance(v, float):
        text = repr(v)
        return "`" + re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), text) + "`"
    if isinstance(v, tuple):
        return "`" + (" ".join(_value(x).strip("`") for x in v) if v else "()") + "`"
    return f"`{v}`"


def _escape(text: str) -> str:
    """Markdown-safe table cell: outside `code` spans, | < * are escaped; code spans are kept as they are."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts) if len(parts) % 2 else text.replace("|", "\\|").replace("<", "&lt;")


def option_name(path: tuple[str, ...]) -> str:
    return "--" + ".".join(p.replace("_", "-") for p in path)


def iter_options(obj, prefix: tuple[str, ...] = ()):
    """(path, field, value) of every leaf field of the config instance `obj`, nested dataclasses flattened."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_options(value, prefix + (f.name,))
        else:
            yield prefix + (f.name,), f, value


def _section(obj, plain, prefix: tuple[str, ...], level: int, lines: list[str]) -> None:
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    leaves = [f for f in dataclasses.fields(obj) if not dataclasses.is_dataclass(getattr(obj, f.name))]
    nested = [f for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))]
    if leaves:
        lines += ["| option | type | default | description |", "|---|---|---|---|"]
        for f in leaves:
            value = getattr(obj, f.name)
            default = _value(value)
            if plain is not None and getattr(plain, f.name) != value:
                default += " (preset)"
            name = option_name(prefix + (f.name,))
            if hints[f.name] is bool:  # tyro's flag pair: --a.b / --a.no-b
                head, _, last = name[2:].rpartition(".")
                name += f"`, `--{head + '.' if head else ''}no-{last}"
            lines.append(f"| `{name}` | `{_type_name(hints[f.name])}` | {default} | "
                         f"{_escape(docs.get(f.name, ''))} |")
        lines.append("")
    for f in nested:
        value = getattr(obj, f.name)
        path = prefix + (f.name,)
        lines += [f"{'#' * level} `{option_name(path)}.*`", ""]
        about = docs.get(f.name) or (inspect.getdoc(type(value)) or "").split("\n\n")[0]
        lines += [f"{_escape(' '.join(about.split()))} (`{type(value).__name__}`)", ""]
        _section(value, None if plain is None else getattr(plain, f.name), path, min(level + 1, 6), lines)


def cli_reference_markdown() -> str:
    from rlcf.cli import COMMANDS, PRESETS, preset

    lines: list[str] = []
    for command, (cls, help_line, _runner) in COMMANDS.items():
        obj = preset(command)
        lines += [f"## `rlcf {command}`", "", f"{help_line[0].upper()}{help_line[1:]}.", ""]
        lines += [f"Config: `rlcf.config.{cls.__name__}`.", ""]
        # the class docstring past its first paragraph (which the help line repeats); the preset note replaces its own
        for para in (inspect.getdoc(cls) or "").split("\n\n")[1:]:
            if command not in PRESETS or "preset" not in para:
                lines += [_escape(" ".join(para.split())), ""]
        plain = None
        if command in PRESETS:
            plain = cls()
            lines += [f"Defaults are the preset `src/rlcf/presets/{PRESETS[command]}`; values it sets are marked "
                      "(preset), the rest are the dataclass defaults.", ""]
        _section(obj, plain, (), 3, lines)
    return "\n".join(lines) + "\n"
