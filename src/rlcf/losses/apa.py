"""APA: Advantage-Induced Policy Alignment (Zhu, Sharma, Pfrommer, Jiao, Jordan 2023, arXiv:2306.02231)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlcf.advantages import explained_variance, masked_mean, whitened_gae
from rlcf.kl import kl_estimate, sequence_kl
from rlcf.types import AdvantageInput, LossBatch

ANCHORS = ("init", "old")


def _check_anchor(cfg: Any, who: str) -> str:
    if cfg.anchor not in ANCHORS:
        raise ValueError(f"{who}: apa.anchor must be one of {', '.join(ANCHORS)}, got {cfg.anchor!r}")
    return cfg.anchor


def apa_advantages(inp: AdvantageInput, cfg: Any) -> dict[str, Tensor]:
    """Whitened GAE (cfg.gamma, cfg.gae_lambda) from the critic's V_old; returns R = A + V_old (not whitened).

    anchor='init' (the paper): the reward is the score on the last real token only, NO KL term; inp.kl_coef
    is ignored. anchor='old' (authors' later code): r_t = -beta (log pi_old - log pi_ref) + score on the last
    real token, with beta = inp.kl_coef (the trainer's fixed controller built from cfg.beta).
    """
    if inp.values is None:
        raise ValueError("apa_advantages: inp.values is None; APA needs V_old from a critic")
    beta = inp.kl_coef if _check_anchor(cfg, "apa_advantages") == "old" else 0.0
    advantages, returns = whitened_gae(
        inp.scores, inp.logprobs, inp.ref_logprobs, inp.mask, inp.values, beta, cfg.gamma, cfg.gae_lambda, inp.total
    )
    seq_kl = (kl_estimate(inp.logprobs, inp.ref_logprobs, "k1") * inp.mask).sum(-1)
    return {"advantages": advantages, "returns": returns, "kl/k1_seq": seq_kl.mean()}


def apa_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Squared distance of log pi_theta to the target log pi* = log pi_anchor + A/lambda, over the N valid tokens.

      L_pg = (1/N) sum_t m_t (log pi_theta(a_t|s_t) - A_t/lambda - log pi_anchor(a_t|s_t))^2
      L_vf = 0.5 (1/N) sum_t m_t (V_theta - R_t)^2      (unclipped; the 0.5 matches PPO's value loss here)
      L = L_pg + vf_coef L_vf
    pi_anchor = pi_init = batch.ref_logprobs (anchor='init', the paper; the target pi* ~ pi_init exp(A/lambda)
    with its normaliser taken as 1), or pi_old = batch.old_logprobs (anchor='old'). No KL term in the loss:
    lambda alone trades reward for KL to pi_init; batch.kl_coef is not used here.
    """
    for name in ("advantages", "returns", "values"):
        if getattr(batch, name) is None:
            raise ValueError(f"apa_loss: batch.{name} is None; APA needs advantages, returns and critic values")
    anchor = batch.ref_logprobs if _check_anchor(cfg, "apa_loss") == "init" else batch.old_logprobs
    mask, A, R, V = batch.mask, batch.advantages.detach(), batch.returns, batch.values
    residual = batch.logprobs - A / cfg.temperature - anchor
    pg_loss = masked_mean(residual.square(), mask)
    vf_loss = 0.5 * masked_mean((V - R).square(), mask)
    loss = pg_loss + cfg.vf_coef * vf_loss

    with torch.no_grad():
        log_ratio = batch.logprobs - batch.old_logprobs
        seq_kl = sequence_kl(batch.logprobs, batch.ref_logprobs, mask)
        metrics = {
            "loss/policy": pg_loss.detach(),
            "loss/value": vf_loss.detach(),
            "loss/total": loss.detach(),
            "policy/approx_kl": masked_mean(log_ratio.expm1() - log_ratio, mask),
            "value/explained_var": explained_variance(V, R, mask),
            "kl/k1_seq": seq_kl.mean(),
        }
    return loss, metrics
