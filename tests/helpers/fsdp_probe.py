"""Checks of a sharded (FSDP2) PolicyModels inside one `accelerate launch` with the FSDP config, written as JSON by the
main process for tests/test_fsdp.py to assert on:

- how the parameters are held (a block's weight a DTensor sharded over the processes, half of it on each);
- how many all-gathers sampling costs inside `gathered` (once per unit) and outside it (once per unit and token), and
  that both sample the same tokens;
- that `full_state_everywhere` gives every process the whole model as plain tensors.

    accelerate launch --config_file configs/accelerate/fsdp_cpu_2proc.yaml tests/helpers/fsdp_probe.py MODEL OUT.json
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from rlcf.config import ModelConfig, RolloutConfig
from rlcf.generation.hf import HFBackend
from rlcf.models.policy import build_models
from rlcf.train.accel import adamw, full_state_everywhere, gathered, is_sharded, make_accelerator, register_entry_points


@contextlib.contextmanager
def counting_all_gathers():
    """Counts calls of dist.all_gather_single (the all-gather FSDP2 runs for a unit's parameters) within the block."""
    calls = {"n": 0}
    original = dist.all_gather_single

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    dist.all_gather_single = counted
    try:
        yield calls
    finally:
        dist.all_gather_single = original


def main(model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    acc = make_accelerator()
    models = build_models(ModelConfig(name_or_path=model_dir), None)
    models, _ = acc.prepare(models, adamw(models.trainable_parameters(), 1e-3, (0.9, 0.999), 0.0))
    register_entry_points(models)
    weight = models.policy.model.layers[0].mlp.up_proj.weight
    tok = models.tokenizer
    enc = tok(["a rainy day", "the park and the sea"], return_tensors="pt", padding=True, padding_side="left")
    sampling = RolloutConfig(max_new_tokens=8, group_size=1)
    backend = HFBackend(models.policy, tok.pad_token_id, {tok.eos_token_id})
    units = sum(1 for m in models.policy.modules() if hasattr(m, "unshard"))

    def sample(gather: bool):
        torch.manual_seed(3)
        with counting_all_gathers() as calls, gathered(models.policy) if gather else contextlib.nullcontext():
            ids = models.sample(backend.generate, enc.input_ids, enc.attention_mask, sampling).response_ids
        return ids, calls["n"]

    ids_gathered, n_gathered = sample(True)
    ids_per_token, n_per_token = sample(False)
    full = full_state_everywhere(models)
    name = "policy.model.layers.0.mlp.up_proj.weight"
    sums = [None] * acc.num_processes
    dist.all_gather_object(sums, float(full[name].double().sum()))
    if acc.is_main_process:
        Path(out).write_text(json.dumps({
            "sharded": is_sharded(acc),
            "is_dtensor": isinstance(weight, DTensor),
            "placements": [str(p) for p in weight.placements] if isinstance(weight, DTensor) else None,
            "local_rows": weight.to_local().shape[0] if isinstance(weight, DTensor) else None,
            "rows": weight.shape[0],
            "units": units,
            "all_gathers_gathered": n_gathered,
            "all_gathers_per_token": n_per_token,
            "same_tokens": bool(torch.equal(ids_gathered, ids_per_token)),
            "new_tokens": int(ids_gathered.shape[1]),
            "full_plain": all(type(t) is torch.Tensor for t in full.values()),
            "full_rows": int(full[name].shape[0]),
            "full_sums": sums,
        }))
    acc.wait_for_everyone()
    dist.destroy_process_group()  # a process leaving with gloo's threads alive aborts ("terminate called...")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
