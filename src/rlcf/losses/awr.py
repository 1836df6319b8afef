"""AWR: Advantage-Weighted Regression (Peng et al. 2019), in the token-level form the APA paper
(Zhu et al. 2023, arXiv:2306.02231) applies to language models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlcf.advantages import explained_variance, masked_mean, whitened_gae
from rlcf.kl import kl_estimate, sequence_kl
from rlcf.types import AdvantageInput, LossBatch


def awr_advantages(inp: AdvantageInput, cfg: Any) -> dict[str, Tensor]:
    """Score on the last real token only (NO KL term; inp.kl_coef is ignored), GAE (cfg.gamma, cfg.gae_lambda)
    with the critic's V_old, A whitened over the batch; returns R = A + V_old (not whitened)."""
    if inp.values is None:
        raise ValueError("awr_advantages: inp.values is None; AWR needs V_old from a critic")
    advantages, returns = whitened_gae(
        inp.scores, inp.logprobs, inp.ref_logprobs, inp.mask, inp.values, 0.0, cfg.gamma, cfg.gae_lambda, inp.total
    )
    seq_kl = (kl_estimate(inp.logprobs, inp.ref_logprobs, "k1") * inp.mask).sum(-1)
    return {"advantages": advantages, "returns": returns, "kl/k1_seq": seq_kl.mean()}


def awr_weights(advantages: Tensor, inv_lam: float, max_weight: float | None) -> Tensor:
    """w_t = exp(A_t / lam) from detached advantages, clipped at max_weight unless it is None."""
    w = (advantages.detach() * inv_lam).exp()
    return w if max_weight is None else w.clamp(max=max_weight)


def awr_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Advantage-weighted NLL plus an unclipped value loss, over the N valid tokens of the minibatch.

      w_t  = min(exp(A_t / lam), max_weight)   (A detached; max_weight None = no clip, the authors' code)
      L_pg = (1/N) sum_t m_t [ -log pi_theta(a_t|s_t) w_t ]
      L_vf = 0.5 (1/N) sum_t m_t (V_theta - R_t)^2   (unclipped; the 0.5 matches PPO's value loss here)
      L = L_pg + vf_coef L_vf
    No KL term anywhere: lam alone controls how far the policy moves; batch.kl_coef is not used.
    """
    for name in ("advantages", "returns", "values"):
        if getattr(batch, name) is None:
            raise ValueError(f"awr_loss: batch.{name} is None; AWR needs advantages, returns and critic values")
    mask, R, V = batch.mask, batch.returns, batch.values
    # Zero on pads so an overflowing weight there cannot turn the masked mean into inf * 0 = nan.
    w = awr_weights(batch.advantages, cfg.inv_lam, cfg.max_weight).masked_fill(mask <= 0, 0.0)
    pg_loss = masked_mean(-batch.logprobs * w, mask)
    vf_loss = 0.5 * masked_mean((V - R).square(), mask)
    loss = pg_loss + cfg.vf_coef * vf_loss

    with torch.no_grad():
        seq_kl = sequence_kl(batch.logprobs, batch.ref_logprobs, mask)
        metrics = {
            "loss/policy": pg_loss.detach(),
            "loss/value": vf_loss.detach(),
            "loss/total": loss.detach(),
            "policy/weight_mean": masked_mean(w, mask),
            "policy/weight_max": w.max(),  # real weights are > 0, so the zeroed pads never win
            "value/explained_var": explained_variance(V, R, mask),
            "kl/k1_seq": seq_kl.mean(),
        }
    return loss, metrics
