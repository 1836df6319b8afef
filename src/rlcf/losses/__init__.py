"""Pure loss functions. Online algorithms share one signature, fn(batch: LossBatch, cfg) -> (loss, metrics),
and are looked up in the registry; DPO, SFT and the reward model's loss take their own tensors."""

from rlcf.losses.apa import apa_advantages, apa_loss
from rlcf.losses.awr import awr_advantages, awr_loss
from rlcf.losses.dpo import dpo_loss
from rlcf.losses.ilql import expectile_loss, ilql_loss, polyak_update
from rlcf.losses.p3o import p3o_advantages, p3o_loss
from rlcf.losses.ppo import ppo_advantages, ppo_loss
from rlcf.losses.registry import ALGORITHMS, Algorithm, get_algorithm
from rlcf.losses.reward import bradley_terry_loss, last_token_scores
from rlcf.losses.rloo import grpo_advantages, grpo_loss, rloo_advantages, rloo_loss
from rlcf.losses.sft import sft_loss

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "apa_advantages",
    "apa_loss",
    "awr_advantages",
    "awr_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "expectile_loss",
    "ilql_loss",
    "polyak_update",
    "get_algorithm",
    "last_token_scores",
    "grpo_advantages",
    "grpo_loss",
    "p3o_advantages",
    "p3o_loss",
    "ppo_advantages",
    "ppo_loss",
    "rloo_advantages",
    "rloo_loss",
    "sft_loss",
]
