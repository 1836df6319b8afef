"""A generation backend whose samples depend only on the prompt (not on the batch, the process or the RNG), so a
run split over processes can be compared with a one-process run number for number; and a script that trains
with it, for `accelerate launch` in the multi-process tests:

    accelerate launch --num_processes 2 tests/helpers/fixed_backend.py CONFIG.json [--hf]
"""

from __future__ import annotations

import json
import os
import sys
import zlib

import torch
from safetensors.torch import save_file
from torch import Tensor

from rlcf.generation import Generation


class FixedBackend:
    """Response k of a prompt: tokens drawn from a generator seeded by (the prompt's token ids, k), ending in EOS
    at a prompt-dependent length."""

    name = "fixed"

    def __init__(self, pad_id: int, eos_id: int, vocab: int, group_size: int):
        self.pad_id, self.eos_id, self.vocab, self.k = pad_id, eos_id, vocab, group_size

    def generate(self, query_ids: Tensor, query_mask: Tensor, sampling, capture=None) -> Generation:
        T = sampling.max_new_tokens
        out = torch.full((query_ids.shape[0], T), self.pad_id, dtype=torch.long)
        for row, (ids, mask) in enumerate(zip(query_ids, query_mask)):
            prompt = ids[mask.bool()].tolist()
            seed = zlib.crc32(json.dumps([prompt, row % self.k]).encode())
            g = torch.Generator().manual_seed(seed)
            n = int(torch.randint(2, T + 1, (1,), generator=g))
            out[row, :n] = torch.randint(10, self.vocab, (n,), generator=g)
            if n < T or seed % 2:
                out[row, min(n, T) - 1] = self.eos_id
        return Generation(response_ids=out.to(query_ids.device))

    def update_weights(self, state, names=None) -> None:
        """Nothing to load; with RLCF_TEST_PUSHED set, the main process writes what a sampling engine would have
        been given (it must be full tensors, whatever the sharding) to that file."""
        path = os.environ.get("RLCF_TEST_PUSHED")
        if path and os.environ.get("RANK", "0") == "0":
            kept = set(names) if names is not None else set(state)
            save_file({n: t.detach().clone().contiguous() for n, t in state.items() if n in kept}, path)


def install(monkeypatch=None) -> None:
    """Make rlcf.trainer build a FixedBackend (through monkeypatch in a test, or directly in a script)."""
    import rlcf.trainer as trainer

    def make(sampling, model, tokenizer, eos_ids, *args, **kwargs):
        return FixedBackend(tokenizer.pad_token_id, tokenizer.eos_token_id, len(tokenizer), sampling.group_size)

    if monkeypatch is not None:
        monkeypatch.setattr(trainer, "make_backend", make)
    else:
        trainer.make_backend = make


if __name__ == "__main__":
    from rlcf.config import TrainConfig, from_dict
    from rlcf.trainer import train

    torch.set_num_threads(1)
    if "--hf" not in sys.argv[2:]:  # --hf: rlcf's own sampling (the policy samples itself), seeded per process
        install()
    train(from_dict(TrainConfig, json.loads(open(sys.argv[1]).read())))
    if torch.distributed.is_initialized():  # leave the group before exiting (as rlcf's CLI does)
        torch.distributed.destroy_process_group()
