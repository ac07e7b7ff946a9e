"""KL estimators and the KL-coefficient controllers.

Estimators follow Schulman, "Approximating KL Divergence" (2020). With the per-token
log-ratio lr = log π_ref(y_t|s_t) - log π(y_t|s_t), for tokens y_t sampled from π:
    k1 = -lr                  unbiased, high variance, can be negative per sample
    k2 = ½ lr²                biased, low variance, ≥ 0
    k3 = (exp(lr) - 1) - lr   unbiased, low variance, ≥ 0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["k3", "kl_estimate", "FixedKLController", "AdaptiveKLController", "KLEstimator"]

KLEstimator = Literal["k1", "k2", "k3"]


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 of the log-ratio lr = log q - log p for samples of p: (e^lr - 1) - lr, an
    unbiased, never negative estimate of KL(p || q), exactly 0 where the two agree. expm1 keeps
    precision when the ratio is near 1 (the common case). Any shape -> the same shape."""
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref). logprobs, ref_logprobs: (B, T) -> (B, T).

    ``logprobs`` are of the sampled tokens under the policy that sampled them.
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return k3(log_ratio)
    raise ValueError(f"unknown KL estimator {kind!r}: choose k1, k2 or k3")


@dataclass
class FixedKLController:
    """β that never changes."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same interface as adaptive
        return None

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"), eq. 2:

        e = clip(KL_measured / KL_target - 1, -0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    KL above target raises β (pull the policy back), below target lowers it.
    ``n_steps`` is the number of samples (responses) behind the measurement.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
