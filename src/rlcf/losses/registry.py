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


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("p3o", p3o_loss, p3o_advantages, False, "k1", False, min_group=2, label_field="variant",
                  needs_group="P3O compares the responses of a prompt in pairs"),
        Algorithm("ppo", ppo_loss, ppo_advantages, True, "k1", True, adaptive_strength="kl_target"),
        Algorithm("rloo", rloo_loss, rloo_advantages, False, "k1", False, min_group=2,
                  needs_group="RLOO's baseline leaves one out"),
        Algorithm("grpo", grpo_loss, grpo_advantages, False, "k3", False, min_group=2,
                  needs_group="GRPO normalises over the group"),
        Algorithm("gspo", gspo_loss, grpo_advantages, False, "k3", False, min_group=2,
                  needs_group="GSPO normalises over the group"),
        # APA and AWR: no KL in the reward by default; lam alone controls the distance to pi_init (APA's
        # non-default anchor='old' puts beta's k1 penalty in the reward inside apa_advantages itself)
        Algorithm("apa", apa_loss, apa_advantages, True, "k1", False, strength="lam", offline=True),
        Algorithm("awr", awr_loss, awr_advantages, True, "k1", False, strength="inv_lam", offline=True),
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
