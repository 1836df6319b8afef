import math

import pytest
import torch

from rlcf.config import GRPOConfig, P3OConfig, PPOConfig, RLOOConfig, TrainConfig
from rlcf.losses import (
    ALGORITHMS,
    get_algorithm,
    grpo_advantages,
    grpo_loss,
    p3o_loss,
    ppo_advantages,
    ppo_loss,
    rloo_advantages,
    rloo_loss,
)
from rlcf.types import AdvantageInput, LossBatch

F64 = torch.float64


# ---------------------------------------------------------------- fixtures and slow references


def make_rollout(G, K, T=4, seed=0, spread=0.1):
    """Random float64 rollout: ragged right-padded mask, logprobs = old + spread * noise (a grad leaf)."""
    g = torch.Generator().manual_seed(seed)
    B = G * K
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.1
    ref = old + 0.1 * torch.randn(B, T, generator=g, dtype=F64)
    theta = (old + spread * torch.randn(B, T, generator=g, dtype=F64)).requires_grad_()
    scores = torch.randn(B, generator=g, dtype=F64)
    return dict(logprobs=theta, old_logprobs=old, ref_logprobs=ref, mask=mask, scores=scores, group_size=K)


def grad_of(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


def seq(x, mask, b):
    return sum(x[b, t] for t in range(x.shape[1]) if mask[b, t] > 0)


def p3o_reference(r, beta, cfg):
    """Slow K-wise P3O: python loops over groups, unordered pairs and tokens; floats for sg() values."""
    lp, old, ref, mask, s, K = r["logprobs"], r["old_logprobs"], r["ref_logprobs"], r["mask"], r["scores"], r["group_size"]
    B = lp.shape[0]
    C, eps = cfg.clip_c, cfg.eps
    clipc = lambda x: min(max(x, 1 / C), C)
    total, n_pairs = 0.0, 0
    for g0 in range(0, B, K):
        for a in range(K):
            for c in range(a + 1, K):
                i, j = g0 + a, g0 + c
                lp_i, lp_j = seq(lp, mask, i), seq(lp, mask, j)
                old_i, old_j = seq(old, mask, i).item(), seq(old, mask, j).item()
                r_i = s[i].item() - beta * (lp_i.item() - seq(ref, mask, i).item())
                r_j = s[j].item() - beta * (lp_j.item() - seq(ref, mask, j).item())
                delta = r_i - r_j
                n_i, n_j = (mask[i].sum(), mask[j].sum()) if cfg.ratio == "token_mean" else (1.0, 1.0)
                rho_i, rho_j = torch.exp((lp_i - old_i) / n_i), torch.exp((lp_j - old_j) / n_j)
                if cfg.variant == "v1":
                    wi, wj = -delta * clipc(rho_j.item()), delta * clipc(rho_i.item())

                    def term(w, rho):
                        t = max(w * rho, w * torch.clamp(rho, 1 - eps, 1 + eps))
                        if cfg.dual_clip is not None and w > 0 and t.item() > cfg.dual_clip * w:
                            t = torch.zeros((), dtype=F64) + cfg.dual_clip * w  # constant: no gradient
                        return t

                    pair = 0.5 * (term(wi, rho_i) + term(wj, rho_j))
                else:
                    D, D_old = lp_i - lp_j, old_i - old_j
                    w = delta * clipc(rho_i.item() * rho_j.item())
                    pair = 0.5 * max(-w * D, -w * torch.clamp(D, D_old - eps, D_old + eps))
                total = total + pair
                n_pairs += 1
    return total / n_pairs if cfg.reduction == "pairs" else total / mask.sum()


def p3o_paper_k2(r, beta, cfg):
    """The paper's pairwise P3O written directly for K = 2: y1 = even rows, y2 = odd rows (pairs reduction)."""
    sl = lambda x: (x * r["mask"]).sum(-1)
    lp, old, ref = sl(r["logprobs"]), sl(r["old_logprobs"]), sl(r["ref_logprobs"])
    rt = r["scores"] - beta * (lp - ref).detach()
    delta = rt[0::2] - rt[1::2]
    rho1, rho2 = torch.exp(lp[0::2] - old[0::2]), torch.exp(lp[1::2] - old[1::2])
    C, eps = cfg.clip_c, cfg.eps
    c = lambda x: torch.clamp(x.detach(), 1 / C, C)
    if cfg.variant == "v1":
        L = 0.5 * (
            torch.max(-delta * c(rho2) * rho1, -delta * c(rho2) * torch.clamp(rho1, 1 - eps, 1 + eps))
            + torch.max(delta * c(rho1) * rho2, delta * c(rho1) * torch.clamp(rho2, 1 - eps, 1 + eps))
        )
    else:
        D, D_old = lp[0::2] - lp[1::2], old[0::2] - old[1::2]
        w = (delta * torch.clamp(rho1 * rho2, 1 / C, C)).detach()
        L = 0.5 * torch.max(-w * D, -w * torch.clamp(D, D_old - eps, D_old + eps))
    return L.mean()


def p3o(r, beta, **cfg):
    return p3o_loss(LossBatch(**r, kl_coef=beta), P3OConfig(**cfg))


VARIANTS = [(v, red) for v in ("v1", "v2") for red in ("pairs", "tokens")]
PAPER = {"dual_clip": None}  # the paper's V1: no dual clip


# ---------------------------------------------------------------- P3O


def test_p3o_v2_hand_values():
    # K = 2, one token each, scores [1, 0], beta 0 -> Delta = 1. old = [-1, -2] -> D_old = 1.
    old = torch.tensor([[-1.0], [-2.0]], dtype=F64)
    ref = torch.tensor([[-1.5], [-2.0]], dtype=F64)
    mask, scores = torch.ones(2, 1, dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    cfg = P3OConfig(variant="v2", eps=0.2, clip_c=10.0)
    # Inside: theta = old + [0.1, 0] -> D = 1.1, |D - D_old| = 0.1 < 0.2, w = e^0.1.
    # L = -1/2 e^0.1 * 1.1 = -0.6078440050; dL/dlogp = -1/2 e^0.1 * [1, -1] = [-0.5525854590, +0.5525854590]
    theta = (old + torch.tensor([[0.1], [0.0]], dtype=F64)).requires_grad_()
    b = LossBatch(theta, old, ref, mask, 2, kl_coef=0.0, scores=scores)
    loss, m = p3o_loss(b, cfg)
    assert loss.item() == pytest.approx(-0.5 * math.exp(0.1) * 1.1, rel=1e-12)
    assert grad_of(loss, theta)[0].flatten().tolist() == pytest.approx([-0.5 * math.exp(0.1), 0.5 * math.exp(0.1)])
    assert m["policy/clipfrac"].item() == 0.0
    assert m["kl/k1_seq"].item() == pytest.approx(0.3)  # mean(-0.9 + 1.5, 0)
    assert m["reward/shaped_mean"].item() == pytest.approx(0.5)
    # Outside: theta = old + [0.3, 0] -> D = 1.3 clipped to 1.2; L = -1/2 e^0.3 * 1.2 = -0.8099152848, no gradient.
    theta = (old + torch.tensor([[0.3], [0.0]], dtype=F64)).requires_grad_()
    loss, m = p3o_loss(LossBatch(theta, old, ref, mask, 2, kl_coef=0.0, scores=scores), cfg)
    assert loss.item() == pytest.approx(-0.6 * math.exp(0.3), rel=1e-12)
    assert grad_of(loss, theta)[0].abs().max().item() == 0.0
    assert m["policy/clipfrac"].item() == 1.0


def test_p3o_v1_hand_values():
    # Same pair, theta = old + [0.1, 0]: rho1 = e^0.1 (inside [0.8, 1.2]), rho2 = 1.
    # term1 = -Delta c(rho2) rho1 = -e^0.1; term2 = +Delta c(rho1) rho2 = +e^0.1 -> L = 0,
    # but dL/dlogp1 = -1/2 rho1 c(rho2) = -0.5525854590 and dL/dlogp2 = +1/2 c(rho1) rho2 = +0.5525854590.
    old = torch.tensor([[-1.0], [-2.0]], dtype=F64)
    theta = (old + torch.tensor([[0.1], [0.0]], dtype=F64)).requires_grad_()
    b = LossBatch(theta, old, old.clone(), torch.ones(2, 1, dtype=F64), 2, 0.0, scores=torch.tensor([1.0, 0.0], dtype=F64))
    loss, _ = p3o_loss(b, P3OConfig(variant="v1"))
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    assert grad_of(loss, theta)[0].flatten().tolist() == pytest.approx([-0.5 * math.exp(0.1), 0.5 * math.exp(0.1)])
    # rho1 = e^0.3 > 1.2 with Delta > 0: term1's clipped branch wins (no gradient to logp1); term2 keeps
    # its gradient c(rho1) rho2 / 2 = e^0.3 / 2 on logp2. L = 1/2 (-1.2 + e^0.3).
    theta = (old + torch.tensor([[0.3], [0.0]], dtype=F64)).requires_grad_()
    loss, m = p3o_loss(LossBatch(theta, old, old.clone(), b.mask, 2, 0.0, scores=b.scores), P3OConfig(variant="v1"))
    assert loss.item() == pytest.approx(0.5 * (-1.2 + math.exp(0.3)), rel=1e-12)
    assert grad_of(loss, theta)[0].flatten().tolist() == pytest.approx([0.0, 0.5 * math.exp(0.3)])
    assert m["policy/clipfrac"].item() == 0.5  # one of the two terms


def test_p3o_importance_weights_are_clipped_to_c():
    # Pair as above (Delta = 1, D_old = 1), C = 10.
    old = torch.tensor([[-1.0], [-2.0]], dtype=F64)
    mask, scores = torch.ones(2, 1, dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    # V2, both log-ratios +1.5: rho1 rho2 = e^3 = 20.1 -> clipped to C = 10; D = D_old (inside the D clip).
    # L = -1/2 * 10 * D = -5; grad = -1/2 * 10 * [1, -1] = [-5, 5].
    theta = (old + 1.5).requires_grad_()
    loss, _ = p3o_loss(LossBatch(theta, old, old, mask, 2, 0.0, scores=scores), P3OConfig(variant="v2"))
    assert loss.item() == pytest.approx(-5.0) and grad_of(loss, theta)[0].flatten().tolist() == pytest.approx([-5.0, 5.0])
    # V1, rho1 = e^3 = 20.1, rho2 = 1: term1 = max(-20.1, -1.2) = -1.2 (clipped); term2 = c(rho1) rho2 = 10 * 1.
    # L = 1/2 (-1.2 + 10) = 4.4; grad = [0, 1/2 * 10] = [0, 5].
    theta = (old + torch.tensor([[3.0], [0.0]], dtype=F64)).requires_grad_()
    loss, _ = p3o_loss(LossBatch(theta, old, old, mask, 2, 0.0, scores=scores), P3OConfig(variant="v1"))
    assert loss.item() == pytest.approx(4.4) and grad_of(loss, theta)[0].flatten().tolist() == pytest.approx([0.0, 5.0])


@pytest.mark.parametrize("variant,reduction", VARIANTS)
@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("form", [{"dual_clip": None}, {"dual_clip": 3.0}, {"ratio": "token_mean"}])
def test_p3o_matches_slow_reference_with_grads(variant, reduction, K, form):
    r = make_rollout(G=4, K=K, seed=K, spread=1.0 if "ratio" in form else 0.3)  # mean ratios move less
    cfg = P3OConfig(variant=variant, reduction=reduction, **form)
    loss, m = p3o(r, 0.3, variant=variant, reduction=reduction, **form)
    ref_loss = p3o_reference(r, 0.3, cfg)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(grad_of(loss, r["logprobs"])[0], grad_of(ref_loss, r["logprobs"])[0], atol=1e-12)
    # The batch mixes clipped and unclipped terms, so both branches are exercised.
    assert 0.0 < m["policy/clipfrac"].item() < 1.0


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_p3o_k2_equals_the_papers_pairwise_formula(variant):
    r = make_rollout(G=4, K=2, seed=11, spread=0.2)
    loss, _ = p3o(r, 0.05, variant=variant, **PAPER)
    paper = p3o_paper_k2(r, 0.05, P3OConfig(variant=variant, **PAPER))
    assert loss.item() == pytest.approx(paper.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, r["logprobs"])[0], grad_of(paper, r["logprobs"])[0], atol=1e-13)


def test_p3o_v1_dual_clip_hand_values():
    # Pair as above (Delta = 1), theta = old + [0, 1.5]: rho2 = e^1.5 = 4.48 > dual 3. term2's weight
    # w2 = +Delta c(rho1) = 1 > 0: paper form max(4.48, 1.2) = 4.48 with gradient 4.48 / 2 on logp2;
    # dual-clipped min(4.48, 3 * 1) = 3, no gradient. term1 = max(-c(rho2) rho1, -c(rho2) 1.2) = -4.48 (rho1 = 1),
    # gradient -4.48 / 2 on logp1, the same in both forms.
    old = torch.tensor([[-1.0], [-2.0]], dtype=F64)
    mask, scores = torch.ones(2, 1, dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    theta = (old + torch.tensor([[0.0], [1.5]], dtype=F64)).requires_grad_()
    r15 = math.exp(1.5)
    paper, _ = p3o_loss(LossBatch(theta, old, old, mask, 2, 0.0, scores=scores), P3OConfig(dual_clip=None))
    assert paper.item() == pytest.approx(0.5 * (-r15 + r15))
    assert grad_of(paper, theta)[0].flatten().tolist() == pytest.approx([-r15 / 2, r15 / 2])
    dual, m = p3o_loss(LossBatch(theta, old, old, mask, 2, 0.0, scores=scores), P3OConfig(dual_clip=3.0))
    assert dual.item() == pytest.approx(0.5 * (-r15 + 3.0))
    assert grad_of(dual, theta)[0].flatten().tolist() == pytest.approx([-r15 / 2, 0.0])
    assert m["policy/clipfrac"].item() == 0.5
    with pytest.raises(ValueError, match="dual_clip=1.1 must be above 1 \\+ eps"):
        p3o_loss(LossBatch(theta, old, old, mask, 2, 0.0, scores=scores), P3OConfig(dual_clip=1.1))


@pytest.mark.parametrize("K", [2, 4])
def test_p3o_v1_dual_clip_matches_slow_reference_far_outside_the_trust_region(K):
    r = make_rollout(G=4, K=K, T=4, seed=30 + K, spread=1.5)  # sequence ratios up to e^6 and down to e^-6
    for form in ({"dual_clip": 3.0}, {"dual_clip": 3.0, "ratio": "token_mean"}):
        loss, _ = p3o(r, 0.1, **form)
        ref = p3o_reference(r, 0.1, P3OConfig(**form))
        assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
        assert torch.allclose(grad_of(loss, r["logprobs"])[0], grad_of(ref, r["logprobs"])[0], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_p3o_v1_stays_finite_for_ratios_far_outside_the_trust_region(dtype):
    """Sequence log-ratios of +-200 (a 40-token response whose tokens each moved by 5 nats): the paper's V1
    overflows to an infinite loss and NaN gradients; the dual-clipped default stays finite, bounded by
    C |Delta| max(dual, 1 + eps) per term. The responses whose ratio is far above the region get no gradient."""
    G, T = 8, 40
    g = torch.Generator().manual_seed(0)
    old = (-torch.rand(2 * G, T, generator=g) * 3).to(dtype)
    shift = torch.tensor([5.0, -5.0]).repeat(G)[:, None].expand(2 * G, T)
    theta = (old.float() + shift).to(dtype).requires_grad_()
    mask, scores = torch.ones(2 * G, T, dtype=dtype), torch.randn(2 * G, generator=g).to(dtype)
    batch = lambda: LossBatch(theta, old, old, mask, 2, 0.05, scores=scores)
    paper, _ = p3o_loss(batch(), P3OConfig(dual_clip=None))
    paper_grad = grad_of(paper, theta)[0]
    assert not (torch.isfinite(paper) and torch.isfinite(paper_grad).all())
    loss, m = p3o_loss(batch(), P3OConfig())  # the default: dual clip 3
    grad = grad_of(loss, theta)[0]
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    kl = 0.05 * 200 * 2
    bound = 10 * (scores.float().abs().max() * 2 + kl) * 3
    assert loss.abs().item() <= bound
    # every term of a ratio e^200 is past a cap, whatever its sign; a ratio e^-200 has only a vanishing gradient
    assert grad[0::2].abs().max().item() == 0.0 and m["policy/clipfrac"].item() >= 0.5


@pytest.mark.parametrize("variant,reduction", VARIANTS)
def test_p3o_trust_region_gradient_is_importance_weighted_pairwise_pg(variant, reduction):
    # Inside the region both variants have grad = -1/2 Delta rho1 rho2 grad(D), D = logp(y1) - logp(y2).
    G, beta = 3, 0.2
    r = make_rollout(G=G, K=2, seed=5, spread=0.01)
    mask, lp = r["mask"], r["logprobs"].detach()
    s = lambda x: (x * mask).sum(-1)
    rho = torch.exp(s(lp) - s(r["old_logprobs"]))
    D, D_old = s(lp)[0::2] - s(lp)[1::2], s(r["old_logprobs"])[0::2] - s(r["old_logprobs"])[1::2]
    assert ((D - D_old).abs() < 0.2).all() and ((rho - 1).abs() < 0.2).all()
    assert (rho[0::2] * rho[1::2] > 0.1).all() and (rho[0::2] * rho[1::2] < 10).all()
    shaped = r["scores"] - beta * (s(lp) - s(r["ref_logprobs"]))
    delta = shaped[0::2] - shaped[1::2]
    coef = -0.5 * delta * rho[0::2] * rho[1::2] / (G if reduction == "pairs" else mask.sum())
    want = torch.empty_like(lp)
    want[0::2], want[1::2] = coef[:, None] * mask[0::2], -coef[:, None] * mask[1::2]  # grad D = +m1, -m2
    loss, m = p3o(r, beta, variant=variant, reduction=reduction)
    assert m["policy/clipfrac"].item() == 0.0
    assert torch.allclose(grad_of(loss, r["logprobs"])[0], want, atol=1e-13)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_p3o_k4_gradient_equals_rloo_at_theta_old(variant):
    # Per group, sum over pairs i<j of -1/2 Delta_ij (g_i - g_j) = -1/2 (K-1) sum_i A_i g_i (A = leave-one-out);
    # dividing by the G K(K-1)/2 pairs gives -(1/(G K)) sum_i A_i g_i: RLOO's mean over rows, constant exactly 1.
    G, K, beta = 2, 4, 0.1
    r = make_rollout(G=G, K=K, seed=3, spread=0.0)
    loss, m = p3o(r, beta, variant=variant, reduction="pairs")
    g_p3o = grad_of(loss, r["logprobs"])[0]
    adv = rloo_advantages(AdvantageInput(r["scores"], r["old_logprobs"], r["ref_logprobs"], r["mask"], K, beta), RLOOConfig())
    rl, _ = rloo_loss(LossBatch(**r, kl_coef=beta, advantages=adv["advantages"]), RLOOConfig())
    g_rloo = grad_of(rl, r["logprobs"])[0]
    assert g_rloo.abs().max() > 1e-3
    assert torch.allclose(g_p3o, g_rloo, atol=1e-13)
    # With reduction "tokens" the same gradient is scaled by n_pairs / N = (G K (K-1) / 2) / N.
    loss_t, _ = p3o(r, beta, variant=variant, reduction="tokens")
    scale = G * K * (K - 1) / 2 / r["mask"].sum()
    assert torch.allclose(grad_of(loss_t, r["logprobs"])[0], g_rloo * scale, atol=1e-13)


def shift_per_prompt(scores, K, seed=9):
    g = torch.Generator().manual_seed(seed)
    return scores + (10 * torch.randn(scores.shape[0] // K, generator=g, dtype=F64)).repeat_interleave(K)


@pytest.mark.parametrize("variant,reduction", VARIANTS)
@pytest.mark.parametrize("K", [2, 4])
def test_p3o_is_invariant_to_per_prompt_reward_shifts(variant, reduction, K):
    r = make_rollout(G=4, K=K, seed=21, spread=0.3)
    shifted = dict(r, scores=shift_per_prompt(r["scores"], K))
    loss, m = p3o(r, 0.1, variant=variant, reduction=reduction)
    loss2, _ = p3o(shifted, 0.1, variant=variant, reduction=reduction)
    assert 0.0 < m["policy/clipfrac"].item() < 1.0  # clipped terms included
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-12, abs=1e-13)
    assert torch.allclose(grad_of(loss, r["logprobs"])[0], grad_of(loss2, r["logprobs"])[0], atol=1e-12)


def test_rloo_invariant_but_ppo_with_a_critic_is_not():
    K = 2
    r = make_rollout(G=3, K=K, seed=4, spread=0.15)
    shifted = shift_per_prompt(r["scores"], K)
    inp = lambda s, **kw: AdvantageInput(s, r["old_logprobs"], r["ref_logprobs"], r["mask"], K, 0.1, **kw)
    a1 = rloo_advantages(inp(r["scores"]), RLOOConfig())["advantages"]
    a2 = rloo_advantages(inp(shifted), RLOOConfig())["advantages"]
    assert torch.allclose(a1, a2, atol=1e-12)
    grads = [grad_of(rloo_loss(LossBatch(**r, advantages=a), RLOOConfig())[0], r["logprobs"])[0] for a in (a1, a2)]
    assert torch.allclose(*grads, atol=1e-12)
    # PPO: the same fixed critic estimate V_old for both reward versions -> different advantages.
    values = torch.randn(r["mask"].shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    p1 = ppo_advantages(inp(r["scores"], values=values), PPOConfig())["advantages"]
    p2 = ppo_advantages(inp(shifted, values=values), PPOConfig())["advantages"]
    assert (p1 - p2).abs().max() > 0.1


# ---------------------------------------------------------------- PPO


def test_ppo_advantages_hand_values():
    # beta 0.5, gamma 1, lam 1. Row 0 (2 tokens): old - ref = [0.2, -0.2] -> KL rewards [-0.1, 0.1], +1 score
    # on token 1 -> r = [-0.1, 1.1]; V = [0.5, 0.3]: delta = [-0.1 + 0.3 - 0.5, 1.1 - 0.3] = [-0.3, 0.8],
    # A = [0.5, 0.8], R = A + V = [1.0, 1.1]. Row 1 (1 token): old - ref = 0.4 -> r = -0.2 + 2 = 1.8; V = 1:
    # A = 0.8, R = 1.8. Whitening [0.5, 0.8, 0.8]: mean 0.7, unbiased var (0.04 + 0.01 + 0.01) / 2 = 0.03.
    old = torch.tensor([[-1.0, -1.0], [-1.0, -7.0]], dtype=F64)
    ref = torch.tensor([[-1.2, -0.8], [-1.4, 3.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.3], [1.0, 42.0]], dtype=F64)
    inp = AdvantageInput(torch.tensor([1.0, 2.0], dtype=F64), old, ref, mask, 2, 0.5, values=values)
    out = ppo_advantages(inp, PPOConfig(gamma=1.0, gae_lambda=1.0))
    sd = math.sqrt(0.03 + 1e-8)
    want_a = torch.tensor([[-0.2 / sd, 0.1 / sd], [0.1 / sd, 0.0]], dtype=F64)
    assert torch.allclose(out["advantages"], want_a, atol=1e-12)
    assert torch.allclose(out["returns"], torch.tensor([[1.0, 1.1], [1.8, 0.0]], dtype=F64), atol=1e-12)
    assert out["kl/k1_seq"].item() == pytest.approx(0.2)  # mean(0.2 - 0.2, 0.4)


def test_ppo_loss_hand_values():
    # Token 0: A = 1, rho = 1.5 > 1.2 -> max(-1.5, -1.2) = -1.2, clipped, no grad.
    # Token 1: A = -1, rho = 1.5 -> max(1.5, 1.2) = 1.5, grad -A rho = 1.5. Token 2 is a pad (garbage).
    # L_pg = (-1.2 + 1.5) / 2 = 0.15; dL_pg/dlogp = [0, 0.75, 0].
    # Token 0: V = 1, V_old = 0.5 -> V_clip = 0.7, R = 2: max(1, 1.69) = 1.69, clipped, no grad.
    # Token 1: V = 0.05, V_old = 0.1 -> V_clip = V, R = 1: 0.9025; grad 0.5 * 2 (V - R) / 2 = -0.475.
    # L_vf = 0.5 * (1.69 + 0.9025) / 2 = 0.648125; L = 0.15 + 2 * 0.648125 = 1.44625 (vf_coef 2).
    old = torch.zeros(1, 3, dtype=F64)
    theta = torch.full((1, 3), math.log(1.5), dtype=F64).requires_grad_()
    V = torch.tensor([[1.0, 0.05, 9.0]], dtype=F64, requires_grad=True)
    b = LossBatch(
        theta, old, old, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64), 1,
        advantages=torch.tensor([[1.0, -1.0, 5.0]], dtype=F64), returns=torch.tensor([[2.0, 1.0, 3.0]], dtype=F64),
        values=V, old_values=torch.tensor([[0.5, 0.1, 0.0]], dtype=F64),
    )
    loss, m = ppo_loss(b, PPOConfig(eps=0.2, eps_v=0.2, vf_coef=2.0))
    assert loss.item() == pytest.approx(1.44625, rel=1e-12)
    assert m["loss/policy"].item() == pytest.approx(0.15) and m["loss/value"].item() == pytest.approx(0.648125)
    g_theta, g_v = grad_of(loss, theta, V)
    assert g_theta.flatten().tolist() == pytest.approx([0.0, 0.75, 0.0])
    assert g_v.flatten().tolist() == pytest.approx([0.0, 2 * -0.475, 0.0])
    assert m["policy/clipfrac"].item() == 0.5 and m["value/clipfrac"].item() == 0.5


def ppo_reference(r, A, R, V, V_old, cfg):
    lp, old, mask = r["logprobs"], r["old_logprobs"], r["mask"]
    pg, vf, n = 0.0, 0.0, 0
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if mask[b, t] == 0:
                continue
            rho = torch.exp(lp[b, t] - old[b, t])
            pg = pg + max(-A[b, t] * rho, -A[b, t] * torch.clamp(rho, 1 - cfg.eps, 1 + cfg.eps))
            vc = torch.clamp(V[b, t], V_old[b, t] - cfg.eps_v, V_old[b, t] + cfg.eps_v)
            vf = vf + max((V[b, t] - R[b, t]) ** 2, (vc - R[b, t]) ** 2)
            n += 1
    return pg / n + cfg.vf_coef * 0.5 * vf / n


def test_ppo_loss_matches_slow_reference_with_grads():
    r = make_rollout(G=3, K=2, seed=8, spread=0.3)
    g = torch.Generator().manual_seed(2)
    shape = r["mask"].shape
    A, R, V_old = (torch.randn(shape, generator=g, dtype=F64) for _ in range(3))
    V = (V_old + 0.3 * torch.randn(shape, generator=g, dtype=F64)).requires_grad_()
    cfg = PPOConfig(vf_coef=0.7)
    loss, m = ppo_loss(LossBatch(**r, advantages=A, returns=R, values=V, old_values=V_old), cfg)
    ref = ppo_reference(r, A, R, V, V_old, cfg)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, b in zip(grad_of(loss, r["logprobs"], V), grad_of(ref, r["logprobs"], V)):
        assert torch.allclose(a, b, atol=1e-13)
    assert 0 < m["policy/clipfrac"].item() < 1 and 0 < m["value/clipfrac"].item() < 1


# ---------------------------------------------------------------- RLOO and GRPO


def test_rloo_loss_matches_slow_reference_with_grads():
    r = make_rollout(G=2, K=3, seed=13, spread=0.2)
    A = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=F64)
    eps = 0.2
    loss, m = rloo_loss(LossBatch(**r, advantages=A), RLOOConfig(eps=eps))
    ref = 0.0
    for b in range(6):
        rho = torch.exp(seq(r["logprobs"], r["mask"], b) - seq(r["old_logprobs"], r["mask"], b))
        ref = ref + max(-A[b] * rho, -A[b] * torch.clamp(rho, 1 - eps, 1 + eps))
    ref = ref / 6
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, r["logprobs"])[0], grad_of(ref, r["logprobs"])[0], atol=1e-13)
    assert 0 < m["policy/clipfrac"].item() < 1


def test_rloo_token_mean_ratio_is_the_geometric_mean_of_the_token_ratios():
    r = make_rollout(G=2, K=3, seed=13, spread=0.2)
    A = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=F64)
    eps = 0.05
    loss, m = rloo_loss(LossBatch(**r, advantages=A), RLOOConfig(eps=eps, ratio="token_mean"))
    ref = 0.0
    for b in range(6):
        n = r["mask"][b].sum()
        rho = torch.exp((seq(r["logprobs"], r["mask"], b) - seq(r["old_logprobs"], r["mask"], b)) / n)
        ref = ref + max(-A[b] * rho, -A[b] * torch.clamp(rho, 1 - eps, 1 + eps))
    ref = ref / 6
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, r["logprobs"])[0], grad_of(ref, r["logprobs"])[0], atol=1e-13)
    sequence, _ = rloo_loss(LossBatch(**r, advantages=A), RLOOConfig(eps=eps))
    assert abs(sequence.item() - loss.item()) > 1e-6  # not the sequence ratio
    with pytest.raises(ValueError, match="unknown ratio 'tokens'"):
        rloo_loss(LossBatch(**r, advantages=A), RLOOConfig(ratio="tokens"))


def test_rloo_advantages_hand_values():
    # beta 0.5, ref 0, seq k1 = [1, 0, 2, 0] (row 3's 5.0 is a pad), s = [3, 1, 4, 0.5]
    # -> r = s - 0.5 k1 = [2.5, 1.0, 3.0, 0.5]; one group of 4, A_i = r_i - mean of the other three:
    # [2.5 - 4.5/3, 1 - 6/3, 3 - 4/3, 0.5 - 6.5/3] = [1, -1, 5/3, -5/3]
    old = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 5.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=F64)
    inp = AdvantageInput(torch.tensor([3.0, 1.0, 4.0, 0.5], dtype=F64), old, torch.zeros_like(old), mask, 4, 0.5)
    out = rloo_advantages(inp, RLOOConfig())
    assert out["advantages"].tolist() == pytest.approx([1.0, -1.0, 3 - 4 / 3, 0.5 - 6.5 / 3])
    assert out["kl/k1_seq"].item() == pytest.approx(0.75)


def test_grpo_advantages_k2_sign_over_sqrt2():
    old = torch.zeros(4, 2, dtype=F64)
    inp = AdvantageInput(torch.tensor([3.0, -1.0, 0.0, 20.0], dtype=F64), old, old, torch.ones(4, 2, dtype=F64), 2, 0.1)
    a = grpo_advantages(inp, GRPOConfig(std_eps=0.0))["advantages"]
    s = 1 / math.sqrt(2)
    assert a.tolist() == pytest.approx([s, -s, -s, s], rel=1e-12)


def test_grpo_loss_matches_slow_reference_with_grads():
    r = make_rollout(G=2, K=3, seed=17, spread=0.3)
    A = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=F64)
    eps, beta = 0.2, 0.04
    loss, m = grpo_loss(LossBatch(**r, kl_coef=beta, advantages=A), GRPOConfig(eps=eps))
    lp, old, refl, mask = r["logprobs"], r["old_logprobs"], r["ref_logprobs"], r["mask"]
    ref, kl = 0.0, 0.0
    for b in range(6):
        row, n = 0.0, 0
        for t in range(lp.shape[1]):
            if mask[b, t] == 0:
                continue
            rho = torch.exp(lp[b, t] - old[b, t])
            ratio_ref = torch.exp(refl[b, t] - lp[b, t])  # pi_ref / pi_theta, DeepSeekMath's form of k3
            k3 = ratio_ref - torch.log(ratio_ref) - 1
            row = row + max(-A[b] * rho, -A[b] * torch.clamp(rho, 1 - eps, 1 + eps)) + beta * k3
            kl += k3.item()
            n += 1
        ref = ref + row / n
    ref = ref / 6
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_of(loss, lp)[0], grad_of(ref, lp)[0], atol=1e-13)
    assert m["kl/k3_seq"].item() == pytest.approx(kl / 6, rel=1e-12)
    assert 0 < m["policy/clipfrac"].item() < 1


# ---------------------------------------------------------------- registry and metrics


def test_registry_contents():
    assert set(ALGORITHMS) == {"p3o", "ppo", "rloo", "grpo", "gspo", "apa", "awr"}
    flags = {n: (a.needs_critic, a.kl_estimator, a.adaptive_kl, a.kl_coef, a.strength, a.offline, a.min_group)
             for n, a in ALGORITHMS.items()}
    assert flags == {
        "p3o": (False, "k1", False, "beta", "beta", False, 2),
        "ppo": (True, "k1", True, "beta", "beta", False, 1),
        "rloo": (False, "k1", False, "beta", "beta", False, 2),
        "grpo": (False, "k3", False, "beta", "beta", False, 2),
        "gspo": (False, "k3", False, "beta", "beta", False, 2),
        "apa": (True, "k1", False, "beta", "temperature", True, 1),
        "awr": (True, "k1", False, None, "inv_lam", True, 1),
    }
    # the fields each row names exist in that algorithm's config
    for name, algo in ALGORITHMS.items():
        acfg = TrainConfig(algo=name).algo_config()
        assert hasattr(acfg, algo.strength), name
        assert algo.kl_coef is None or hasattr(acfg, algo.kl_coef), name
    assert get_algorithm("p3o").loss is p3o_loss
    with pytest.raises(ValueError, match="apa, awr, grpo, gspo, p3o, ppo, rloo"):
        get_algorithm("dpo-ish")


@pytest.mark.parametrize("name,cfg", [("p3o", P3OConfig()), ("ppo", PPOConfig()), ("rloo", RLOOConfig()), ("grpo", GRPOConfig())])
def test_every_algorithm_end_to_end_metrics_are_detached_scalars(name, cfg):
    algo = get_algorithm(name)
    r = make_rollout(G=2, K=2, seed=1, spread=0.1)
    values = torch.randn(r["mask"].shape, dtype=F64) if algo.needs_critic else None
    inp = AdvantageInput(r["scores"], r["old_logprobs"], r["ref_logprobs"], r["mask"], 2, 0.05, values=values)
    adv = algo.advantages(inp, cfg)
    assert "kl/k1_seq" in adv and f"kl/{algo.kl_estimator}_seq" in adv
    batch = LossBatch(
        **r, kl_coef=0.05, advantages=adv.get("advantages"), returns=adv.get("returns"),
        values=None if values is None else (values + 0.1).requires_grad_(), old_values=values,
    )
    loss, metrics = algo.loss(batch, cfg)
    assert loss.ndim == 0 and loss.requires_grad
    assert f"kl/{algo.kl_estimator}_seq" in metrics and "loss/policy" in metrics
    for key, v in metrics.items():
        assert key.split("/")[0] in {"loss", "policy", "value", "kl", "reward"}
        assert v.ndim == 0 and not v.requires_grad and torch.isfinite(v), key
