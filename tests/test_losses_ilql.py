"""ILQL: each term by hand, the whole loss and its gradients against a slow per-token loop, no gradient
through the targets or the bootstrap, the expectile, Polyak averaging, padding, decoding logits."""

import math

import pytest
import torch
from torch import nn

from rlcf.config import ILQLConfig
from rlcf.losses.ilql import expectile_loss, ilql_decode_logits, ilql_loss, polyak_update

F64 = torch.float64
LN2, LN3, LN5 = math.log(2.0), math.log(3.0), math.log(5.0)


def t(rows, **kw):
    return torch.tensor(rows, dtype=F64, **kw)


# ---------------------------------------------------------------- each term by hand (B=1, T=2, V=3)

# Both tokens real; actions a_0 = 2, a_1 = 0; reward 1 on the last token. gamma 0.5, tau 0.75.
# vs: V(s_0) = 0.5, V(s_1) = 1.0, V(s_2) = 7.0 (terminal, must never be bootstrapped).
# Target Q heads: -5 off the taken action, so a min over the vocabulary (a bug) would show.
HAND_CFG = ILQLConfig(gamma=0.5, tau=0.75)  # cql_scale 0.1, awac_scale 1.0


def hand_inputs():
    lm = t([[[0.0, 0.0, 0.0], [0.0, LN2, LN5]]], requires_grad=True)
    q1 = t([[[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]], requires_grad=True)
    q2 = t([[[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]]], requires_grad=True)
    tq1 = t([[[-5.0, -5.0, 1.5], [0.2, -5.0, -5.0]]])
    tq2 = t([[[-5.0, -5.0, 0.9], [0.6, -5.0, -5.0]]])
    vs = t([[0.5, 1.0, 7.0]], requires_grad=True)
    actions = torch.tensor([[2, 0]])
    mask = t([[1.0, 1.0]])
    rewards = t([[0.0, 1.0]])
    return lm, (q1, q2), (tq1, tq2), vs, actions, mask, rewards


# TD targets: y_0 = 0 + 0.5 * V(s_1) = 0.5;  y_1 = 1 + 0 (last token: V(s_2) = 7 is not bootstrapped) = 1
# Q1(s,a) = 1, 2 -> (1 - 0.5)^2 + (2 - 1)^2 = 1.25;  Q2(s,a) = 0.5, 0 -> 0^2 + (0 - 1)^2 = 1
# L_q = (1.25 + 1) / N = 2.25 / 2 = 1.125   (sum over heads of each head's mean over N = 2 tokens)
HAND_Q = 1.125
# min target Q at the taken actions: min(1.5, 0.9) = 0.9, min(0.2, 0.6) = 0.2
# u = 0.9 - 0.5 = 0.4 (>= 0, weight tau 0.75): 0.75 * 0.16 = 0.12
# u = 0.2 - 1.0 = -0.8 (< 0, weight 0.25):      0.25 * 0.64 = 0.16;  L_v = 0.28 / 2 = 0.14
HAND_V = 0.14
# CQL, CE of each Q head's row as logits at the taken action:
#   Q1: log(1 + 1 + e) - 1,  log(e^2 + 1 + 1) - 2;  Q2: log(1 + 1 + e^0.5) - 0.5,  log 3
HAND_CQL = (math.log(2 + math.e) - 1 + math.log(math.exp(2) + 2) - 2 + math.log(2 + math.exp(0.5)) - 0.5 + LN3) / 2
# BC: logits [0, 0, 0] at a = 2: log 3;  [0, ln 2, ln 5] at a = 0: log(1 + 2 + 5) - 0 = log 8
HAND_AWAC = (LN3 + math.log(8.0)) / 2


def test_each_term_by_hand():
    lm, qs, tqs, vs, actions, mask, rewards = hand_inputs()
    loss, m = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, HAND_CFG)
    assert m["loss/q"].item() == pytest.approx(HAND_Q, rel=1e-12)
    assert m["loss/v"].item() == pytest.approx(HAND_V, rel=1e-12)
    assert m["loss/cql"].item() == pytest.approx(HAND_CQL, rel=1e-12)
    assert m["loss/awac"].item() == pytest.approx(HAND_AWAC, rel=1e-12)
    total = HAND_Q + HAND_V + 0.1 * HAND_CQL + 1.0 * HAND_AWAC
    assert loss.item() == pytest.approx(total, rel=1e-12)
    assert m["loss/total"].item() == pytest.approx(total, rel=1e-12)
    # q_mean = (1 + 2 + 0.5 + 0) / 4;  v_mean = (0.5 + 1) / 2;  adv_mean = (0.4 - 0.8) / 2
    assert m["ilql/q_mean"].item() == pytest.approx(0.875, rel=1e-12)
    assert m["ilql/v_mean"].item() == pytest.approx(0.75, rel=1e-12)
    assert m["ilql/adv_mean"].item() == pytest.approx(-0.2, rel=1e-12)
    assert set(m) == {"loss/q", "loss/v", "loss/cql", "loss/awac", "loss/total",
                      "ilql/q_mean", "ilql/v_mean", "ilql/adv_mean"}
    for v in m.values():
        assert v.ndim == 0 and not v.requires_grad

    # V gets gradient from L_v only: dL/dV(s_t) = -2 w_t u_t / N = -2 * 0.75 * 0.4 / 2 = -0.3 and
    # -2 * 0.25 * (-0.8) / 2 = 0.2; the terminal state gets 0. (Through a non-detached bootstrap V(s_1)
    # would also get -2 gamma sum_i (Q_i(s_0, a_0) - y_0) / N = -0.25.)
    (g_v,) = torch.autograd.grad(loss, vs)
    assert torch.allclose(g_v, t([[-0.3, 0.2, 0.0]]), atol=1e-14)


def test_td_and_scale_gradients_by_hand():
    lm, qs, tqs, vs, actions, mask, rewards = hand_inputs()
    loss, _ = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, ILQLConfig(gamma=0.5, tau=0.75, cql_scale=0.0))
    g_q1, g_q2 = torch.autograd.grad(loss, qs)
    # TD only: dL/dQ_i(s_t, a_t) = 2 (Q_i - y_t) / N: Q1 -> 0.5, 1.0;  Q2 -> 0, -1.0;  0 off the taken action
    assert torch.allclose(g_q1, t([[[0.0, 0.0, 0.5], [1.0, 0.0, 0.0]]]), atol=1e-14)
    assert torch.allclose(g_q2, t([[[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]]), atol=1e-14)

    # The scales multiply exactly the CQL and BC terms.
    lm, qs, tqs, vs, actions, mask, rewards = hand_inputs()
    loss, _ = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards,
                        ILQLConfig(gamma=0.5, tau=0.75, cql_scale=2.0, awac_scale=0.5))
    assert loss.item() == pytest.approx(HAND_Q + HAND_V + 2.0 * HAND_CQL + 0.5 * HAND_AWAC, rel=1e-12)
    # BC gradient: (softmax - onehot) / N;  softmax([0, ln2, ln5]) = [1, 2, 5] / 8
    (g_lm,) = torch.autograd.grad(loss, lm)
    expected = 0.5 * t([[[1 / 3, 1 / 3, 1 / 3 - 1], [1 / 8 - 1, 2 / 8, 5 / 8]]]) / 2
    assert torch.allclose(g_lm, expected, atol=1e-14)


def test_gamma_discounts_the_bootstrap():
    lm, qs, tqs, vs, actions, mask, rewards = hand_inputs()
    # gamma 0.8: y_0 = 0.8 * V(s_1) = 0.8, y_1 = 1: Q1: 0.2^2 + 1 = 1.04;  Q2: 0.3^2 + 1 = 1.09 -> 2.13 / 2
    _, m = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, ILQLConfig(gamma=0.8, tau=0.75))
    assert m["loss/q"].item() == pytest.approx(1.065, rel=1e-12)
    # gamma 0: y_0 = 0: Q1: 1 + 1 = 2;  Q2: 0.25 + 1 = 1.25 -> 3.25 / 2
    _, m = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, ILQLConfig(gamma=0.0, tau=0.75))
    assert m["loss/q"].item() == pytest.approx(1.625, rel=1e-12)


# ---------------------------------------------------------------- against a slow per-token loop


def slow_ilql(lm, qs, tqs, vs, actions, lengths, rewards, cfg):
    """Plain loops over rows and real tokens; scalar torch ops so autograd gives the reference gradients."""
    n_tok = sum(lengths)
    lq, lv, lcql, lbc = [], [], [], []
    for b, n in enumerate(lengths):
        for i in range(n):
            a = int(actions[b, i])
            boot = vs[b, i + 1].detach() if i < n - 1 else 0.0  # last real token: no bootstrap
            y = float(rewards[b, i]) + cfg.gamma * boot
            for q in qs:
                lq.append((q[b, i, a] - y) ** 2)
                lcql.append(-torch.log_softmax(q[b, i], 0)[a])
            tq = min(float(x[b, i, a]) for x in tqs)  # a python float: no gradient by construction
            u = tq - vs[b, i]
            w = cfg.tau if float(u.detach()) >= 0 else 1.0 - cfg.tau
            lv.append(w * u**2)
            lbc.append(-torch.log_softmax(lm[b, i], 0)[a])
    loss_q, loss_v = sum(lq) / n_tok, sum(lv) / n_tok
    loss_cql, loss_awac = sum(lcql) / n_tok, sum(lbc) / n_tok
    total = loss_q + loss_v + cfg.cql_scale * loss_cql + cfg.awac_scale * loss_awac
    return total, (loss_q, loss_v, loss_cql, loss_awac)


B, T, V = 3, 5, 7
LENGTHS = [5, 4, 1]  # a full row, a row with all but one token, a single-token row


def random_inputs(seed, n_heads, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=F64)

    lm = rnd(B, T, V, scale=2.0).requires_grad_()
    qs = tuple(rnd(B, T, V).requires_grad_() for _ in range(n_heads))
    tqs = tuple(rnd(B, T, V) for _ in range(n_heads))
    vs = rnd(B, T + 1).requires_grad_()
    actions = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=F64)
    rewards = torch.zeros(B, T, dtype=F64)
    scores = rnd(B)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1.0
        rewards[b, n - 1] = scores[b]
    return lm, qs, tqs, vs, actions, mask, rewards


@pytest.mark.parametrize("two_qs", [True, False])
@pytest.mark.parametrize("seed,gamma,tau,cql,awac", [(0, 0.99, 0.7, 0.1, 1.0), (1, 0.9, 0.9, 0.5, 0.3),
                                                      (2, 1.0, 0.5, 0.0, 2.0)])
def test_matches_slow_loop_values_and_gradients(two_qs, seed, gamma, tau, cql, awac):
    cfg = ILQLConfig(gamma=gamma, tau=tau, cql_scale=cql, awac_scale=awac, two_qs=two_qs)
    lm, qs, tqs, vs, actions, mask, rewards = random_inputs(seed, 2 if two_qs else 1)
    loss, m = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, cfg)
    ref, (rq, rv, rcql, rbc) = slow_ilql(lm, qs, tqs, vs, actions, LENGTHS, rewards, cfg)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    for key, r in (("loss/q", rq), ("loss/v", rv), ("loss/cql", rcql), ("loss/awac", rbc)):
        assert m[key].item() == pytest.approx(r.item(), rel=1e-12), key
    wrt = (lm, *qs, vs)
    got = torch.autograd.grad(loss, wrt)
    want = torch.autograd.grad(ref, wrt)
    for gg, ww in zip(got, want):
        assert torch.allclose(gg, ww, rtol=1e-10, atol=1e-13)
    assert all(gg.abs().sum() > 0 for gg in got)


# ---------------------------------------------------------------- no gradient through targets / bootstrap


def test_target_qs_carry_no_gradient():
    lm, qs, tqs, vs, actions, mask, rewards = random_inputs(3, 2)
    tqs = tuple(x.clone().requires_grad_() for x in tqs)
    loss, _ = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, ILQLConfig())
    grads = torch.autograd.grad(loss, tqs, allow_unused=True)
    assert all(gr is None or torch.count_nonzero(gr) == 0 for gr in grads)


def test_td_term_sends_no_gradient_into_v_through_the_bootstrap():
    """With cql_scale = awac_scale = 0 and the target Qs built so that min_i targetQ_i(s_t, a_t) = V(s_t)
    exactly at every real token, L_v = 0 and its gradient 2 w u = 0, so the loss is L_q alone. L_q depends on
    V only through the detached bootstrap: dL/dV must be exactly 0 everywhere, while L_q itself is not 0."""
    cfg = ILQLConfig(cql_scale=0.0, awac_scale=0.0)
    lm, qs, tqs, vs, actions, mask, rewards = random_inputs(4, 2)
    tq1, tq2 = (x.clone() for x in tqs)
    idx = actions.unsqueeze(-1)
    tq1.scatter_(-1, idx, vs.detach()[:, :-1].unsqueeze(-1))
    tq2.scatter_(-1, idx, vs.detach()[:, :-1].unsqueeze(-1) + 1.0)
    loss, m = ilql_loss(lm, qs, (tq1, tq2), vs, actions, mask, rewards, cfg)
    assert m["loss/v"].item() == 0.0 and m["loss/q"].item() > 0.1
    (g_v,) = torch.autograd.grad(loss, vs)
    assert torch.count_nonzero(g_v) == 0
    # Not vacuous: moving the targets off V gives V a gradient (through L_v) at every real state.
    loss, _ = ilql_loss(lm, qs, (tq1 + 0.3, tq2 + 0.3), vs, actions, mask, rewards, cfg)
    (g_v,) = torch.autograd.grad(loss, vs)
    assert torch.equal(g_v[:, :-1] != 0, mask > 0)


def test_terminal_state_value_is_never_bootstrapped():
    lm, qs, tqs, vs, actions, mask, rewards = random_inputs(5, 2)
    cfg = ILQLConfig()
    loss, _ = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, cfg)
    moved = vs.detach().clone()
    for b, n in enumerate(LENGTHS):
        moved[b, n] = float("nan") if b == 0 else 1e6  # the state after each row's last real token
    moved.requires_grad_()
    loss2, _ = ilql_loss(lm, qs, tqs, moved, actions, mask, rewards, cfg)
    assert loss2.item() == loss.item()
    (g,) = torch.autograd.grad(loss2, moved)
    assert torch.isfinite(g).all()
    assert all(g[b, n] == 0 for b, n in enumerate(LENGTHS))


# ---------------------------------------------------------------- expectile


def test_expectile_loss():
    u = t([-2.0, -0.5, 0.0, 0.5, 3.0])
    assert torch.allclose(expectile_loss(u, 0.5), 0.5 * u.square(), rtol=1e-15)
    assert torch.allclose(expectile_loss(u, 0.9), t([0.1 * 4.0, 0.1 * 0.25, 0.0, 0.9 * 0.25, 0.9 * 9.0]), rtol=1e-12)
    assert torch.allclose(expectile_loss(u, 0.7), t([0.3 * 4.0, 0.3 * 0.25, 0.0, 0.7 * 0.25, 0.7 * 9.0]), rtol=1e-12)
    assert expectile_loss(u, 0.9).dtype == F64


def test_expectile_minimiser_is_the_tau_expectile():
    """V minimising mean |tau - 1[x - V < 0]| (x - V)^2 over samples x is their tau-expectile: the point where
    tau * sum_{x > V} (x - V) = (1 - tau) * sum_{x < V} (V - x); for tau > 0.5 it sits above the mean."""
    x = t([0.0, 1.0, 2.0, 10.0])
    v = torch.zeros((), dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1, max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = expectile_loss(x - v, 0.9).mean()
        loss.backward()
        return loss

    opt.step(closure)
    vv = v.item()
    assert 0.9 * (x[x > vv] - vv).sum().item() == pytest.approx(0.1 * (vv - x[x < vv]).sum().item(), rel=1e-8)
    assert vv > x.mean().item()


# ---------------------------------------------------------------- Polyak


def two_heads():
    torch.manual_seed(0)
    src, tgt = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    for p in tgt.parameters():
        p.requires_grad_(False)
    return src, tgt


def test_polyak_update():
    src, tgt = two_heads()
    s0 = [p.detach().clone() for p in src.parameters()]
    t0 = [p.detach().clone() for p in tgt.parameters()]
    polyak_update(tgt, src, 0.25)
    for p, s, o in zip(tgt.parameters(), s0, t0):
        assert torch.allclose(p, 0.25 * s + 0.75 * o, rtol=1e-15, atol=1e-16)
        assert not torch.allclose(p, s) and not torch.allclose(p, o)
    assert all(torch.equal(p, s) for p, s in zip(src.parameters(), s0))  # source untouched

    src, tgt = two_heads()
    t0 = [p.detach().clone() for p in tgt.parameters()]
    polyak_update(tgt, src, 0.0)
    assert all(torch.equal(p, o) for p, o in zip(tgt.parameters(), t0))
    polyak_update(tgt, src, 1.0)
    assert all(torch.equal(p, s) for p, s in zip(tgt.parameters(), src.parameters()))


def test_polyak_update_works_on_trainable_params_without_building_a_graph():
    src, tgt = two_heads()
    for p in tgt.parameters():
        p.requires_grad_(True)
    polyak_update(tgt, src, 0.5)
    assert all(p.is_leaf and p.grad_fn is None for p in tgt.parameters())


def test_polyak_update_rejects_bad_input():
    src, tgt = two_heads()
    with pytest.raises(ValueError, match="alpha"):
        polyak_update(tgt, src, 1.5)
    with pytest.raises(ValueError, match="shape"):
        polyak_update(nn.Linear(3, 4).double(), src, 0.1)
    with pytest.raises(ValueError, match="parameters"):
        polyak_update(nn.Linear(3, 2, bias=False).double(), src, 0.1)


# ---------------------------------------------------------------- padding


def test_padding_does_not_change_the_loss():
    cfg = ILQLConfig(cql_scale=0.3)
    lm, qs, tqs, vs, actions, mask, rewards = random_inputs(6, 2)
    loss, m = ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, cfg)
    wrt = (lm, *qs, vs)
    grads = torch.autograd.grad(loss, wrt)

    pad = mask == 0
    g = torch.Generator().manual_seed(99)
    lm2 = torch.where(pad.unsqueeze(-1), 1e3 * torch.randn(B, T, V, generator=g, dtype=F64), lm.detach())
    qs2 = tuple(torch.where(pad.unsqueeze(-1), -1e3 * torch.rand(B, T, V, generator=g, dtype=F64), q.detach())
                for q in qs)
    tqs2 = tuple(torch.where(pad.unsqueeze(-1), 1e3 * torch.randn(B, T, V, generator=g, dtype=F64), q) for q in tqs)
    vs_pad = torch.zeros(B, T + 1, dtype=torch.bool)
    vs_pad[:, :T] = pad
    vs_pad[:, 1:] |= pad  # every state after the last real token, terminal included
    vs2 = torch.where(vs_pad, float("inf"), vs.detach())
    vs2[1, -1] = float("nan")
    actions2 = torch.where(pad, torch.tensor(-100), actions)  # an ignore-index style id, out of range
    actions2[2, -1] = V + 5
    rewards2 = torch.where(pad, float("nan"), rewards)
    wrt2 = tuple(x.requires_grad_() for x in (lm2, *qs2, vs2))
    loss2, m2 = ilql_loss(wrt2[0], wrt2[1:3], tqs2, wrt2[3], actions2, mask, rewards2, cfg)

    assert loss2.item() == pytest.approx(loss.item(), rel=1e-14)
    for key in m:
        assert m2[key].item() == pytest.approx(m[key].item(), rel=1e-14, abs=1e-15), key
    grads2 = torch.autograd.grad(loss2, wrt2)
    for gr, gr2 in zip(grads, grads2):
        assert torch.isfinite(gr2).all()
        assert torch.allclose(gr2, gr, rtol=1e-12, atol=1e-15)
    # Pads get exactly zero gradient.
    assert torch.count_nonzero(grads2[0][pad]) == 0 and torch.count_nonzero(grads2[3][vs_pad]) == 0


def test_all_padding_batch_is_zero_and_finite():
    lm, qs, tqs, vs, actions, _, rewards = random_inputs(7, 2)
    loss, m = ilql_loss(lm, qs, tqs, vs, actions, torch.zeros(B, T), rewards, ILQLConfig())
    assert loss.item() == 0.0 and all(torch.isfinite(v) for v in m.values())


# ---------------------------------------------------------------- config, checks, decoding


def test_defaults_are_trlx_default_ilql_config():
    c = ILQLConfig()
    assert (c.tau, c.gamma, c.cql_scale, c.awac_scale, c.alpha, c.steps_for_target_q_sync, c.two_qs, c.beta) == (
        0.7, 0.99, 0.1, 1.0, 0.001, 5, True, 1.0)


def test_rejects_inconsistent_inputs():
    lm, qs, tqs, vs, actions, mask, rewards = random_inputs(8, 2)
    with pytest.raises(ValueError, match="two_qs"):
        ilql_loss(lm, qs[:1], tqs[:1], vs, actions, mask, rewards, ILQLConfig())
    with pytest.raises(ValueError, match="two_qs"):
        ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, ILQLConfig(two_qs=False))
    with pytest.raises(ValueError, match="vs"):
        ilql_loss(lm, qs, tqs, vs[:, :-1], actions, mask, rewards, ILQLConfig())
    with pytest.raises(ValueError, match="target_qs"):
        ilql_loss(lm, qs, (tqs[0], tqs[1][:, :, :-1]), vs, actions, mask, rewards, ILQLConfig())
    with pytest.raises(ValueError, match="mask"):
        ilql_loss(lm, qs, tqs, vs, actions, mask[:, :-1], rewards, ILQLConfig())
    with pytest.raises(ValueError, match="tau"):
        ilql_loss(lm, qs, tqs, vs, actions, mask, rewards, ILQLConfig(tau=1.5))


def test_decode_logits():
    logits = t([[0.0, 1.0, 2.0]])
    tq1, tq2 = t([[1.0, 0.0, 3.0]]), t([[2.0, -1.0, 0.5]])
    v = t([0.5])
    # min target Q = [1, -1, 0.5];  minus V = [0.5, -1.5, 0];  logits + 2 * that = [1, -2, 2]
    out = ilql_decode_logits(logits, (tq1, tq2), v, beta=2.0)
    assert torch.allclose(out, t([[1.0, -2.0, 2.0]]), rtol=1e-15)
    assert torch.equal(ilql_decode_logits(logits, (tq1, tq2), v, beta=0.0), logits)
    # trlX adds the advantage to log_softmax(logits): the same distribution.
    trlx = torch.log_softmax(logits, -1) + 2.0 * (torch.minimum(tq1, tq2) - v.unsqueeze(-1))
    assert torch.allclose(torch.softmax(out, -1), torch.softmax(trlx, -1), rtol=1e-14)
    assert not ilql_decode_logits(logits.requires_grad_(), (tq1, tq2), v, 1.0).requires_grad
