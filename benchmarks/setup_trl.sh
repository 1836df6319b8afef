#!/usr/bin/env bash
# Creates the peer venv for benchmarks/trl_rloo.py: TRL 1.16.0 on the same torch and transformers as
# rlcf's own venv, plus rlcf itself (editable, no dependencies) so the benchmark imports the very same
# demo prompts and reward (rlcf.demo.task is pure standard library).
#
#     bash benchmarks/setup_trl.sh            # idempotent; a no-op (about a second) when already set up
#     .bench/trl-venv/bin/python benchmarks/trl_rloo.py --steps 4 --output benchmarks/trl_rloo.json
#
# Override the interpreter with PYTHON=/path/to/python3.11 (default: python3). torch is pinned so pip
# takes the local CPU wheel; an unpinned torch would pull the CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.bench/trl-venv"
PYTHON="${PYTHON:-python3}"
TORCH=2.13.0
TRANSFORMERS=5.23.0
TRL=1.16.0

mkdir -p "$ROOT/.bench"
# Keep the venv out of git without touching the repository's .gitignore.
[ -f "$ROOT/.bench/.gitignore" ] || echo '*' > "$ROOT/.bench/.gitignore"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Fast path: everything already at the pinned versions and rlcf importable from this checkout.
if "$PY" - "$TORCH" "$TRANSFORMERS" "$TRL" "$ROOT" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
torch_v, tf_v, trl_v, root = sys.argv[1:]
assert version("torch").split("+")[0] == torch_v, version("torch")
assert version("transformers") == tf_v
assert version("trl") == trl_v
assert version("accelerate") and version("datasets")
import rlcf.demo.task as t
assert t.__file__.startswith(root + "/src/"), t.__file__
EOF
    echo "setup_trl: $VENV already set up (torch $TORCH, transformers $TRANSFORMERS, trl $TRL, rlcf editable)"
    exit 0
fi

"$PY" -m pip install --quiet "torch==$TORCH" "transformers==$TRANSFORMERS" "trl==$TRL"
# rlcf without its dependency list (peft, gguf, tyro, matplotlib, ... are not needed): the benchmark only
# uses rlcf.demo.task, which imports nothing outside the standard library.
"$PY" -m pip install --quiet --no-deps -e "$ROOT"
"$PY" -c "import torch, transformers, trl, accelerate, datasets, rlcf.demo.task as t; \
print('setup_trl: ok torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, \
'accelerate', accelerate.__version__, 'datasets', datasets.__version__, '| rlcf from', t.__file__)"
