"""SFT: supervised fine-tuning, token negative log-likelihood on completions (as in Ouyang et al. 2022,
arXiv:2203.02155, step 1; the baseline P3O and APA start from)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlcf.advantages import masked_mean


def sft_loss(logprobs: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Token NLL over completion tokens only, averaged over the valid tokens of the whole batch:
      L = -(1/N) sum_{b,t} m_{b,t} log pi_theta(y_{b,t} | x_b, y_{b,<t}),  N = sum_{b,t} m_{b,t}.
    logprobs [B, T] are the log-probs of the target tokens (already gathered); mask [B, T] is 1 on
    completion tokens and 0 on prompt and padding, so the prompt is never trained on.
    Each token weighs 1/N (long completions weigh more than short ones), dL/d logp_{b,t} = -m_{b,t} / N.
    loss/ppl = exp(L), the token perplexity of the batch.
    """
    if logprobs.shape != mask.shape:
        raise ValueError(f"sft_loss: logprobs and mask must have the same shape, got "
                         f"{tuple(logprobs.shape)} and {tuple(mask.shape)}")
    m = mask.to(logprobs.dtype)
    if not bool(m.sum() > 0):
        raise ValueError("sft_loss: mask has no completion tokens; the mean NLL is undefined")
    loss = -masked_mean(logprobs, m)
    with torch.no_grad():
        metrics = {"loss/sft": loss.detach(), "loss/ppl": loss.detach().exp()}
    return loss, metrics
