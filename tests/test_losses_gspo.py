"""GSPO: the loss by hand, against a slow per-sequence loop (values and gradients), its clipping, and learning on
the tiny model. (Also the worked example of the README's recipe for adding an algorithm.)"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.common import read_metrics
from test_trainer import mean, tiny_config

from rlcf.config import GSPOConfig
from rlcf.losses.gspo import gspo_loss
from rlcf.losses.rloo import grpo_advantages
from rlcf.losses.registry import get_algorithm
from rlcf.trainer import train
from rlcf.types import AdvantageInput, LossBatch

F64 = torch.float64


def _batch(lp, old, ref, mask, adv, beta=0.0):
    return LossBatch(logprobs=lp, old_logprobs=old, ref_logprobs=ref, mask=mask, group_size=2, kl_coef=beta,
                     scores=None, advantages=adv, returns=None, values=None, old_values=None)


def test_gspo_by_hand():
    # two sequences; sequence 0: log-ratios 0.2 and 0.4 over 2 tokens -> s = exp(0.3); sequence 1: one token, -0.1
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    old = torch.zeros(2, 2, dtype=F64)
    lp = torch.tensor([[0.2, 0.4], [-0.1, 7.0]], dtype=F64)  # 7.0 sits on padding
    adv = torch.tensor([1.0, -2.0], dtype=F64)
    cfg = GSPOConfig(eps=0.2, eps_high=0.25)
    loss, m = gspo_loss(_batch(lp, old, old, mask, adv), cfg)
    s0, s1 = math.exp(0.3), math.exp(-0.1)
    # seq 0: A = 1, s0 = 1.35 > 1.25 -> clipped: max(-1.35, -1.25) = -1.25 (no gradient)
    # seq 1: A = -2, s1 = 0.905 inside [0.8, 1.25] -> 2 * 0.905
    assert loss.item() == pytest.approx((-1.25 + 2 * s1) / 2, rel=1e-12)
    assert m["policy/clipfrac"].item() == pytest.approx(0.5)
    assert m["policy/seq_ratio_mean"].item() == pytest.approx((s0 + s1) / 2, rel=1e-12)
    grad = torch.autograd.grad(gspo_loss(_batch(lp.requires_grad_(), old, old, mask, adv), cfg)[0], lp)[0]
    # d/dlp of 2 s1 / 2 = s1 * d(mean log-ratio) = s1 on the one real token of row 1; row 0 is clipped; pads 0
    assert torch.allclose(grad, torch.tensor([[0.0, 0.0], [s1, 0.0]], dtype=F64), atol=1e-12)


def slow_gspo(lp, old, ref, mask, adv, eps, eps_high, beta):
    total = 0.0
    B = lp.shape[0]
    for i in range(B):
        n = int(mask[i].sum())
        lr = sum(lp[i, t] - old[i, t] for t in range(n)) / max(n, 1)
        s = torch.exp(lr) if n else torch.tensor(1.0, dtype=F64)
        term = torch.maximum(-adv[i] * s, -adv[i] * torch.clamp(s, 1 - eps, 1 + eps_high))
        k3 = sum(torch.exp(ref[i, t] - lp[i, t]) - 1 + (lp[i, t] - ref[i, t]) for t in range(n))
        total = total + term + beta * (k3 / max(n, 1))
    return total / B


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_gspo_matches_a_slow_loop(beta):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    lp = (torch.randn(B, T, generator=g, dtype=F64) * 0.1).requires_grad_()
    old = lp.detach() + torch.randn(B, T, generator=g, dtype=F64) * 0.05
    ref = lp.detach() + torch.randn(B, T, generator=g, dtype=F64) * 0.2
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    mask = (torch.arange(T)[None] < lengths[:, None]).to(F64)
    adv = torch.randn(B, generator=g, dtype=F64)
    cfg = GSPOConfig(eps=0.02, eps_high=0.03)
    loss, _ = gspo_loss(_batch(lp, old, ref, mask, adv, beta), cfg)
    ref_loss = slow_gspo(lp, old, ref, mask, adv, 0.02, 0.03, beta)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    g1 = torch.autograd.grad(loss, lp, retain_graph=True)[0]
    g2 = torch.autograd.grad(ref_loss, lp)[0]
    assert torch.allclose(g1, g2, atol=1e-13)


def test_gspo_advantages_are_grpos_group_normalised_ones_and_registered():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0], dtype=F64)
    z = torch.zeros(4, 3, dtype=F64)
    out = grpo_advantages(AdvantageInput(scores=scores, logprobs=z, ref_logprobs=z, mask=torch.ones_like(z),
                                         group_size=2, kl_coef=0.0), GSPOConfig())
    std = math.sqrt(2.0)  # unbiased std of (1, 3)
    assert torch.allclose(out["advantages"], torch.tensor([-1 / (std + 1e-4), 1 / (std + 1e-4), 0.0, 0.0], dtype=F64))
    algo = get_algorithm("gspo")
    assert (algo.loss, algo.advantages, algo.min_group, algo.needs_critic) == (gspo_loss, grpo_advantages, 2, False)


def test_gspo_raises_the_reward(tiny_model_dir, tmp_path):
    # the paper's clip ranges: each batch's first minibatch is unclipped (ratio 1), later epochs mostly clipped
    train(tiny_config(tiny_model_dir, tmp_path, "gspo", **{"rollout.group_size": 4, "rollout.prompts_per_step": 8,
                                                         "optim.lr": 5e-3}))
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path)]
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.3, rewards  # measured: 0.35 -> 0.99
