"""Peak memory of one training forward + backward on the embedded model, with and without --model.gradient-checkpointing.

Each configuration runs in a fresh process; its figure is the growth of the process's peak resident memory from just
before the forward to the end of the backward (activations, the logits' gradient, the parameters' gradients), so the
weights and the frozen reference are not counted. The batch is a P3O rollout of the main job's shape: 16 prompts x 2
responses, prompts left-padded to 64 tokens, 48 response tokens.

    python benchmarks/grad_checkpointing.py            # writes benchmarks/grad_checkpointing.md
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

ROWS, PROMPT_TOKENS, RESPONSE_TOKENS = 32, 64, 48
OUT = Path(__file__).with_suffix(".md")


def measure(reference: str, checkpointing: bool) -> dict:
    import torch

    from rlcf.config import ModelConfig
    from rlcf.models import build_models

    torch.manual_seed(0)
    models = build_models(ModelConfig(reference=reference, gradient_checkpointing=checkpointing), None)
    vocab = models.base_policy().config.vocab_size
    q_ids = torch.randint(0, vocab, (ROWS, PROMPT_TOKENS))
    q_mask = torch.ones_like(q_ids)
    r_ids = torch.randint(0, vocab, (ROWS, RESPONSE_TOKENS))
    r_mask = torch.ones(ROWS, RESPONSE_TOKENS)
    hidden = models.trunk_hidden(q_ids, q_mask, r_ids, r_mask) if reference == "top_blocks" else None
    models.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    logprobs, _ = models(q_ids, q_mask, r_ids, r_mask, hidden=hidden)
    (logprobs * r_mask).sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"reference": reference, "checkpointing": checkpointing, "peak_growth_mb": (after - before) / 1024}


def main() -> None:
    if len(sys.argv) == 3:  # a child: one configuration
        print(json.dumps(measure(sys.argv[1], sys.argv[2] == "on")))
        return
    rows = []
    for reference in ("copy", "top_blocks"):
        for flag in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, reference, flag], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = ["# Gradient checkpointing: peak memory of one update's forward + backward", "",
             f"Embedded model (SmolLM2-135M, float32), {ROWS} rows of {PROMPT_TOKENS} prompt + {RESPONSE_TOKENS} "
             "response tokens, one process per row of the table; growth of the peak resident memory from the forward's",
             "start to the backward's end. Command: `python benchmarks/grad_checkpointing.py`.", "",
             "| reference | gradient checkpointing | peak growth (MB) | saved |", "|---|---|---|---|"]
    for r in rows:
        off = next(x for x in rows if x["reference"] == r["reference"] and not x["checkpointing"])
        saved = "" if not r["checkpointing"] else f"{1 - r['peak_growth_mb'] / off['peak_growth_mb']:.0%}"
        lines.append(f"| {r['reference']} | {'on' if r['checkpointing'] else 'off'} | {r['peak_growth_mb']:.0f} | {saved} |")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
