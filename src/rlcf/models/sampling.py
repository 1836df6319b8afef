"""The KV-cache decode loop rlcf samples with, and inverse-CDF sampling (the same distribution as
torch.multinomial, much cheaper on a CPU)."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..config import RolloutConfig


def sample_from_logits(logits: Tensor, temperature: float) -> Tensor:
    """One token per row from softmax(logits / temperature) [B, V] -> [B], by inverting the CDF at one uniform per
    row. The same distribution as torch.multinomial, which on a CPU costs about 50 ms for 32 rows of a 49k
    vocabulary (more than the model's own decode step): this takes about 4 ms."""
    probs = torch.softmax(logits.float() / temperature, dim=-1).double()
    cdf = probs.cumsum_(dim=-1)
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


def cache_keyword(model) -> str:
    """The name a model's forward takes its KV cache under: transformers renamed `past_key_values` to `cache` (5.2x
    warns on the old name, 5.40 drops it); vLLM's CPU build pins a transformers from before the rename. A peft
    wrapper passes it through to its base model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name (see `cache_keyword`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def decode(model, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig, pad_id: int,
           eos_ids: set[int], warpers=()) -> Tensor:
    """Sampling with the model's KV cache and `sample_from_logits`: samples from the same distribution as
    generate(do_sample=True), without its per-step overheads. `warpers` (transformers' logits warpers, e.g.
    top-k, top-p) act on the temperature-scaled logits, in transformers' order, and the token is then drawn as
    generate() draws it (ILQL's decoding wrapper uses this; HFBackend itself uses generate() for top-k/top-p).
    Position ids follow the attention mask; a finished row gets pad_id after its EOS.
    Returns [B, T] new tokens."""
    B = query_ids.shape[0]
    eos = torch.tensor(sorted(eos_ids), device=query_ids.device)
    attention_mask = query_mask.clone()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    input_ids, cache, tokens = query_ids, None, []
    finished = torch.zeros(B, dtype=torch.bool, device=query_ids.device)
    cache_kw = cache_keyword(model)
    for _ in range(sampling.max_new_tokens):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        cache = returned_cache(out)
        if warpers:  # drawn as generate() draws, so the same seed gives the same tokens
            scores = out.logits[:, -1].float() / sampling.temperature
            for w in warpers:
                scores = w(input_ids, scores)
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
        else:
            nxt = sample_from_logits(out.logits[:, -1], sampling.temperature)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        finished |= torch.isin(nxt, eos)
        if bool(finished.all()):
            break
        input_ids = nxt[:, None]
        position_ids = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
    return torch.stack(tokens, dim=1)
