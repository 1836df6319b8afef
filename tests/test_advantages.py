import math

import pytest
import torch

from rlcf.advantages import (
    gae,
    group_normalize,
    kl_shaped_token_rewards,
    last_token_index,
    leave_one_out,
    masked_mean,
    masked_var,
    sequence_logprob,
    whiten,
)

F64 = torch.float64


def gae_reference_loop(rewards, values, mask, gamma, lam):
    """Plain python, one row at a time, over the row's real tokens only (right padding)."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = int(mask[b].sum().item())
        running = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            adv[b][t] = running
            ret[b][t] = running + values[b, t].item()
    return torch.tensor(adv, dtype=F64), torch.tensor(ret, dtype=F64)


def ragged_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(F64)


def test_masked_stats_and_whiten_hand_values():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=F64)
    # Masked values 1, 2, 3, 4: mean 2.5; unbiased var = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.5])
    assert masked_var(x, mask).item() == pytest.approx(5 / 3)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(1.25)
    w = whiten(x, mask)
    assert w[0, 0].item() == pytest.approx(-1.5 / math.sqrt(5 / 3 + 1e-8))
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-6)
    w2 = whiten(x, mask, shift_mean=False)
    assert masked_mean(w2, mask).item() == pytest.approx(2.5)
    assert masked_var(w2, mask).item() == pytest.approx(1.0, rel=1e-6)


def test_whiten_over_several_processes_uses_the_whole_batch_statistics():
    """`total` sums over processes: here process 0 holds rows 0-1 and process 1 rows 2-3, and each one's sum is
    completed with the other's, as an all-reduce would. Each half is then whitened with the whole batch's mean and
    unbiased variance, exactly as the one-process batch, and not with its own."""
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0], [10.0, 12.0, 0.0], [7.0, 5.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=F64)
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    whole = whiten(x, mask)
    for i, (xi, mi) in enumerate(halves):
        other_x, other_m = halves[1 - i]
        # the other process's contribution to each sum whiten asks for, in the order it asks: n, sum x, sum (x-mu)^2
        mean = (x * mask).sum() / mask.sum()
        others = iter([other_m.sum(), (other_x * other_m).sum(), (other_m * (other_x - mean).square()).sum()])
        got = whiten(xi, mi, total=lambda t: t + next(others))
        torch.testing.assert_close(got * mi, whole[2 * i : 2 * i + 2] * mi)
        assert not torch.allclose(whiten(xi, mi) * mi, got * mi)  # its own statistics would differ


def test_gae_hand_values():
    # gamma 1, lam 0.5, rewards [0, 1], V [0.5, 0.2]:
    # delta_1 = 1 + 0 - 0.2 = 0.8 (V past the end is 0); delta_0 = 0 + 0.2 - 0.5 = -0.3
    # A_1 = 0.8; A_0 = -0.3 + 0.5 * 0.8 = 0.1; R = A + V = [0.6, 1.0]; the pad stays 0
    rewards = torch.tensor([[0.0, 1.0, 7.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.2, 9.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    A, R = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert A[0].tolist() == pytest.approx([0.1, 0.8, 0.0])
    assert R[0].tolist() == pytest.approx([0.6, 1.0, 0.0])


def test_gae_matches_reference_loop_on_ragged_rows():
    g = torch.Generator().manual_seed(0)
    lengths, T = [5, 1, 3, 5, 2], 5
    mask = ragged_mask(lengths, T)
    # Garbage on the pads must not leak into real tokens.
    rewards = torch.randn(5, T, generator=g, dtype=F64)
    values = torch.randn(5, T, generator=g, dtype=F64)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8), (0.99, 1.0)):
        A, R = gae(rewards, values, mask, gamma, lam)
        A_ref, R_ref = gae_reference_loop(rewards, values, mask, gamma, lam)
        assert torch.allclose(A, A_ref, atol=1e-12)
        assert torch.allclose(R, R_ref, atol=1e-12)


def test_score_lands_on_last_real_token():
    mask = ragged_mask([3, 1, 4], 4)
    assert last_token_index(mask).tolist() == [2, 0, 3]
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -9.0], [-1.0, -9.0, -9.0, -9.0], [-1.0] * 4], dtype=F64)
    ref = torch.full_like(logprobs, -1.5)
    scores = torch.tensor([10.0, 20.0, 30.0], dtype=F64)
    r = kl_shaped_token_rewards(scores, logprobs, ref, mask, beta=0.1)
    # -0.1 * (old - ref) per token: row 0: [-0.05, 0.05, 0.15] then +10 on token 2; pad 0
    want = torch.tensor(
        [[-0.05, 0.05, 0.15 + 10.0, 0.0], [-0.05 + 20.0, 0.0, 0.0, 0.0], [-0.05, -0.05, -0.05, -0.05 + 30.0]],
        dtype=F64,
    )
    assert torch.allclose(r, want, atol=1e-12)


def test_leave_one_out_hand_values():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 0.0, 0.0, 4.0, 4.0], dtype=F64)
    # group 1: 1 - (2+3+10)/3 = -4; 2 - 14/3 = -8/3; 3 - 13/3 = -4/3; 10 - 2 = 8
    # group 2: 0 - 8/3; 0 - 8/3; 4 - 4/3; 4 - 4/3
    want = [-4.0, -8 / 3, -4 / 3, 8.0, -8 / 3, -8 / 3, 8 / 3, 8 / 3]
    assert leave_one_out(r, 4).tolist() == pytest.approx(want)
    with pytest.raises(ValueError, match="multiple of group_size"):
        leave_one_out(r, 3)
    with pytest.raises(ValueError, match=">= 2"):
        leave_one_out(r, 1)


def test_group_normalize_hand_values():
    r = torch.tensor([1.0, 2.0, 6.0], dtype=F64)
    # mean 3, deviations [-2, -1, 3], unbiased var (4 + 1 + 9) / 2 = 7
    assert group_normalize(r, 3, std_eps=0.0).tolist() == pytest.approx([-2 / 7**0.5, -1 / 7**0.5, 3 / 7**0.5])
    assert group_normalize(r, 3, std_eps=1.0).tolist() == pytest.approx([-2 / (7**0.5 + 1), -1 / (7**0.5 + 1), 3 / (7**0.5 + 1)])


def test_group_normalize_k2_is_the_sign_over_sqrt2():
    # K = 2: r1 - mean = (r1 - r2)/2, unbiased std = |r1 - r2| / sqrt 2 -> A = sign(r1 - r2) / sqrt 2
    r = torch.tensor([5.0, -3.0, 0.1, 0.2, 100.0, 1000.0], dtype=F64)
    s = 1 / math.sqrt(2)
    assert group_normalize(r, 2, std_eps=0.0).tolist() == pytest.approx([s, -s, -s, s, -s, s], rel=1e-12)
    # With the default eps the gap's size is still lost (only eps / std of it survives).
    assert group_normalize(r, 2, std_eps=1e-4).tolist() == pytest.approx([s, -s, -s, s, -s, s], rel=2e-3)


def test_sequence_logprob_sums_response_tokens_only():
    logprobs = torch.tensor([[-1.0, -2.0, -50.0], [-0.5, -0.5, -0.5]], dtype=F64)
    mask = ragged_mask([2, 3], 3)
    assert sequence_logprob(logprobs, mask).tolist() == [-3.0, -1.5]
