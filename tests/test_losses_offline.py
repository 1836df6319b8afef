"""Offline baselines: DPO, SFT, Bradley-Terry reward model and the last-real-token score read-out."""

import math

import pytest
import torch

from rlcf.losses.dpo import dpo_loss
from rlcf.losses.reward import bradley_terry_loss, last_token_scores
from rlcf.losses.sft import sft_loss

F64 = torch.float64


def t(x, grad=False):
    return torch.tensor(x, dtype=F64, requires_grad=grad)


def softplus(x):  # -log sigmoid(z) = softplus(-z) = log(1 + e^-z)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- DPO


def dpo_hand_batch():
    """B = 2 pairs, beta = 0.5; pads hold garbage that the masks must hide.

    pair 0: chosen logp -1-2 = -3, ref -1.5-2.5 = -4, Dw = +1; rejected -1-1-1 = -3, ref -1-1-0.5 = -2.5, Dl = -0.5
            z0 = 0.5 * (1 - (-0.5)) = 0.75
    pair 1: chosen logp -2, ref -1, Dw = -1; rejected -1-1 = -2, ref -1.5-1.5 = -3, Dl = +1
            z1 = 0.5 * (-1 - 1) = -1
    """
    return dict(
        logprobs_chosen=t([[-1.0, -2.0, -9.0], [-2.0, 7.0, 7.0]], grad=True),
        logprobs_rejected=t([[-1.0, -1.0, -1.0], [-1.0, -1.0, 4.0]], grad=True),
        ref_chosen=t([[-1.5, -2.5, -7.0], [-1.0, 5.0, 5.0]]),
        ref_rejected=t([[-1.0, -1.0, -0.5], [-1.5, -1.5, 3.0]]),
        mask_chosen=t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        mask_rejected=t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
    )


def test_dpo_hand_values_and_metrics():
    b = dpo_hand_batch()
    loss, m = dpo_loss(**b, beta=0.5)
    z0, z1 = 0.75, -1.0
    # loss = mean of log(1 + e^-z) over the two pairs
    assert loss.item() == pytest.approx((softplus(-z0) + softplus(-z1)) / 2, rel=1e-12)
    assert m["loss/dpo"].item() == pytest.approx(loss.item(), rel=1e-12)
    assert m["reward/chosen"].item() == pytest.approx(0.0, abs=1e-12)  # 0.5 * (+1 + -1) / 2
    assert m["reward/rejected"].item() == pytest.approx(0.125, rel=1e-12)  # 0.5 * (-0.5 + 1) / 2
    assert m["reward/margin"].item() == pytest.approx(-0.125, rel=1e-12)  # (0.75 - 1) / 2
    assert m["reward/accuracy"].item() == 0.5  # only pair 0 has z > 0


def test_dpo_gradients_match_analytic():
    b = dpo_hand_batch()
    beta, B = 0.5, 2
    loss, _ = dpo_loss(**b, beta=beta)
    g_w, g_l = torch.autograd.grad(loss, (b["logprobs_chosen"], b["logprobs_rejected"]))
    # dL/dlogp_w,t = -beta (1 - sigmoid(z_b)) m_t / B, rejected tokens the opposite sign; pads get 0
    coef = t([beta * (1 - sigmoid(0.75)) / B, beta * (1 - sigmoid(-1.0)) / B])[:, None]
    torch.testing.assert_close(g_w, -coef * b["mask_chosen"])
    torch.testing.assert_close(g_l, coef * b["mask_rejected"])


def test_dpo_reference_gets_no_gradient():
    b = dpo_hand_batch()
    b["ref_chosen"].requires_grad_()
    loss, _ = dpo_loss(**b)
    (g,) = torch.autograd.grad(loss, (b["ref_chosen"],), allow_unused=True)
    assert g is None


def slow_dpo(lw, ll, rw, rl, mw, ml, beta):
    """Per-pair python loop, token by token."""
    total = 0.0
    for i in range(lw.shape[0]):
        seq_w = sum(float(lw[i, k] - rw[i, k]) for k in range(lw.shape[1]) if mw[i, k] > 0)
        seq_l = sum(float(ll[i, k] - rl[i, k]) for k in range(ll.shape[1]) if ml[i, k] > 0)
        total += -math.log(sigmoid(beta * (seq_w - seq_l)))
    return total / lw.shape[0]


def test_dpo_matches_slow_loop():
    g = torch.Generator().manual_seed(0)
    B, Tw, Tl = 5, 4, 6  # chosen and rejected may have different lengths

    def ragged(T):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        return (torch.arange(T)[None, :] < lengths[:, None]).to(F64)

    mw, ml = ragged(Tw), ragged(Tl)
    mw[0] = t([1.0, 0.0, 1.0, 0.0])  # a hole: only the mask decides, not a length
    lw, ll = -torch.rand(B, Tw, generator=g, dtype=F64) * 3, -torch.rand(B, Tl, generator=g, dtype=F64) * 3
    rw, rl = lw + torch.randn(B, Tw, generator=g, dtype=F64), ll + torch.randn(B, Tl, generator=g, dtype=F64)
    loss, _ = dpo_loss(lw, ll, rw, rl, mw, ml, beta=0.3)
    assert loss.item() == pytest.approx(slow_dpo(lw, ll, rw, rl, mw, ml, 0.3), rel=1e-12)


def test_dpo_policy_equal_reference_is_log2():
    b = dpo_hand_batch()
    loss, m = dpo_loss(b["ref_chosen"], b["ref_rejected"], b["ref_chosen"], b["ref_rejected"],
                       b["mask_chosen"], b["mask_rejected"])
    assert loss.item() == pytest.approx(math.log(2), rel=1e-12)
    assert m["reward/margin"].item() == 0.0
    assert m["reward/chosen"].item() == 0.0 and m["reward/rejected"].item() == 0.0
    assert m["reward/accuracy"].item() == 0.0  # z = 0 is not a win


def test_dpo_stable_for_large_margins():
    mask = torch.ones(1, 2, dtype=F64)
    zero = torch.zeros(1, 2, dtype=F64)
    big = torch.full((1, 2), -5000.0, dtype=F64)  # z = 0.1 * (0 - (-10000)) = +1000 or -1000
    loss_good, _ = dpo_loss(zero, big, zero, zero, mask, mask)
    loss_bad, _ = dpo_loss(big, zero, zero, zero, mask, mask)
    assert loss_good.item() == pytest.approx(0.0, abs=1e-12)
    assert loss_bad.item() == pytest.approx(1000.0, rel=1e-12)  # -log sigmoid(-1000) = 1000 + log(1 + e^-1000)


def test_dpo_rejects_mismatched_shapes():
    b = dpo_hand_batch()
    b["mask_chosen"] = b["mask_chosen"][:, :2]
    with pytest.raises(ValueError, match="dpo_loss"):
        dpo_loss(**b)


# ---------------------------------------------------------------- SFT


def test_sft_hand_values_and_gradient():
    # Position 0 of row 0 is prompt (mask 0), row 1 is padded after its first token.
    logprobs = t([[-1.0, -2.0, -3.0], [-4.0, -50.0, -60.0]], grad=True)
    mask = t([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, m = sft_loss(logprobs, mask)
    # N = 3 tokens, sum = -2 - 3 - 4 = -9, L = 3 (a per-sequence mean would give (2.5 + 4) / 2 = 3.25)
    assert loss.item() == pytest.approx(3.0, rel=1e-12)
    assert m["loss/sft"].item() == pytest.approx(3.0, rel=1e-12)
    assert m["loss/ppl"].item() == pytest.approx(math.exp(3.0), rel=1e-12)
    (g,) = torch.autograd.grad(loss, (logprobs,))
    torch.testing.assert_close(g, -mask / 3)  # dL/dlogp = -m / N


def test_sft_bool_mask_and_empty_mask():
    logprobs = t([[-1.0, -3.0]])
    loss, _ = sft_loss(logprobs, torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="no completion tokens"):
        sft_loss(logprobs, torch.zeros(1, 2, dtype=F64))


# ---------------------------------------------------------------- Bradley-Terry


def test_bt_hand_values_and_gradients():
    s_w, s_l = t([3.0, 0.0, 1.0], grad=True), t([1.0, 1.0, 1.0], grad=True)
    loss, m = bradley_terry_loss(s_w, s_l)
    # d = s_w - s_l = [2, -1, 0]; L = (log(1 + e^-2) + log(1 + e^1) + log 2) / 3
    assert loss.item() == pytest.approx((softplus(-2) + softplus(1) + math.log(2)) / 3, rel=1e-12)
    assert m["loss/reward_model"].item() == pytest.approx(loss.item(), rel=1e-12)
    assert m["reward/accuracy"].item() == pytest.approx(1 / 3, rel=1e-12)  # the tie counts as wrong
    assert m["reward/margin_mean"].item() == pytest.approx(1 / 3, rel=1e-12)  # (2 - 1 + 0) / 3
    g_w, g_l = torch.autograd.grad(loss, (s_w, s_l))
    expect = t([-(1 - sigmoid(d)) / 3 for d in (2.0, -1.0, 0.0)])  # dL/ds_w = -(1 - sigmoid(d)) / B
    torch.testing.assert_close(g_w, expect)
    torch.testing.assert_close(g_l, -expect)


def test_bt_margin():
    s_w, s_l = t([3.0, 0.0, 1.0], grad=True), t([1.0, 1.0, 1.0])
    margin = t([1.0, 0.0, 0.5])
    loss, m = bradley_terry_loss(s_w, s_l, margin)
    # d = [2 - 1, -1 - 0, 0 - 0.5] = [1, -1, -0.5]
    ds = (1.0, -1.0, -0.5)
    assert loss.item() == pytest.approx(sum(softplus(-d) for d in ds) / 3, rel=1e-12)
    (g,) = torch.autograd.grad(loss, (s_w,))
    torch.testing.assert_close(g, t([-(1 - sigmoid(d)) / 3 for d in ds]))
    # metrics are about the raw scores, not the margin-shifted gap
    assert m["reward/margin_mean"].item() == pytest.approx(1 / 3, rel=1e-12)
    assert m["reward/accuracy"].item() == pytest.approx(1 / 3, rel=1e-12)


def test_bt_symmetric_swap():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, generator=g, dtype=F64), torch.randn(7, generator=g, dtype=F64)  # no ties
    loss, m = bradley_terry_loss(a, b)
    loss_s, m_s = bradley_terry_loss(b, a)
    assert m_s["reward/margin_mean"].item() == pytest.approx(-m["reward/margin_mean"].item(), rel=1e-12)
    assert m_s["reward/accuracy"].item() == pytest.approx(1 - m["reward/accuracy"].item(), rel=1e-12)
    # softplus(d) - softplus(-d) = d, so the swapped loss is the loss plus the mean gap
    assert loss_s.item() == pytest.approx(loss.item() + (a - b).mean().item(), rel=1e-12)


# ---------------------------------------------------------------- last_token_scores


VALUES = torch.arange(15, dtype=F64).view(3, 5) + 100 * torch.arange(3, dtype=F64)[:, None]  # v[b, l] = 105b + l


@pytest.mark.parametrize(
    "mask, index",
    [
        # right padding; row 1 is full, so its real last token IS the final column
        ([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], [2, 4, 0]),
        # left padding: the last column for every row
        ([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], [4, 4, 4]),
        # left-padded prompt + right-padded response, and a hole: the largest 1 wins
        ([[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [1, 0, 1, 0, 0]], [3, 3, 2]),
    ],
)
def test_last_token_scores_paddings(mask, index):
    got = last_token_scores(VALUES, torch.tensor(mask))
    torch.testing.assert_close(got, VALUES[torch.arange(3), torch.tensor(index)])


def test_last_token_scores_pad_equals_eos():
    # pad == eos == 2: the first EOS is a real token (mask 1), the copies after it are padding (mask 0).
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 2], [5, 2, 2, 2, 2]])
    first_eos = (ids == 2).int().argmax(dim=-1)
    mask = (torch.arange(5)[None, :] <= first_eos[:, None]).long()
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    values = VALUES.clone().requires_grad_()
    got = last_token_scores(values, mask)
    torch.testing.assert_close(got, t([2.0, 109.0, 211.0]))  # the real EOS, not the last column (4, 109, 214)
    (g,) = torch.autograd.grad(got.sum(), (values,))
    expect = torch.zeros(3, 5, dtype=F64)
    expect[0, 2] = expect[1, 4] = expect[2, 1] = 1.0
    torch.testing.assert_close(g, expect)  # gradient reaches only the picked positions


def test_last_token_scores_bool_mask_and_errors():
    got = last_token_scores(VALUES, torch.tensor([[True, False, False, False, False]] * 3))
    torch.testing.assert_close(got, VALUES[:, 0])
    with pytest.raises(ValueError, match="no real token"):
        last_token_scores(VALUES, torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        last_token_scores(VALUES, torch.ones(3, 4))
