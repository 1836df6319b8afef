"""The documentation: the MkDocs site builds in strict mode (broken links, pages missing from the nav and any
warning fail it), the generated CLI reference lists every option of every command, and README.md stays a short
front door whose relative links all resolve."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _cli_hook():
    spec = importlib.util.spec_from_file_location("rlcf_docs_cli_reference", ROOT / "docs/hooks/cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_options(obj, prefix=()):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _all_options(value, prefix + (f.name,))
        else:
            yield "--" + ".".join(p.replace("_", "-") for p in prefix + (f.name,))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def test_docs_build_strict(site):
    proc, out = site
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "algorithms/index.html", "cli/index.html", "api/index.html",
                 "results/throughput/index.html", "frontier/report/index.html"):
        assert (out / page).is_file(), page


def test_cli_reference_lists_every_option():
    from rlcf.cli import COMMANDS, preset

    markdown = _cli_hook().cli_reference_markdown()
    sections = re.split(r"^## `rlcf (\w+)`$", markdown, flags=re.M)
    by_command = dict(zip(sections[1::2], sections[2::2]))
    assert set(by_command) == set(COMMANDS)
    for command in COMMANDS:
        options = list(_all_options(preset(command)))
        assert options, command
        missing = [o for o in options if f"`{o}`" not in by_command[command]]
        assert not missing, f"rlcf {command}: the CLI reference lacks {missing}"
    assert "`--rollout.max-new-tokens`" in by_command["train"]
    assert "`--p3o.dual-clip`" in by_command["train"]
    assert "`--train.rollout.max-new-tokens`" in by_command["pipeline"]


def test_cli_reference_defaults_and_docs_come_from_the_code():
    from rlcf.cli import preset
    from rlcf.config import RMConfig, TrainConfig

    from rlcf.cli import COMMANDS

    hook = _cli_hook()
    markdown = hook.cli_reference_markdown()
    docs = hook.field_docs(TrainConfig)
    assert docs["seed"] and docs["algo"]  # inherited (RunControl) and own fields
    assert hook.field_docs(RMConfig)["output_dir"] != hook.field_docs(TrainConfig)["output_dir"]  # a subclass's own
    # every option has its doc line (an attribute docstring under the field in rlcf/config.py)
    for command in COMMANDS:
        for path, f, _value in hook.iter_options(preset(command)):
            owner = preset(command)
            for name in path[:-1]:
                owner = getattr(owner, name)
            assert hook.field_docs(type(owner)).get(f.name), f"rlcf {command}: {'.'.join(path)} has no doc line"
    # a nested default of the instance a command starts from, not of the nested dataclass
    assert RMConfig().optim.lr == 2e-5
    assert re.search(r"\| `--optim\.lr` \| `float` \| `2e-5` \|", markdown.split("## `rlcf rm`")[1])
    # rlcf pipeline shows its preset's values
    lr = preset("pipeline").train.optim.lr
    row = re.search(r"\| `--train\.optim\.lr` \| `float` \| `([^`]+)` \(preset\) \|", markdown)
    assert row and float(row.group(1)) == lr


def test_built_cli_page_has_the_options(site):
    proc, out = site
    assert proc.returncode == 0, proc.stderr
    html = (out / "cli/index.html").read_text(encoding="utf-8")
    for option in ("--rollout.max-new-tokens", "--p3o.dual-clip", "--train.rollout.group-size", "--data.eval-path"):
        assert f"<code>{option}</code>" in html, option


def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(README.read_bytes()) <= 12288
    assert text.startswith("# rlcf\n\n```bash\nbash scripts/setup.sh && .venv/bin/rlcf pipeline\n"
                           "bash scripts/setup.sh --vllm && .venv/bin/python -m pytest -q\n```\n")
    long = [i + 1 for i, line in enumerate(text.splitlines()) if len(line) > 200]
    assert not long, f"README.md lines over 200 characters: {long}"
    assert "ALGORITHMS.md" not in text


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text)


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (README.parent / path) if path else README
        assert target.exists(), f"README.md links to {link}, which does not exist"
        if anchor and target.suffix == ".md":
            headings = re.findall(r"^#{1,6} (.+?)\s*$", target.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {link}: no such heading"
