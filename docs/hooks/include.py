"""MkDocs hook: `<!-- include PATH -->` on a page is replaced, at build time, by the file PATH (relative to the
repository root) with its headings one level lower, so a table that a benchmark script writes into
benchmarks/*.md is shown in the docs without a copy that could go stale."""

from __future__ import annotations

import re
from pathlib import Path

INCLUDE = re.compile(r"^<!-- include (\S+) -->$", re.M)


def _demote(text: str) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and re.match(r"#{1,5} ", line) else line)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):  # MkDocs event
    root = Path(config["config_file_path"]).parent

    def include(m: re.Match) -> str:
        path = root / m.group(1)
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_uri}: include {m.group(1)}: no such file")
        return _demote(path.read_text(encoding="utf-8"))

    return INCLUDE.sub(include, markdown)
