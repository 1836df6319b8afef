"""APA and AWR: hand-derived losses and gradients, APA's minimiser (Theorem 1), AWR's weight clip, the
anchor choice, the registry entries and their advantages (whitened GAE, no KL in the reward)."""

import math

import pytest
import torch

from rlcf.config import APAConfig, AWRConfig, TrainConfig
from rlcf.losses.apa import apa_advantages, apa_loss
from rlcf.losses.awr import awr_advantages, awr_loss, awr_weights
from rlcf.losses.registry import ALGORITHMS, get_algorithm
from rlcf.types import AdvantageInput, LossBatch

F64 = torch.float64
LN2 = math.log(2.0)


def t(rows):
    return torch.tensor(rows, dtype=F64)


# Two rows, N = 3 valid tokens (row 0: 2 tokens, row 1: 1 token). Pads hold garbage on purpose: a loss
# that forgets the mask anywhere picks it up.
MASK = [[1, 1, 0], [1, 0, 0]]
LOGP = [[-1.0, -2.0, 7.0], [-0.5, 3.0, 3.0]]
REF = [[-1.5, -1.2, 5.0], [-0.4, 1.0, 1.0]]
OLD = [[-1.1, -1.8, 0.0], [-0.6, 0.0, 0.0]]
V = [[0.5, 0.2, 9.0], [1.0, 9.0, 9.0]]
R = [[1.0, 0.0, -9.0], [0.0, -9.0, -9.0]]


def batch_with(advantages, logp=LOGP, ref=REF, old=OLD):
    lp = t(logp).requires_grad_()
    values = t(V).requires_grad_()
    b = LossBatch(logprobs=lp, old_logprobs=t(old), ref_logprobs=t(ref), mask=t(MASK), group_size=2, kl_coef=0.05,
                  advantages=t(advantages), returns=t(R), values=values, old_values=t(V))
    return b, lp, values


# ---------------------------------------------------------------- (a) APA by hand


APA_A = [[0.02, -0.05, 0.9], [0.03, 0.4, 0.4]]  # A/lam with lam = 0.1: [0.2, -0.5], [0.3]


def test_apa_loss_and_gradients_by_hand():
    b, lp, values = batch_with(APA_A)
    loss, m = apa_loss(b, APAConfig(temperature=0.1, vf_coef=2.0))
    # residual = logp - A/lam - log pi_init:
    #   row 0: -1.0 - 0.2 + 1.5 = 0.3,  -2.0 + 0.5 + 1.2 = -0.3;  row 1: -0.5 - 0.3 + 0.4 = -0.4
    # L_pg = (0.09 + 0.09 + 0.16) / 3 = 0.34 / 3
    # L_vf = 0.5 * ((0.5-1)^2 + (0.2-0)^2 + (1-0)^2) / 3 = 0.5 * 1.29 / 3 = 0.215;  L = L_pg + 2 * 0.215
    assert m["loss/policy"].item() == pytest.approx(0.34 / 3, rel=1e-12)
    assert m["loss/value"].item() == pytest.approx(0.215, rel=1e-12)
    assert loss.item() == pytest.approx(0.34 / 3 + 0.43, rel=1e-12)
    assert m["loss/total"].item() == pytest.approx(loss.item(), rel=1e-15)
    g_lp, g_v = torch.autograd.grad(loss, (lp, values))
    # dL/dlogp_t = 2 m_t (logp - A/lam - logp_init) / N;  dL/dV_t = vf_coef m_t (V - R) / N
    assert torch.allclose(g_lp, t([[0.6 / 3, -0.6 / 3, 0.0], [-0.8 / 3, 0.0, 0.0]]), atol=1e-14)
    assert torch.allclose(g_v, t([[-1.0 / 3, 0.4 / 3, 0.0], [2.0 / 3, 0.0, 0.0]]), atol=1e-14)
    # kl/k1_seq is theta vs ref: row sums (0.5 - 0.8) and (-0.1), mean -0.2
    assert m["kl/k1_seq"].item() == pytest.approx(-0.2, rel=1e-12)
    # approx_kl: log rho = logp - old = 0.1, -0.2, 0.1; mean of (e^x - 1 - x)
    approx = sum(math.expm1(x) - x for x in (0.1, -0.2, 0.1)) / 3
    assert m["policy/approx_kl"].item() == pytest.approx(approx, rel=1e-12)
    for v in m.values():
        assert v.ndim == 0 and not v.requires_grad


# ---------------------------------------------------------------- (a) AWR by hand


AWR_A = [[2 * LN2, -2 * LN2, 2000.0], [0.0, 2000.0, 2000.0]]  # exp(A/2) = [2, 0.5, inf], [1, inf, inf]


def test_awr_loss_and_gradients_by_hand():
    b, lp, values = batch_with(AWR_A)
    loss, m = awr_loss(b, AWRConfig(inv_lam=0.5, vf_coef=1.0))
    # w = exp(A * 0.5) = 2, 0.5 | 1 (the infinite weights sit on pads and must not leak in as inf * 0 = nan)
    # L_pg = (1.0 * 2 + 2.0 * 0.5 + 0.5 * 1) / 3 = 3.5 / 3;  L_vf = 0.215 as for APA
    assert m["loss/policy"].item() == pytest.approx(3.5 / 3, rel=1e-12)
    assert m["loss/value"].item() == pytest.approx(0.215, rel=1e-12)
    assert loss.item() == pytest.approx(3.5 / 3 + 0.215, rel=1e-12)
    g_lp, g_v = torch.autograd.grad(loss, (lp, values))
    # dL/dlogp_t = -m_t w_t / N;  dL/dV_t = vf_coef m_t (V - R) / N
    assert torch.allclose(g_lp, t([[-2.0 / 3, -0.5 / 3, 0.0], [-1.0 / 3, 0.0, 0.0]]), atol=1e-14)
    assert torch.allclose(g_v, t([[-0.5 / 3, 0.2 / 3, 0.0], [1.0 / 3, 0.0, 0.0]]), atol=1e-14)
    assert m["policy/weight_mean"].item() == pytest.approx(3.5 / 3, rel=1e-12)
    assert m["policy/weight_max"].item() == pytest.approx(2.0, rel=1e-12)
    assert m["kl/k1_seq"].item() == pytest.approx(-0.2, rel=1e-12)
    for v in m.values():
        assert v.ndim == 0 and not v.requires_grad and torch.isfinite(v)


def test_awr_weights_carry_no_gradient_to_the_advantages():
    A = t([[0.3, -0.1]]).requires_grad_()
    assert not awr_weights(A, 0.5, None).requires_grad


# ---------------------------------------------------------------- (c) AWR weight clip


def test_awr_max_weight_clips_and_none_does_not():
    A = t([2 * math.log(30.0), 2 * LN2, -2 * LN2])  # weights 30, 2, 0.5 at inv_lam 0.5
    assert torch.allclose(awr_weights(A, 0.5, None), t([30.0, 2.0, 0.5]), rtol=1e-12)
    assert torch.allclose(awr_weights(A, 0.5, 20.0), t([20.0, 2.0, 0.5]), rtol=1e-12)
    assert AWRConfig().max_weight is None  # the authors' code does not clip

    b, lp, _ = batch_with(AWR_A)
    loss, m = awr_loss(b, AWRConfig(inv_lam=0.5, max_weight=1.5))
    # w = 1.5 (clipped from 2), 0.5 | 1:  L_pg = (1.0 * 1.5 + 2.0 * 0.5 + 0.5 * 1) / 3 = 1.0
    assert m["loss/policy"].item() == pytest.approx(1.0, rel=1e-12)
    assert m["policy/weight_max"].item() == pytest.approx(1.5, rel=1e-12)
    (g_lp,) = torch.autograd.grad(loss, lp)
    assert torch.allclose(g_lp, t([[-1.5 / 3, -0.5 / 3, 0.0], [-1.0 / 3, 0.0, 0.0]]), atol=1e-14)

    b, _, _ = batch_with([[2 * math.log(30.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    _, m = awr_loss(b, AWRConfig(inv_lam=0.5, max_weight=None))
    assert m["policy/weight_max"].item() == pytest.approx(30.0, rel=1e-12)


# ---------------------------------------------------------------- (d) the anchor


def test_apa_anchor_init_uses_ref_and_old_uses_old_logprobs():
    b, lp, _ = batch_with(APA_A)
    loss, m = apa_loss(b, APAConfig(temperature=0.1, anchor="old"))
    # residual against pi_old: -1.0 - 0.2 + 1.1 = -0.1, -2.0 + 0.5 + 1.8 = 0.3 | -0.5 - 0.3 + 0.6 = -0.2
    assert m["loss/policy"].item() == pytest.approx(0.14 / 3, rel=1e-12)
    (g_lp,) = torch.autograd.grad(loss, lp)
    assert torch.allclose(g_lp, t([[-0.2 / 3, 0.6 / 3, 0.0], [-0.4 / 3, 0.0, 0.0]]), atol=1e-14)
    _, m_init = apa_loss(batch_with(APA_A)[0], APAConfig(temperature=0.1))
    assert m_init["loss/policy"].item() == pytest.approx(0.34 / 3, rel=1e-12)

    # Each anchor ignores the other log-prob entirely.
    shifted = [[x - 0.7 for x in row] for row in OLD]
    _, m_a = apa_loss(batch_with(APA_A, old=shifted)[0], APAConfig(temperature=0.1, anchor="init"))
    assert m_a["loss/policy"].item() == pytest.approx(0.34 / 3, rel=1e-12)
    shifted = [[x - 0.7 for x in row] for row in REF]
    _, m_b = apa_loss(batch_with(APA_A, ref=shifted)[0], APAConfig(temperature=0.1, anchor="old"))
    assert m_b["loss/policy"].item() == pytest.approx(0.14 / 3, rel=1e-12)

    assert APAConfig().anchor == "init"
    with pytest.raises(ValueError, match="anchor"):
        apa_loss(batch_with(APA_A)[0], APAConfig(anchor="ref"))


# ---------------------------------------------------------------- (b) APA's minimiser, Theorem 1


def test_apa_population_minimiser_is_pi_init_tilted_by_advantages():
    """Well-specified case of Theorem 1 (Zhu et al. 2023): a softmax policy over 5 actions (parameters = logits),
    pi_init fixed, fixed advantages, full-support sampling weights. The paper assumes the normaliser
    Z = sum_a pi_init(a) exp(A(a)/lam) is 1; we enforce it by shifting A by -lam log Z. Then
    log pi* = log pi_init + A/lam is a distribution, the population loss reaches 0 there, and it is the minimiser."""
    g = torch.Generator().manual_seed(0)
    lam = 0.1
    log_init = torch.log_softmax(torch.randn(5, generator=g, dtype=F64), 0)
    A_raw = 0.1 * torch.randn(5, generator=g, dtype=F64) + 0.05
    sample_w = t([0.1, 0.3, 0.15, 0.25, 0.2])  # pi_sample: full support, deliberately not pi_init
    log_z = torch.logsumexp(log_init + A_raw / lam, 0)
    A = A_raw - lam * log_z
    assert torch.logsumexp(log_init + A / lam, 0).abs().item() < 1e-12  # the normaliser is now 1
    pi_star = torch.softmax(log_init + A_raw / lam, 0)

    def minimise(adv):
        z = torch.zeros(5, dtype=F64, requires_grad=True)
        opt = torch.optim.LBFGS([z], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (sample_w * (torch.log_softmax(z, 0) - adv / lam - log_init).square()).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return torch.softmax(z.detach(), 0), closure().item()

    pi, loss = minimise(A)
    assert (pi - pi_star).abs().max().item() < 1e-6
    assert loss < 1e-12
    # The assumption matters: with Z != 1 (here log Z = -0.247) the minimiser under these weights is elsewhere.
    assert abs(log_z.item()) > 0.1
    pi_raw, _ = minimise(A_raw)
    assert (pi_raw - pi_star).abs().max().item() > 1e-2


# ---------------------------------------------------------------- (e) registry and advantages


def gae_whitened_reference(rewards, values, lengths, gamma=1.0, lam=0.95):
    """Plain-float GAE per row, then whitening over all real tokens (unbiased std, eps 1e-8)."""
    out = []
    for r, v, n in zip(rewards, values, lengths):
        adv, nxt_v, nxt_a = [0.0] * n, 0.0, 0.0
        for i in reversed(range(n)):
            nxt_a = r[i] + gamma * nxt_v - v[i] + gamma * lam * nxt_a
            adv[i], nxt_v = nxt_a, v[i]
        out.append(adv)
    flat = torch.tensor([a for row in out for a in row], dtype=F64)
    mean, var = flat.mean(), flat.var(unbiased=True)
    return [[(a - mean.item()) / math.sqrt(var.item() + 1e-8) for a in row] for row in out]


ADV_MASK = t([[1, 1, 1], [1, 1, 0]])
ADV_VALUES = t([[0.2, 0.1, -0.3], [0.4, 0.0, 9.0]])
ADV_SCORES = t([1.0, -0.5])
ADV_OLD = t([[-1.0, -0.5, -0.2], [-0.3, -0.8, 0.0]])
ADV_REF = t([[-1.2, -0.4, -0.6], [-0.1, -0.9, 0.0]])


def adv_input(ref=ADV_REF, kl_coef=0.05):
    return AdvantageInput(scores=ADV_SCORES, logprobs=ADV_OLD, ref_logprobs=ref, mask=ADV_MASK, group_size=2,
                          kl_coef=kl_coef, values=ADV_VALUES)


def padded(rows):
    return t([row + [0.0] * (3 - len(row)) for row in rows])


def test_registry_entries():
    for name, loss, adv in (("apa", apa_loss, apa_advantages), ("awr", awr_loss, awr_advantages)):
        algo = get_algorithm(name)
        assert name in ALGORITHMS and algo.loss is loss and algo.advantages is adv
        assert (algo.needs_critic, algo.kl_estimator, algo.adaptive_kl, algo.offline) == (True, "k1", False, True)
    cfg = TrainConfig(algo="apa")
    assert isinstance(cfg.algo_config(), APAConfig) and isinstance(TrainConfig(algo="awr").algo_config(), AWRConfig)
    assert (APAConfig().temperature, APAConfig().beta, AWRConfig().inv_lam) == (0.1, 0.05, 0.5)
    assert not hasattr(AWRConfig(), "beta")  # AWR has no KL coefficient: its temperature alone sets its distance


@pytest.mark.parametrize("name,cfg", [("apa", APAConfig()), ("awr", AWRConfig())])
def test_advantages_are_whitened_gae_of_the_score_with_no_kl(name, cfg):
    adv_fn = get_algorithm(name).advantages
    out = adv_fn(adv_input(), cfg)
    # rewards: score on the last real token only. gamma 1, lambda 0.95, V past the end = 0:
    #   row 0: delta = [0.1-0.2, -0.3-0.1, 1+0.3] = [-0.1, -0.4, 1.3] -> A = [0.69325, 0.835, 1.3]
    #   row 1: delta = [0.0-0.4, -0.5-0.0]        = [-0.4, -0.5]      -> A = [-0.875, -0.5]
    raw = [[0.69325, 0.835, 1.3], [-0.875, -0.5]]
    assert torch.allclose(out["returns"], padded([[0.89325, 0.935, 1.0], [-0.475, -0.5]]), atol=1e-12)
    flat = t([0.69325, 0.835, 1.3, -0.875, -0.5])
    whitened = [[(a - flat.mean().item()) / math.sqrt(flat.var().item() + 1e-8) for a in row] for row in raw]
    assert torch.allclose(out["advantages"], padded(whitened), atol=1e-12)
    # kl/k1_seq: pi_old vs pi_ref, the batch mean of the sequence sums
    k1 = ((ADV_OLD - ADV_REF) * ADV_MASK).sum(1).mean().item()
    assert out["kl/k1_seq"].item() == pytest.approx(k1, rel=1e-12)
    # No KL term: neither the reference log-probs nor beta change the advantages.
    other = adv_fn(adv_input(ref=ADV_REF - 0.5 * torch.rand(2, 3, dtype=F64), kl_coef=0.3), cfg)
    assert torch.equal(other["advantages"], out["advantages"]) and torch.equal(other["returns"], out["returns"])


def test_apa_anchor_old_puts_the_k1_penalty_in_the_reward():
    cfg = APAConfig(anchor="old")
    out = apa_advantages(adv_input(kl_coef=0.05), cfg)
    rewards = (-0.05 * (ADV_OLD - ADV_REF)).tolist()
    rewards[0][2] += 1.0
    rewards[1][1] += -0.5
    expected = gae_whitened_reference(rewards, ADV_VALUES.tolist(), [3, 2])
    assert torch.allclose(out["advantages"], padded(expected), atol=1e-12)
    init = apa_advantages(adv_input(kl_coef=0.05), APAConfig())
    assert not torch.allclose(out["advantages"], init["advantages"])
    moved = apa_advantages(adv_input(ref=ADV_REF - 0.5, kl_coef=0.05), cfg)
    assert not torch.allclose(moved["advantages"], out["advantages"])


@pytest.mark.parametrize("name,cfg", [("apa", APAConfig()), ("apa", APAConfig(anchor="old")), ("awr", AWRConfig())])
def test_end_to_end_metrics_are_detached_scalars(name, cfg):
    algo = get_algorithm(name)
    out = algo.advantages(adv_input(), cfg)
    values = (ADV_VALUES + 0.1).requires_grad_()
    lp = (ADV_OLD + 0.05).requires_grad_()
    batch = LossBatch(logprobs=lp, old_logprobs=ADV_OLD, ref_logprobs=ADV_REF, mask=ADV_MASK, group_size=2,
                      kl_coef=0.05, advantages=out["advantages"], returns=out["returns"], values=values,
                      old_values=ADV_VALUES)
    loss, metrics = algo.loss(batch, cfg)
    assert loss.ndim == 0 and loss.requires_grad
    assert {"loss/policy", "loss/value", "loss/total", "kl/k1_seq"} <= set(metrics)
    for key, v in metrics.items():
        assert key.split("/")[0] in {"loss", "policy", "value", "kl"}
        assert v.ndim == 0 and not v.requires_grad and torch.isfinite(v), key
    with pytest.raises(ValueError, match="values"):
        algo.advantages(AdvantageInput(ADV_SCORES, ADV_OLD, ADV_REF, ADV_MASK, 2), cfg)
