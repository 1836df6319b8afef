"""Critic-free group baselines: RLOO (Kool et al. 2019; Ahmadian et al. 2024) and GRPO (Shao et al. 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlcf.advantages import clipped_surrogate, group_normalize, leave_one_out, masked_mean, sequence_logprob
from rlcf.kl import kl_estimate, sequence_kl
from rlcf.types import AdvantageInput, LossBatch


def _need_advantages(batch: LossBatch, who: str) -> Tensor:
    if batch.advantages is None or batch.advantages.ndim != 1:
        raise ValueError(f"{who}: batch.advantages must be sequence-level [B]; run the algorithm's advantages fn first")
    return batch.advantages


def rloo_advantages(inp: AdvantageInput, cfg: Any) -> dict[str, Tensor]:
    """r_i = s_i - beta sum_t k1_t (pi_old vs pi_ref); A_i = r_i - mean_{j != i} r_j within the prompt's group."""
    seq_kl = sequence_kl(inp.logprobs, inp.ref_logprobs, inp.mask, "k1")
    rewards = inp.scores.to(seq_kl.dtype) - inp.kl_coef * seq_kl
    return {"advantages": leave_one_out(rewards, inp.group_size), "kl/k1_seq": seq_kl.mean()}


def rloo_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO with a sequence-level PPO clip (Ahmadian et al. 2024, "Back to Basics").

      rho_i = exp(log pi_theta(y_i|x) - log pi_old(y_i|x))
      L = (1/B) sum_i max(-A_i rho_i, -A_i clip(rho_i, 1-eps, 1+eps))
    The KL penalty sits in the reward (see rloo_advantages). cfg.ratio "token_mean" divides the log-ratio by the
    response's length (rho the geometric mean of the token ratios).
    """
    A, mask = _need_advantages(batch, "rloo_loss"), batch.mask
    seq_log_ratio = sequence_logprob(batch.logprobs - batch.old_logprobs, mask)
    if cfg.ratio == "token_mean":
        seq_log_ratio = seq_log_ratio / mask.sum(-1).clamp(min=1)
    elif cfg.ratio != "sequence":
        raise ValueError(f"rloo_loss: unknown ratio {cfg.ratio!r}; choose 'sequence' or 'token_mean'")
    rho = seq_log_ratio.exp()
    per_seq, clipped = clipped_surrogate(rho, A, cfg.eps)
    loss = per_seq.mean()
    with torch.no_grad():
        log_ratio = batch.logprobs - batch.old_logprobs
        metrics = {
            "loss/policy": loss.detach(),
            "policy/clipfrac": clipped.mean(),
            "policy/approx_kl": masked_mean(log_ratio.expm1() - log_ratio, mask),
            "kl/k1_seq": sequence_kl(batch.logprobs, batch.ref_logprobs, mask, "k1").mean(),
        }
    return loss, metrics


def grpo_advantages(inp: AdvantageInput, cfg: Any) -> dict[str, Tensor]:
    """A_i = (s_i - mean_j s_j) / (std_j s_j + std_eps); no KL in the reward (it is in the loss)."""
    return {
        "advantages": group_normalize(inp.scores, inp.group_size, cfg.std_eps),
        "kl/k1_seq": sequence_kl(inp.logprobs, inp.ref_logprobs, inp.mask, "k1").mean(),
        "kl/k3_seq": sequence_kl(inp.logprobs, inp.ref_logprobs, inp.mask, "k3").mean(),
    }


def grpo_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO (Shao et al. 2024, DeepSeekMath), the sequence advantage A_i broadcast to every token:

      rho_t = exp(log pi_theta - log pi_old),  k3_t = exp(-d_t) - 1 + d_t,  d_t = log pi_theta - log pi_ref
      L = (1/B) sum_i (1/|y_i|) sum_t [ max(-A_i rho_t, -A_i clip(rho_t, 1-eps, 1+eps)) + beta k3_t ]
    beta is batch.kl_coef.
    """
    A, mask = _need_advantages(batch, "grpo_loss"), batch.mask
    log_ratio = batch.logprobs - batch.old_logprobs
    rho = log_ratio.exp()
    A_t = A[:, None].to(rho.dtype)
    surrogate, clipped = clipped_surrogate(rho, A_t, cfg.eps)
    k3 = kl_estimate(batch.logprobs, batch.ref_logprobs, "k3")
    per_token = surrogate + batch.kl_coef * k3
    # Each sequence weighs the same whatever its length; an empty row contributes 0 instead of NaN.
    lengths = mask.sum(-1).clamp_min(1)
    loss = ((per_token * mask).sum(-1) / lengths).mean()
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.detach(),
            "policy/clipfrac": masked_mean(clipped, mask),
            "policy/approx_kl": masked_mean(log_ratio.expm1() - log_ratio, mask),
            "kl/k3_seq": sequence_kl(batch.logprobs, batch.ref_logprobs, mask, "k3").mean(),
        }
    return loss, metrics
