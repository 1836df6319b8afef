"""Response log-probs: the one forward for them, and a log-softmax that never materialises a full-vocabulary float32
tensor for the whole batch."""

from __future__ import annotations

import torch
from torch import nn

_CHUNK_ELEMENTS = 1 << 24  # logits elements (64 MB in float32) handled at once


def _row_chunks(logits: torch.Tensor):
    per_row = max(1, logits[0].numel())
    step = max(1, _CHUNK_ELEMENTS // per_row)
    return [(s, min(s + step, logits.shape[0])) for s in range(0, logits.shape[0], step)]


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / temperature)[targets] without a full-vocabulary float32 log-softmax.

    Forward: a logsumexp per chunk of rows. Backward: d/d logits = (onehot(target) - softmax) / temperature,
    written chunk by chunk into the one gradient tensor, so the only [B, T, V] tensors alive are the logits
    the model produced and their gradient (autograd's own logsumexp + gather would add two more).
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature):
        out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        for s, e in _row_chunks(logits):
            x = logits[s:e].float()
            if temperature != 1.0:
                x = x / temperature
            lse[s:e] = torch.logsumexp(x, dim=-1)
            out[s:e] = x.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - lse[s:e]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        temp = ctx.temperature
        grad_logits = torch.empty_like(logits)
        for s, e in _row_chunks(logits):
            x = logits[s:e].float()
            if temp != 1.0:
                x = x / temp
            g = grad[s:e].float()
            d = torch.exp(x - lse[s:e].unsqueeze(-1)).mul_(-g.unsqueeze(-1))
            d.scatter_add_(-1, targets[s:e].unsqueeze(-1), g.unsqueeze(-1))
            if temp != 1.0:
                d.div_(temp)
            grad_logits[s:e] = d
        return grad_logits, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets] in float32: logits [B, T, V], targets [B, T] -> [B, T]."""
    return _TokenLogprobs.apply(logits, targets, float(temperature))


def sequence_inputs(query_ids, query_mask, response_ids, response_mask):
    """input_ids, attention_mask and position_ids of [prompt (left-padded) | response (right-padded)].
    Position ids follow the attention mask, so scoring sees the positions generate() used."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, (response_mask > 0).long()], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def response_logprobs(lm: nn.Module, query_ids, query_mask, response_ids, response_mask,
                      temperature: float = 1.0) -> torch.Tensor:
    """[B, T] log pi(y_t | x, y_<t) of a plain causal LM on [prompt | response]: the one forward for response
    log-probs (trainer, stages, eval). Only the T + 1 last positions go through the LM head."""
    input_ids, attention_mask, position_ids = sequence_inputs(query_ids, query_mask, response_ids, response_mask)
    T = response_ids.shape[1]
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=T + 1,
             use_cache=False)
    return token_logprobs(out.logits[:, :-1], response_ids, temperature)


