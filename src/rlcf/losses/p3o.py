"""P3O: Pairwise Proximal Policy Optimization (Wu, Zhu, Liu, Jiao, Jiao 2023, arXiv:2310.00212)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlcf.advantages import masked_mean, sequence_logprob
from rlcf.kl import kl_estimate
from rlcf.types import AdvantageInput, LossBatch


def _pairs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """[B] -> ([G, P], [G, P]): the first and second member of every unordered pair i < j of each group."""
    i, j = torch.triu_indices(k, k, offset=1, device=x.device)
    g = x.view(-1, k)
    return g[:, i], g[:, j]


def p3o_loss(batch: LossBatch, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """K-wise P3O; at K = 2 it is the paper's loss, for K > 2 the loss is averaged over the K(K-1)/2 pairs.

    Bandit view, all log-probs at SEQUENCE level. KL-shaped reward, recomputed with the current theta:
      r~_i = s_i - beta (log pi_theta(y_i|x) - log pi_ref(y_i|x)),  Delta = sg(r~_i - r~_j),
      rho_i = pi_theta(y_i|x) / pi_old(y_i|x),  c(rho) = clip(rho, 1/C, C).
    V1 (separate clipping):
      L = 1/2 [ max(-Delta sg(c(rho_j)) rho_i, -Delta sg(c(rho_j)) clip(rho_i, 1-eps, 1+eps))
              + max(+Delta sg(c(rho_i)) rho_j, +Delta sg(c(rho_i)) clip(rho_j, 1-eps, 1+eps)) ]
    V2 (joint clipping): D = log pi_theta(y_i|x) - log pi_theta(y_j|x), D_old likewise under pi_old,
      w = sg(Delta clip(rho_i rho_j, 1/C, C)),  L = 1/2 max(-w D, -w clip(D, D_old - eps, D_old + eps)).
    Inside the trust region both have the gradient -1/2 Delta rho_i rho_j grad D. Averaged over the pairs
    of a group at theta = old this is exactly the RLOO gradient -(1/K) sum_i A_i grad log pi(y_i|x).
    Reduction "pairs": mean over all pairs (the paper); "tokens": sum over pairs / response tokens.
    beta is batch.kl_coef; cfg gives eps, clip_c, variant, reduction.
    """
    if batch.scores is None:
        raise ValueError("p3o_loss: batch.scores is None; P3O recomputes its reward from the scores")
    k, mask = batch.group_size, batch.mask
    logp = sequence_logprob(batch.logprobs, mask)
    old_logp = sequence_logprob(batch.old_logprobs, mask)
    ref_logp = sequence_logprob(batch.ref_logprobs, mask)
    seq_kl = (logp - ref_logp).detach()
    shaped = batch.scores.to(logp.dtype) - batch.kl_coef * seq_kl

    r_i, r_j = _pairs(shaped, k)
    delta = r_i - r_j  # already detached: shaped is built from detached values
    lr_i, lr_j = _pairs(logp - old_logp, k)  # sequence log-ratios vs pi_old
    eps, C = cfg.eps, cfg.clip_c

    if cfg.variant == "v1":
        rho_i, rho_j = lr_i.exp(), lr_j.exp()
        w_i = -delta * rho_j.detach().clamp(1 / C, C)
        w_j = delta * rho_i.detach().clamp(1 / C, C)
        un_i, cl_i = w_i * rho_i, w_i * rho_i.clamp(1 - eps, 1 + eps)
        un_j, cl_j = w_j * rho_j, w_j * rho_j.clamp(1 - eps, 1 + eps)
        pair_loss = 0.5 * (torch.maximum(un_i, cl_i) + torch.maximum(un_j, cl_j))
        clipped = torch.cat([cl_i > un_i, cl_j > un_j])
    elif cfg.variant == "v2":
        D = _pairs(logp, k)
        D = D[0] - D[1]
        old = _pairs(old_logp, k)
        D_old = old[0] - old[1]
        w = (delta * (lr_i + lr_j).exp().clamp(1 / C, C)).detach()
        un, cl = -w * D, -w * torch.clamp(D, D_old - eps, D_old + eps)
        pair_loss = 0.5 * torch.maximum(un, cl)
        clipped = cl > un
    else:
        raise ValueError(f"p3o_loss: unknown variant {cfg.variant!r}; choose 'v1' or 'v2'")

    if cfg.reduction == "pairs":
        loss = pair_loss.mean()
    elif cfg.reduction == "tokens":
        loss = pair_loss.sum() / mask.sum()
    else:
        raise ValueError(f"p3o_loss: unknown reduction {cfg.reduction!r}; choose 'pairs' or 'tokens'")

    with torch.no_grad():
        log_ratio = batch.logprobs - batch.old_logprobs
        metrics = {
            "loss/policy": loss.detach(),
            # A term counts as clipped when the clipped branch wins the max, i.e. its gradient is cut.
            "policy/clipfrac": clipped.to(logp.dtype).mean(),
            "policy/approx_kl": masked_mean(log_ratio.expm1() - log_ratio, mask),
            "kl/k1_seq": seq_kl.mean(),
            "reward/shaped_mean": shaped.mean(),
        }
    return loss, metrics


def p3o_advantages(inp: AdvantageInput, cfg: Any) -> dict[str, Tensor]:
    """Nothing to precompute: the loss rebuilds the shaped reward with the current theta. KL of pi_old only."""
    seq_kl = (kl_estimate(inp.logprobs, inp.ref_logprobs, "k1") * inp.mask).sum(-1)
    return {"kl/k1_seq": seq_kl.mean()}
