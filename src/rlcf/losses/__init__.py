"""Pure loss functions, one shared signature: fn(batch: LossBatch, cfg) -> (loss, metrics)."""

from rlcf.losses.p3o import p3o_advantages, p3o_loss
from rlcf.losses.ppo import ppo_advantages, ppo_loss
from rlcf.losses.registry import ALGORITHMS, Algorithm, get_algorithm
from rlcf.losses.rloo import grpo_advantages, grpo_loss, rloo_advantages, rloo_loss

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "get_algorithm",
    "grpo_advantages",
    "grpo_loss",
    "p3o_advantages",
    "p3o_loss",
    "ppo_advantages",
    "ppo_loss",
    "rloo_advantages",
    "rloo_loss",
]
