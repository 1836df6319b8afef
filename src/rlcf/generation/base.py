"""Generation backends: one interface for sampling responses and for taking new weights after an update.

Used alike by RL rollouts, `rlcf label` and `rlcf eval` (`rollout.backend`):
- `hf`: transformers' generate() on the policy module itself; it shares the trained weights, so there is
  nothing to sync. It can also record the hidden state entering one block at every position (top_blocks
  mode keeps the frozen trunk's output from sampling, so no second trunk pass is needed).
- `vllm`: an in-process, colocated `vllm.LLM` (`pip install rlcf[vllm]`, see vllm.py); after each
  optimizer step the changed tensors are pushed into it.

Whatever the backend, the policy's own forward re-scores the sampled tokens, and that alone feeds the loss.
Token ids in, token ids out: prompts are left-padded [B, Q] with a mask, responses come back right-padded
[B, T] with pad_id after EOS (the EOS itself kept), and K samples of one prompt are K consecutive rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Protocol

from torch import Tensor, nn
from transformers import GenerationConfig

from ..config import RolloutConfig


@dataclass
class Generation:
    """What a backend returns for a batch of left-padded prompts [B, Q]."""

    response_ids: Tensor  # [B, T] long, sampled tokens, right-padded with pad_id after EOS
    logprobs: Tensor | None = None  # [B, T] float, the backend's own log-probs of the sampled tokens (diagnostics only)
    hidden: Tensor | None = None  # [B, Q + T, H] input of the captured block at every position (hf only), or None


class GenerationBackend(Protocol):
    name: str

    def generate(self, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig,
                 capture: nn.Module | None = None) -> Generation:
        """Sample one response per row with sampling.{temperature, top_k, top_p, max_new_tokens}, nothing else.
        capture: a block of the policy whose input hidden state to record, if the backend can (else hidden=None)."""
        ...

    def update_weights(self, state: dict[str, Tensor], names: Iterable[str] | None = None) -> None:
        """Take the weights of a plain transformers causal LM (its state dict, full tensors); names: only these
        tensors changed."""
        ...


@contextlib.contextmanager
def plain_generation_config(model, pad_id: int, eos_ids: set[int]):
    """Generate with ONLY the sampling settings we pass: a model's own generation_config may carry a
    repetition penalty, min_new_tokens, suppressed tokens... that would make the samples come from a
    distribution other than the tempered softmax the log-probs are computed under."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                                               bos_token_id=saved.bos_token_id)
    try:
        yield
    finally:
        model.generation_config = saved


@contextlib.contextmanager
def eval_mode(*models):
    """Dropout off while sampling and scoring; each model's train/eval mode is restored after."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


