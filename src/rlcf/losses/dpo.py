"""DPO: Direct Preference Optimization (Rafailov, Sharma, Mitchell, Ermon, Manning, Finn 2023, arXiv:2305.18290)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlcf.advantages import sequence_logprob


def dpo_loss(
    logprobs_chosen: Tensor,
    logprobs_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    mask_chosen: Tensor,
    mask_rejected: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sigmoid DPO on B preference pairs, SEQUENCE level.

    Inputs are token log-probs [B, T] (chosen and rejected may have different T) with 0/1 masks over the
    response tokens; each is summed to log pi(y|x) over the mask, so no length normalisation:
      r_w = beta (log pi_theta(y_w|x) - log pi_ref(y_w|x)),  r_l likewise for y_l,  z = r_w - r_l,
      L = mean_pairs -log sigmoid(z)   (F.logsigmoid, stable for large |z|).
    Gradient per chosen token: dL/d log pi_theta(y_w,t) = -beta (1 - sigmoid(z)) m_t / B, the opposite sign
    for rejected tokens. The reference log-probs are treated as constants (they are detached here).
    Metrics: the implicit rewards r_w, r_l, their margin z and the fraction of pairs with z > 0.
    """
    _check_pair("dpo_loss", logprobs_chosen, ref_chosen, mask_chosen, "chosen")
    _check_pair("dpo_loss", logprobs_rejected, ref_rejected, mask_rejected, "rejected")
    if logprobs_chosen.shape[0] != logprobs_rejected.shape[0]:
        raise ValueError(
            f"dpo_loss: chosen and rejected need the same number of pairs, got "
            f"{logprobs_chosen.shape[0]} and {logprobs_rejected.shape[0]}"
        )
    m_w = mask_chosen.to(logprobs_chosen.dtype)
    m_l = mask_rejected.to(logprobs_rejected.dtype)
    r_w = beta * (sequence_logprob(logprobs_chosen, m_w) - sequence_logprob(ref_chosen.detach(), m_w))
    r_l = beta * (sequence_logprob(logprobs_rejected, m_l) - sequence_logprob(ref_rejected.detach(), m_l))
    z = r_w - r_l
    loss = -F.logsigmoid(z).mean()

    with torch.no_grad():
        metrics = {
            "loss/dpo": loss.detach(),
            "reward/chosen": r_w.mean(),
            "reward/rejected": r_l.mean(),
            "reward/margin": z.mean(),
            "reward/accuracy": (z > 0).to(z.dtype).mean(),
        }
    return loss, metrics


def _check_pair(who: str, logprobs: Tensor, ref: Tensor, mask: Tensor, name: str) -> None:
    if logprobs.ndim != 2 or logprobs.shape != ref.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"{who}: {name} logprobs, ref and mask must all be [B, T], got {tuple(logprobs.shape)}, "
            f"{tuple(ref.shape)} and {tuple(mask.shape)}"
        )
