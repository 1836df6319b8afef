"""One entry per online algorithm, all with the same shape, so the trainer never branches on a name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from rlcf.losses.apa import apa_advantages, apa_loss
from rlcf.losses.awr import awr_advantages, awr_loss
from rlcf.losses.gspo import gspo_loss
from rlcf.losses.p3o import p3o_advantages, p3o_loss
from rlcf.losses.ppo import ppo_advantages, ppo_loss
from rlcf.losses.rloo import grpo_advantages, grpo_loss, rloo_advantages, rloo_loss
from rlcf.types import AdvantageInput, LossBatch


@dataclass(frozen=True)
class Algorithm:
    name: str
    loss: Callable[[LossBatch, Any], tuple[Tensor, dict[str, Tensor]]]
    """(batch, cfg) -> (scalar loss, metrics of detached 0-d tensors); beta is batch.kl_coef."""
    advantages: Callable[[AdvantageInput, Any], dict[str, Tensor]]
    """(inp, cfg) -> {"advantages", "returns" (optional), "kl/<est>_seq"...}; once per rollout batch.
    Always holds "kl/k1_seq" (pi_old vs pi_ref, batch mean of the sequence KL): the adaptive controller's input."""
    needs_critic: bool
    kl_estimator: str
    """Estimator of the KL the reward or loss uses; its metric is "kl/<estimator>_seq"."""
    adaptive_kl: bool
    """True: beta follows the adaptive controller (cfg.kl_target); False: fixed beta."""
    kl_coef: str | None = "beta"
    """The config field holding the KL coefficient beta the loop passes on (batch.kl_coef, the adaptive controller's
    start); None: the algorithm has none (beta = 0)."""
    strength: str = "beta"
    """The config field that sets how far the policy may move from the reference (plots and frontiers)."""
    adaptive_strength: str | None = None
    """With adaptive_kl: the field that, when set, replaces `strength` (a KL target); the run is then labelled
    NAME-adaptive."""
    label_field: str | None = None
    """A config field whose value names the run's variant in plots (NAME-VALUE, e.g. p3o-v1)."""
    offline: bool = False
    """Also learns from fixed (prompt, response, reward) rows (--offline-data)."""
    min_group: int = 1
    """Fewest responses per prompt (rollout.group_size) the loss is defined for."""
    needs_group: str = ""
    """Why min_group > 1, for the error message."""
    token_mean: Callable[[Any], bool] = lambda cfg: False
    """(cfg) -> whether the loss is a mean over the minibatch's valid tokens (not over its rows): a run split over
    processes then weights each process's loss by its share of the tokens, so that the averaged gradient is the
    one a single process computes over the whole minibatch."""


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(name="p3o", loss=p3o_loss, advantages=p3o_advantages, needs_critic=False, kl_estimator="k1",
                  adaptive_kl=False, label_field="variant", min_group=2,
                  needs_group="P3O compares the responses of a prompt in pairs",
                  token_mean=lambda cfg: cfg.reduction == "tokens"),
        Algorithm(name="ppo", loss=ppo_loss, advantages=ppo_advantages, needs_critic=True, kl_estimator="k1",
                  adaptive_kl=True, adaptive_strength="kl_target", token_mean=lambda cfg: True),
        Algorithm(name="rloo", loss=rloo_loss, advantages=rloo_advantages, needs_critic=False, kl_estimator="k1",
                  adaptive_kl=False, min_group=2, needs_group="RLOO's baseline leaves one out"),
        Algorithm(name="grpo", loss=grpo_loss, advantages=grpo_advantages, needs_critic=False, kl_estimator="k3",
                  adaptive_kl=False, min_group=2, needs_group="GRPO normalises over the group"),
        Algorithm(name="gspo", loss=gspo_loss, advantages=grpo_advantages, needs_critic=False, kl_estimator="k3",
                  adaptive_kl=False, min_group=2, needs_group="GSPO normalises over the group"),
        # APA and AWR: no KL in the reward by default; their temperature alone controls the distance to pi_init
        # (APA's non-default anchor='old' puts beta's k1 penalty in the reward inside apa_advantages itself)
        Algorithm(name="apa", loss=apa_loss, advantages=apa_advantages, needs_critic=True, kl_estimator="k1",
                  adaptive_kl=False, strength="temperature", offline=True, token_mean=lambda cfg: True),
        Algorithm(name="awr", loss=awr_loss, advantages=awr_advantages, needs_critic=True, kl_estimator="k1",
                  adaptive_kl=False, strength="inv_lam", kl_coef=None, offline=True,
                  token_mean=lambda cfg: True),
    )
}

OFFLINE_ONLY = ("ilql",)
"""Algorithms outside the RL loop: they learn from fixed rows only (rlcf.ilql_train)."""


def offline_algorithms() -> list[str]:
    return [n for n, a in ALGORITHMS.items() if a.offline] + list(OFFLINE_ONLY)


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") from None
