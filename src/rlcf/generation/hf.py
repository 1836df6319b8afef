"""The `hf` backend: the policy module samples itself (rlcf's decode loop, or transformers' generate() for top-k/top-p),
so it always has the trained weights; it can record a block's input on the way (top_blocks mode)."""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import Tensor, nn

from ..config import RolloutConfig
from ..models.blocks import capture_block_inputs
from ..models.sampling import decode
from .base import Generation, eval_mode, plain_generation_config


class HFBackend:
    """The policy module itself, in chunks of `chunk_rows` rows: `decode` (plain temperature sampling), or
    transformers' generate() when top-k or top-p truncates the distribution."""

    name = "hf"

    def __init__(self, model: nn.Module, pad_id: int, eos_ids: set[int], chunk_rows: int = 64):
        self.model, self.pad_id, self.eos_ids, self.chunk_rows = model, pad_id, set(eos_ids), chunk_rows

    @torch.no_grad()
    def generate(self, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig,
                 capture: nn.Module | None = None) -> Generation:
        chunks, hiddens = [], []
        Q = query_ids.shape[1]
        with eval_mode(self.model), plain_generation_config(self.model, self.pad_id, self.eos_ids):
            for s in range(0, query_ids.shape[0], self.chunk_rows):
                q, m = query_ids[s : s + self.chunk_rows], query_mask[s : s + self.chunk_rows]
                recorder = capture_block_inputs(capture) if capture is not None else contextlib.nullcontext(None)
                with recorder as captured:
                    if sampling.top_k or sampling.top_p < 1.0:
                        out = self.model.generate(input_ids=q, attention_mask=m, do_sample=True,
                                                  temperature=sampling.temperature, top_k=sampling.top_k,
                                                  top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens)[:, Q:]
                    else:
                        out = decode(self.model, q, m, sampling, self.pad_id, self.eos_ids)
                chunks.append(out)
                if captured is not None:
                    # prefill sees the Q prompt positions, then one call per new token but the last
                    h = torch.cat(captured, dim=1) if captured else None
                    hiddens.append(h if h is not None and h.shape[1] == Q + chunks[-1].shape[1] - 1 else None)
        width = max(c.shape[1] for c in chunks)
        response_ids = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=self.pad_id) for c in chunks])
        hidden = None
        if hiddens and all(h is not None for h in hiddens):
            # positions never fed to the model (the last token of each chunk, padding) stay zero: they only
            # influence their own outputs, which no log-prob reads
            hidden = torch.cat([nn.functional.pad(h, (0, 0, 0, Q + width - h.shape[1])) for h in hiddens])
        return Generation(response_ids=response_ids, hidden=hidden)

    def update_weights(self, state: dict[str, Tensor], names: Iterable[str] | None = None) -> None:
        """Nothing to do: generate() runs on the trained module itself."""
