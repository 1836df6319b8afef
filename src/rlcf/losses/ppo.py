"""PPO in its RLHF form (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlcf.advantages import clipped_surrogate, explained_variance, masked_mean, whitened_gae
from rlcf.kl import sequence_kl
from rlcf.types import AdvantageInput, LossBatch


def ppo_advantages(inp: AdvantageInput, cfg: Any) -> dict[str, Tensor]:
    """Token rewards r_t = -beta (log pi_old - log pi_ref) + score on the last real token; GAE with the
    critic's V_old; returns R = A + V_old (critic targets, not whitened); then A whitened over the batch."""
    if inp.values is None:
        raise ValueError("ppo_advantages: inp.values is None; PPO needs V_old from a critic")
    mask = inp.mask
    advantages, returns = whitened_gae(
        inp.scores, inp.logprobs, inp.ref_logprobs, mask, inp.values, inp.kl_coef, cfg.gamma, cfg.gae_lambda, inp.total
    )
    seq_kl = sequence_kl(inp.logprobs, inp.ref_logprobs, mask)
    return {
        "advantages": advantages,
        "returns": returns,
        "kl/k1_seq": seq_kl.mean(),
    }


def ppo_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate plus clipped value loss, both averaged over the N valid tokens of the minibatch.

      rho_t = exp(log pi_theta - log pi_old)
      L_pg  = (1/N) sum_t m_t max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps))
      V_clip = clip(V_theta, V_old - eps_v, V_old + eps_v)
      L_vf  = 0.5 (1/N) sum_t m_t max((V_theta - R_t)^2, (V_clip - R_t)^2)
      L = L_pg + vf_coef L_vf
    The KL penalty already sits in the reward (see ppo_advantages); batch.kl_coef is not used here.
    """
    for name in ("advantages", "returns", "values", "old_values"):
        if getattr(batch, name) is None:
            raise ValueError(f"ppo_loss: batch.{name} is None; PPO needs advantages, returns and critic values")
    mask, A, R = batch.mask, batch.advantages, batch.returns
    log_ratio = batch.logprobs - batch.old_logprobs
    rho = log_ratio.exp()
    surrogate, clipped = clipped_surrogate(rho, A, cfg.eps)
    pg_loss = masked_mean(surrogate, mask)

    V, V_old = batch.values, batch.old_values
    V_clip = torch.clamp(V, V_old - cfg.eps_v, V_old + cfg.eps_v)
    vf_un, vf_cl = (V - R).square(), (V_clip - R).square()
    vf_loss = 0.5 * masked_mean(torch.maximum(vf_un, vf_cl), mask)
    loss = pg_loss + cfg.vf_coef * vf_loss

    with torch.no_grad():
        seq_kl = sequence_kl(batch.logprobs, batch.ref_logprobs, mask)
        metrics = {
            "loss/policy": pg_loss.detach(),
            "loss/value": vf_loss.detach(),
            "loss/total": loss.detach(),
            "policy/clipfrac": masked_mean(clipped, mask),
            "policy/approx_kl": masked_mean(log_ratio.expm1() - log_ratio, mask),
            "value/clipfrac": masked_mean((vf_cl > vf_un).to(rho.dtype), mask),
            "value/explained_var": explained_variance(V, R, mask),
            "kl/k1_seq": seq_kl.mean(),
        }
    return loss, metrics
