"""Advantage estimators and masked statistics. Pure torch.

Shapes: B rows (K consecutive rows per prompt), T response tokens (right-padded), mask [B, T] float 0/1.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is 1 (over everything, or along dim)."""
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over the masked positions; unbiased (n-1) by default, as RLHF codebases do."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (mask * (x - mean).square()).sum() / n
    if unbiased:
        if n <= 1:
            raise ValueError(f"masked_var: need at least 2 masked values for an unbiased variance, got {int(n)}")
        var = var * n / (n - 1)
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
           total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x - mean) / std with masked batch statistics; shift_mean=False adds the mean back (scale only).
    total: sums a tensor over every process's batch (a run split over processes), so the statistics are the whole
    batch's, as in one process; None: this batch is the whole batch."""
    if total is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        n = total(mask.sum())
        mean = total((x * mask).sum()) / n
        var = total((mask * (x - mean).square()).sum()) / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def last_token_index(mask: Tensor) -> Tensor:
    """[B] index of each row's last real response token (0 for a row with none)."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    # Largest position with mask 1; works for holes too, not only right padding.
    return (positions * (mask > 0)).amax(dim=-1)


def kl_shaped_token_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float
) -> Tensor:
    """[B, T] r_t = -beta (log pi_old - log pi_ref) on each response token, plus the score on the LAST REAL
    token (never a pad after EOS). Pads get 0."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens.

    delta_t = r_t + gamma V_{t+1} - V_t with V past the last real token = 0,
    A_t = delta_t + gamma lam A_{t+1}, returns R_t = A_t + V_t (before any whitening). Pads are 0.
    The loop runs backwards over T; every step is vectorised over the B rows.
    """
    rewards, values = rewards * mask, values * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(B)
    next_adv = rewards.new_zeros(B)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Zeroing pads (here and in values above) cuts the recursion: the step after a row's last real
        # token contributes V = 0 and A = 0, and garbage on pads never leaks back into real tokens.
        advantages[:, t] = (delta + gamma * lam * next_adv) * m
        next_value, next_adv = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def whitened_gae(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, values: Tensor,
    beta: float, gamma: float, lam: float, total: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The critic pipeline PPO, AWR and APA share: token rewards (kl_shaped_token_rewards; beta = 0 puts only
    the score on the last real token), GAE with V_old, then A whitened over the batch (every process's: `total`).

    Returns (whitened A, zero on pads; returns R = A + V_old before whitening, the critic targets)."""
    rewards = kl_shaped_token_rewards(scores, logprobs, ref_logprobs, mask, beta)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return whiten(advantages, mask, total=total) * mask, returns


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, <= 0 no better than a constant."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask)


def _groups(x: Tensor, k: int, who: str) -> Tensor:
    if k < 2:
        raise ValueError(f"{who}: group_size must be >= 2 (responses per prompt), got {k}")
    if x.ndim != 1 or x.shape[0] % k:
        raise ValueError(f"{who}: expected [B] rewards with B a multiple of group_size {k}, got shape {tuple(x.shape)}")
    return x.view(-1, k)


def leave_one_out(rewards: Tensor, k: int) -> Tensor:
    """[B] A_i = r_i - mean_{j != i} r_j within each group of k consecutive rows (RLOO)."""
    r = _groups(rewards, k, "leave_one_out")
    baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    return (r - baseline).reshape(-1)


def group_normalize(rewards: Tensor, k: int, std_eps: float = 1e-4) -> Tensor:
    """[B] (r_i - mean_j r_j) / (std_j r_j + std_eps), unbiased std within each group (GRPO)."""
    r = _groups(rewards, k, "group_normalize")
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, unbiased=True)
    return ((r - mean) / (std + std_eps)).reshape(-1)


def sequence_logprob(logprobs: Tensor, mask: Tensor) -> Tensor:
    """[B] log pi(y|x) = sum of token log-probs over response tokens only."""
    return (logprobs * mask).sum(dim=-1)


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps: float,
                      eps_high: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO's pessimistic clipped objective, elementwise, as a loss:
      l = max(-A rho, -A clip(rho, 1 - eps, 1 + eps_high)),  eps_high = eps unless given
    Returns (l, clipped), clipped = 1 where the clipped branch is the larger (the element gives no gradient)."""
    high = eps if eps_high is None else eps_high
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - eps, 1 + high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).to(ratio.dtype)
