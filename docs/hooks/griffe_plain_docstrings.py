"""Griffe extension for the API page: rlcf's docstrings are plain text (equations on lines indented by two
spaces, shapes such as [B, T]), not Markdown. This keeps them readable once rendered: each run of indented lines
becomes a code block, and outside `code` spans the characters Markdown would read as links, emphasis or HTML
([ ] * <) are escaped."""

from __future__ import annotations

import re
import textwrap

import griffe


def _escape(line: str) -> str:
    parts = line.split("`")
    for i in range(0, len(parts), 2 if len(parts) % 2 else 1):
        parts[i] = re.sub(r"([\[\]*])", r"\\\1", parts[i]).replace("<", "&lt;")
    return "`".join(parts)


def plain_to_markdown(text: str) -> str:
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            out.extend(["", "```text", *textwrap.dedent("\n".join(block)).splitlines(), "```", ""])
            block.clear()

    for line in text.splitlines():
        if line.startswith("  ") and line.strip():
            block.append(line)
        else:
            flush()
            out.append(_escape(line))
    flush()
    return "\n".join(out)


class PlainDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name == "rlcf":
            _convert(pkg, set())


def _convert(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = plain_to_markdown(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _convert(member, seen)
