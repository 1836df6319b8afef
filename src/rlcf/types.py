"""Containers for rollout data. Imports only torch.

Shape letters: B = rows (n_prompts * K, the K responses of one prompt on consecutive rows,
row = prompt * K + k), Q = prompt length (left-padded), T = response length (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
from torch import Tensor


@dataclass
class Rollout:
    """One batch of sampled responses, everything the update needs, all detached."""

    query_ids: Tensor  # [B, Q] long, prompt tokens, left-padded
    query_mask: Tensor  # [B, Q] long, 1 on real prompt tokens
    response_ids: Tensor  # [B, T] long, sampled tokens, right-padded after EOS
    response_mask: Tensor  # [B, T] float, 1 on real response tokens (a real EOS included)
    logprobs: Tensor | None  # [B, T] float, log pi_old(a_t|s_t); None until the update's forward gives it
    ref_logprobs: Tensor  # [B, T] float, log pi_ref(a_t|s_t)
    scores: Tensor  # [B] float, reward after preprocessing (clip, scale, EOS penalty)
    raw_scores: Tensor  # [B] float, reward as the reward source returned it
    group_size: int  # K, responses per prompt
    values: Tensor | None = None  # [B, T] float, V_old(s_t) from the critic, when one is used
    advantages: Tensor | None = None  # [B, T] token-level or [B] sequence-level
    returns: Tensor | None = None  # [B, T] float, GAE returns (critic targets)
    truncated: Tensor | None = None  # [B] bool, response cut at max_new_tokens without EOS
    prompts: list[str] = field(default_factory=list)  # [B] prompt text per row
    responses: list[str] = field(default_factory=list)  # [B] decoded response per row
    trunk_hidden: Tensor | None = None  # [B, Q + T, H] top_blocks: the frozen trunk's output (top blocks' input)
    sampler_logprobs: Tensor | None = None  # [B, T] the generation backend's own log-probs (vllm), diagnostics

    @property
    def n_groups(self) -> int:
        return self.response_ids.shape[0] // self.group_size

    def select_groups(self, group_idx: Tensor) -> "Rollout":
        """Rows of the given prompt groups, whole groups kept together (pairwise losses need them)."""
        k = self.group_size
        rows = (group_idx[:, None] * k + torch.arange(k, device=group_idx.device)[None, :]).reshape(-1)
        rows_list = rows.tolist()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[rows.to(v.device)]
            elif isinstance(v, list) and v:
                out[f.name] = [v[i] for i in rows_list]
            else:
                out[f.name] = v
        return replace(self, **out)

    def to(self, device) -> "Rollout":
        return replace(
            self, **{f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        )


@dataclass
class LossBatch:
    """What every loss function receives: one minibatch of whole prompt groups."""

    logprobs: Tensor  # [B, T] log pi_theta(a_t|s_t), carries the gradient
    old_logprobs: Tensor  # [B, T] log pi_old(a_t|s_t), detached
    ref_logprobs: Tensor  # [B, T] log pi_ref(a_t|s_t), detached
    mask: Tensor  # [B, T] float, 1 on real response tokens
    group_size: int  # K; rows of one prompt are consecutive
    kl_coef: float = 0.0  # beta in force for this step (fixed or from the adaptive controller)
    scores: Tensor | None = None  # [B] preprocessed scores (P3O recomputes its KL-shaped reward)
    advantages: Tensor | None = None  # [B, T] token-level or [B] sequence-level, detached
    returns: Tensor | None = None  # [B, T] critic targets, detached
    values: Tensor | None = None  # [B, T] V_theta(s_t), carries the gradient
    old_values: Tensor | None = None  # [B, T] V_old(s_t), detached


@dataclass
class AdvantageInput:
    """What every advantage function receives: the whole rollout batch, detached."""

    scores: Tensor  # [B] preprocessed scores
    logprobs: Tensor  # [B, T] log pi_old
    ref_logprobs: Tensor  # [B, T] log pi_ref
    mask: Tensor  # [B, T] float
    group_size: int  # K
    kl_coef: float = 0.0  # beta in force
    values: Tensor | None = None  # [B, T] V_old, when a critic is used
    total: Callable[[Tensor], Tensor] | None = None
    """Sums a tensor over every process (a run split over processes): batch statistics such as the whitening of
    advantages are then the whole batch's. None: this batch is the whole batch."""
