import math

import pytest
import torch

from rlcf.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller


def test_estimators_hand_values():
    logprobs = torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([-0.5, -0.5, -2.0], dtype=torch.float64)
    # d = [0.5, -0.5, 0]
    k1 = [0.5, -0.5, 0.0]
    k2 = [0.125, 0.125, 0.0]  # d^2 / 2
    # exp(-0.5) - 1 + 0.5 = 0.6065306597 - 0.5; exp(0.5) - 1 - 0.5 = 1.6487212707 - 1.5
    k3 = [0.1065306597126334, 0.1487212707001282, 0.0]
    for name, want in (("k1", k1), ("k2", k2), ("k3", k3)):
        got = kl_estimate(logprobs, ref, name)
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12), name


def test_k3_is_nonnegative_and_precise_near_zero():
    d = torch.tensor([1e-9, -1e-9, 3.0, -3.0], dtype=torch.float64)
    k3 = kl_estimate(d, torch.zeros_like(d), "k3")
    assert (k3 >= 0).all()
    # Taylor: k3 ~ d^2 / 2 for small d; a naive exp(-d) - 1 + d would lose it to cancellation in float32.
    # At d = 1e-3 naive float32 is ~10% off (exp's rounding ~6e-8 against a value of 5e-7).
    small = kl_estimate(torch.tensor([1e-3]), torch.zeros(1), "k3")
    assert small.item() == pytest.approx(0.5e-6, rel=1e-2)


def test_unknown_estimator_names_the_choices():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_fixed_controller_never_moves():
    c = FixedKLController(0.05)
    for kl in (0.0, 100.0, -3.0):
        c.update(kl, 512)
    assert c.value == 0.05


def test_adaptive_controller_hand_updates():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9: 9/6 - 1 = 0.5 -> clipped to 0.2; beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512
    c.update(9.0, 256)
    assert c.value == pytest.approx(0.100512, rel=1e-12)
    # KL 5.7: 5.7/6 - 1 = -0.05 (inside the clip); beta *= 1 - 0.05 * 100 / 10000 = 0.9995
    c.update(5.7, 100)
    assert c.value == pytest.approx(0.100512 * 0.9995, rel=1e-12)
    # KL 0: error -1 -> clipped to -0.2; a full horizon of samples shrinks beta by 20%
    c.update(0.0, 10000)
    assert c.value == pytest.approx(0.100512 * 0.9995 * 0.8, rel=1e-12)


def test_state_dict_resumes_the_controller():
    a = AdaptiveKLController(0.05, 6.0, 10000)
    a.update(20.0, 1000)
    b = AdaptiveKLController(0.05, 6.0, 10000)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value != 0.05
    a.update(1.0, 64), b.update(1.0, 64)
    assert math.isclose(a.value, b.value)
    # a fixed beta is the config's: a checkpoint's (another beta, e.g. before a forced resume) does not replace it
    f = FixedKLController(0.3)
    g = FixedKLController(0.1)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.1


def test_make_kl_controller():
    assert isinstance(make_kl_controller(0.05, None, 10000), FixedKLController)
    c = make_kl_controller(0.05, 6.0, 500)
    assert isinstance(c, AdaptiveKLController) and (c.target, c.horizon, c.value) == (6.0, 500, 0.05)
