"""P3O: Pairwise Proximal Policy Optimization (Wu, Zhu, Liu, Jiao, Jiao 2023, arXiv:2310.00212)."""

from __future__ import annotations

import math
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
    V1's term with weight w > 0 (the one that pushes rho down) is unbounded in rho = exp(sum of token
    log-ratios); cfg.dual_clip = c caps it (dual clip): term = min(max(w rho, w clip(rho)), c w), which has
    no gradient once rho > c. dual_clip None is the paper's V1.
    ratio "token_mean" replaces every rho by exp(mean over the response's tokens of the log-ratio).
    Reduction "pairs": mean over all pairs (the paper); "tokens": sum over pairs / response tokens.
    beta is batch.kl_coef; cfg gives eps, clip_c, variant, reduction, dual_clip, ratio.
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
    log_ratio = logp - old_logp  # sequence log-ratios vs pi_old
    if cfg.ratio == "token_mean":
        log_ratio = log_ratio / mask.sum(-1).clamp(min=1)
    elif cfg.ratio != "sequence":
        raise ValueError(f"p3o_loss: unknown ratio {cfg.ratio!r}; choose 'sequence' or 'token_mean'")
    lr_i, lr_j = _pairs(log_ratio, k)
    eps, C = cfg.eps, cfg.clip_c

    if cfg.variant == "v1":
        dual = cfg.dual_clip
        if dual is not None and not dual > 1 + eps:
            raise ValueError(f"p3o_loss: dual_clip={dual} must be above 1 + eps = {1 + eps}, or None")

        def term(w: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
            """(the term, whether a clipped branch won) for weight w and log-ratio lr."""
            past = torch.zeros_like(lr, dtype=torch.bool)
            if dual is not None:
                # past log(dual) the term is constant in rho whatever the sign of w (dual-clipped or clipped):
                # clamping first gives the same value and gradient and keeps exp() from overflowing to inf
                past = lr > math.log(dual)
                lr = lr.clamp(max=math.log(dual))
            rho = lr.exp()
            un, cl = w * rho, w * rho.clamp(1 - eps, 1 + eps)
            t = torch.maximum(un, cl)
            if dual is not None:
                t = torch.where(w > 0, torch.minimum(t, dual * w), t)
            return t, (t != un) | past

        w_i = -delta * lr_j.detach().exp().clamp(1 / C, C)
        w_j = delta * lr_i.detach().exp().clamp(1 / C, C)
        (t_i, c_i), (t_j, c_j) = term(w_i, lr_i), term(w_j, lr_j)
        pair_loss = 0.5 * (t_i + t_j)
        clipped = torch.cat([c_i, c_j])
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
            # A term counts as clipped when a clipped branch wins, i.e. its gradient is cut.
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
