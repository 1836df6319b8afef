"""Reward model: Bradley-Terry pairwise loss (Bradley and Terry 1952; as used for RLHF reward models in
Stiennon et al. 2020, arXiv:2009.01325, and Ouyang et al. 2022, arXiv:2203.02155; the optional margin as in
Touvron et al. 2023, Llama 2, arXiv:2307.09288)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlcf.advantages import last_token_index


def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = mean_pairs -log sigmoid(s_w - s_l - margin), scores [B], margin [B] (or broadcastable) or None = 0.

    With d = s_w - s_l - margin: dL/ds_w = -(1 - sigmoid(d)) / B, dL/ds_l = +(1 - sigmoid(d)) / B.
    Metrics are about the raw scores, margin left out: reward/accuracy is the fraction with s_w > s_l
    (a tie counts as wrong), reward/margin_mean is mean(s_w - s_l).
    """
    if chosen_scores.ndim != 1 or chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"bradley_terry_loss: expected chosen and rejected scores of shape [B], got "
                         f"{tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}")
    gap = chosen_scores - rejected_scores
    d = gap if margin is None else gap - margin.to(gap.dtype)
    loss = -F.logsigmoid(d).mean()
    with torch.no_grad():
        metrics = {
            "loss/reward_model": loss.detach(),
            "reward/accuracy": (gap > 0).to(gap.dtype).mean(),
            "reward/margin_mean": gap.mean(),
        }
    return loss, metrics


def last_token_scores(values: Tensor, attention_mask: Tensor) -> Tensor:
    """[B] each row's value at its LAST REAL token: the largest position where attention_mask is 1.

    Works for right padding, left padding (the last column) and pad == eos (a real EOS is in the mask, the
    pads after it are not); never reads the last column blindly. values [B, L] (e.g. a value head's output
    squeezed), attention_mask [B, L]. A row with no real token is an error, not a silent column 0.
    """
    if values.ndim != 2 or values.shape != attention_mask.shape:
        raise ValueError(f"last_token_scores: values and attention_mask must both be [B, L], got "
                         f"{tuple(values.shape)} and {tuple(attention_mask.shape)}")
    if not bool((attention_mask > 0).any(dim=-1).all()):
        raise ValueError("last_token_scores: a row of attention_mask has no real token")
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, last_token_index(attention_mask)]
