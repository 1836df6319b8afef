"""GSPO, Group Sequence Policy Optimization (Zheng et al. 2025, Qwen): GRPO's group-normalised advantages
(`rloo.grpo_advantages`, the registry's row reuses it) with a sequence-level importance ratio, the geometric
mean of the token ratios, clipped per sequence."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rlcf.advantages import clipped_surrogate, masked_mean
from rlcf.kl import kl_estimate, sequence_kl
from rlcf.types import LossBatch


def gspo_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (the paper's eq. 5-7), with GRPO's optional k3 penalty:

      s_i = exp( (1/|y_i|) sum_t m_t (log pi_theta - log pi_old)_t )      (length-normalised sequence ratio)
      L   = (1/B) sum_i max(-A_i s_i, -A_i clip(s_i, 1 - eps, 1 + eps_high))
            + beta (1/B) sum_i (1/|y_i|) sum_t m_t k3_t,   k3_t = exp(-d_t) - 1 + d_t,  d_t = log pi_theta - log pi_ref
    beta is batch.kl_coef (0 by default: the paper uses no KL term). An empty response has s_i = 1.
    """
    if batch.advantages is None:
        raise ValueError("gspo_loss: batch.advantages is None; GSPO needs group-normalised advantages")
    mask = batch.mask
    lengths = mask.sum(-1).clamp_min(1)
    log_ratio = batch.logprobs - batch.old_logprobs
    seq_ratio = ((log_ratio * mask).sum(-1) / lengths).exp()
    per_seq, clipped = clipped_surrogate(seq_ratio, batch.advantages.to(seq_ratio.dtype), cfg.eps, cfg.eps_high)
    k3 = kl_estimate(batch.logprobs, batch.ref_logprobs, "k3")
    kl_term = ((k3 * mask).sum(-1) / lengths).mean()
    loss = per_seq.mean() + batch.kl_coef * kl_term
    metrics = {
        "loss/policy": per_seq.mean().detach(),
        "policy/clipfrac": clipped.mean().detach(),
        "policy/seq_ratio_mean": seq_ratio.mean().detach(),
        "policy/approx_kl": masked_mean(log_ratio.expm1() - log_ratio, mask).detach(),
        "kl/k3_seq": sequence_kl(batch.logprobs, batch.ref_logprobs, mask, "k3").mean().detach(),
    }
    return loss, metrics
