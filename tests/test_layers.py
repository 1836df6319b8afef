"""The package's floors: the import-linter contract in pyproject.toml holds, the import graph of src/rlcf (imports
inside functions included) has no cycle and is at most 8 modules deep, and an import inside a function only defers an
optional dependency, with a comment saying so."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "rlcf"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
DEFERRABLE = {"vllm", "peft", "wandb", "mlflow", "trackio", "deepspeed"}
"""Optional or mode-specific heavy packages a function may import late (with a `# deferred:` comment)."""


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in (src / "rlcf").rglob("*.py"):
        parts = list(f.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the rlcf modules it imports, from every import statement in it (functions included). A package's
    __init__ importing its own children is not an edge back from them."""
    mods = _modules(src)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        base = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    b = base
                    for _ in range(node.level - 1):
                        b = b.rpartition(".")[0]
                    mod = f"{b}.{mod}" if mod else b
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t) if t == "rlcf" or t.startswith("rlcf.") else None
                if r and r != m and not (mods[r][1] and m.startswith(r + ".")):
                    edges[m].add(r)
    return edges


def cycles_and_depth(edges: dict[str, set[str]]) -> tuple[list[list[str]], int]:
    """The import cycles (strongly connected components of more than one module) and the longest chain of imports,
    in modules, with each cycle counted as one."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    for v in edges:
        if v not in index:
            strong(v)
    comp_of = {v: i for i, c in enumerate(comps) for v in c}
    memo: dict[int, int] = {}

    def depth(i: int) -> int:
        if i not in memo:
            memo[i] = 1 + max((depth(comp_of[w]) for v in comps[i] for w in edges[v] if comp_of[w] != i), default=0)
        return memo[i]

    return [sorted(c) for c in comps if len(c) > 1], max(depth(i) for i in range(len(comps)))


def _lint(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=src.parent,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contract_holds():
    result = _lint(SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_upward_import_inside_a_function(tmp_path):
    """The contract is not vacuous: validate (a low floor) importing the pipeline inside a function breaks it, as the
    circle validate -> pipeline -> trainer -> ... -> validate once did."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "rlcf", ignore=shutil.ignore_patterns("__pycache__"))
    validate = tmp_path / "src" / "rlcf" / "validate.py"
    validate.write_text(validate.read_text() + "\n\ndef _late():\n    from .pipeline import run_pipeline\n\n"
                        "    return run_pipeline\n")
    result = _lint(tmp_path / "src")
    assert result.returncode != 0
    assert "rlcf.validate -> rlcf.pipeline" in result.stdout
    cycles, _ = cycles_and_depth(import_graph(tmp_path / "src"))
    assert any("rlcf.validate" in c and "rlcf.pipeline" in c for c in cycles)


def test_no_import_cycles_and_at_most_eight_floors_deep():
    cycles, depth = cycles_and_depth(import_graph())
    assert cycles == []
    assert depth <= 8


def test_an_import_inside_a_function_only_defers_an_optional_dependency_with_a_comment():
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        lines = f.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    top = (sub.names[0].name if isinstance(sub, ast.Import) else sub.module or ".").split(".")[0]
                    where = f"{f.relative_to(ROOT)}:{sub.lineno}"
                    if getattr(sub, "level", 0) or top not in DEFERRABLE:
                        found.append(f"{where}: {lines[sub.lineno - 1].strip()} (import it at the top)")
                    elif "# deferred:" not in lines[sub.lineno - 1]:
                        found.append(f"{where}: say why it is deferred in a '# deferred:' comment")
    assert found == []


@pytest.mark.parametrize("module", ["rlcf.config", "rlcf.types", "rlcf.errors"])
def test_the_ground_floor_imports_nothing_of_rlcf(module):
    assert import_graph()[module] == set()
