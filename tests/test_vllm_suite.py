"""Runs tests/vllm_suite/ in .venv-vllm (vLLM pins torch and transformers, so it lives in an environment of its own:
scripts/setup.sh --vllm makes it). In CI a missing environment is a failure, elsewhere a skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def test_vllm_backend_suite_passes_in_its_environment():
    if not PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-vllm is missing: CI must run `bash scripts/setup.sh --vllm` first")
        pytest.skip(".venv-vllm is missing: `bash scripts/setup.sh --vllm` makes it")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/vllm_suite"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert " passed" in out and "skipped" not in out.splitlines()[-1], out[-2000:]
