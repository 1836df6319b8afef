"""KL estimators of KL(pi || pi_ref) from sampled tokens, and the KL-coefficient controllers.

Imports only torch. With d = log pi - log pi_ref on tokens sampled from pi (Schulman's notes):
  k1 = d                  unbiased, can be negative
  k2 = d^2 / 2            biased, >= 0
  k3 = exp(-d) - 1 + d    unbiased, >= 0
A sequence KL is the sum of the per-token values over response tokens.
"""

from __future__ import annotations

from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token KL estimate, same shape as the inputs; mask and sum it yourself."""
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        # expm1 keeps precision when d is tiny (theta close to ref, the usual case).
        return (-d).expm1() + d
    raise ValueError(f"kl_estimate: unknown estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """[B] sequence KL of each response: sum_t m_t k(log pi_t - log pi_ref_t), with k the named estimator."""
    return (kl_estimate(logprobs, ref_logprobs, estimator) * mask).sum(-1)


class FixedKLController:
    """beta stays what it was set to; update() only exists so the trainer treats both kinds alike."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: a fixed beta is the config's, also in a resumed run (--force-resume with another beta
        takes the new one)."""


class AdaptiveKLController:
    """Ziegler et al. 2019: e = clip(KL/target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_samples / horizon).

    current_kl is the batch mean of the sequence KL (sum over response tokens).
    """

    def __init__(self, beta: float, target: float, horizon: int = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must be > 0")
        self.value = float(beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        # Only beta is state; target and horizon come from the (possibly edited) config on resume.
        self.value = float(state["value"])


def make_kl_controller(beta: float, target: float | None = None, horizon: int = 10000):
    """target None -> fixed beta; otherwise the adaptive controller."""
    if target is None:
        return FixedKLController(beta)
    return AdaptiveKLController(beta, target, horizon)
