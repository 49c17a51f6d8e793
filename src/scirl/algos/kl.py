"""KL between policy and reference: per-token estimators (verl `kl_penalty`) and the KL-coefficient controllers.

d = logprob - ref_logprob, per token:
  k1 / kl          d
  abs              |d|
  k2 / mse         d^2 / 2
  k3 / low_var_kl  exp(-d) + d - 1, with -d clamped to [-20, 20] and the result to [-10, 10]
A "+" suffix (k1+, k3+, low_var_kl+, ...) is verl's straight-through variant: the forward value is the named
estimator, the gradient is that of k2 (k2 - sg(k2) + sg(forward)).

Controllers (verl `FixedKLController`, `AdaptiveKLController`) hold the coefficient beta in `.value`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from scirl.algos.registry import unknown_name_error
from scirl.errors import ScirlError

_BASE_KINDS = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")
KL_KINDS: tuple[str, ...] = _BASE_KINDS + tuple(k + "+" for k in _BASE_KINDS)


def _kl_forward(logprob: Tensor, ref_logprob: Tensor, kind: str) -> Tensor:
    """verl `kl_penalty_forward` for a base kind (no "+")."""
    if kind in ("kl", "k1"):
        return logprob - ref_logprob
    if kind == "abs":
        return (logprob - ref_logprob).abs()
    if kind in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    # kind in ("low_var_kl", "k3"): J. Schulman, "Approximating KL divergence", 2020
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-token KL estimate [same shape as the inputs] of the chosen `kind` (see the module docstring).

    Gradients flow through `logprob` (and `ref_logprob` if it requires grad). Unknown kind -> ScirlError.
    """
    if kind not in KL_KINDS:
        raise unknown_name_error("KL estimator", kind, KL_KINDS)
    if logprob.shape != ref_logprob.shape:
        raise ScirlError(
            f"kl_penalty: logprob {tuple(logprob.shape)} and ref_logprob {tuple(ref_logprob.shape)} differ in shape"
        )
    straight_through = kind.endswith("+")
    base = kind[:-1] if straight_through else kind
    forward = _kl_forward(logprob, ref_logprob, base)
    if not straight_through or base in ("k2", "mse"):
        return forward
    backward = 0.5 * (logprob - ref_logprob).square()
    return backward - backward.detach() + forward.detach()


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScirlError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ScirlError(f"{name} must be finite, got {v}")
    return v


class FixedKLController:
    """A constant KL coefficient (verl `FixedKLController`); `update` does nothing."""

    kind = "fixed"

    def __init__(self, kl_coef: float):
        self.value = _finite("kl_coef", kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept so both controllers are called the same way)."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient from `state_dict()` (only `value` is read)."""
        self.value = _finite("KL controller state 'value'", state.get("value"))


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv 1909.08593), as verl `AdaptiveKLController`.

    update(current_kl, n_steps): err = clip(current_kl / target_kl - 1, -0.2, 0.2);
    value *= 1 + err * n_steps / horizon.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float):
        self.value = _finite("kl_coef", init_kl_coef)
        self.target = _finite("target_kl", target_kl)
        self.horizon = _finite("horizon", horizon)
        if self.target <= 0:
            raise ScirlError(f"adaptive KL controller needs target_kl > 0, got {self.target}")
        if self.horizon <= 0:
            raise ScirlError(f"adaptive KL controller needs horizon > 0, got {self.horizon}")

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "target_kl": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the current coefficient from `state_dict()`; target_kl and horizon stay as configured."""
        self.value = _finite("KL controller state 'value'", state.get("value"))


KL_CONTROLLER_KINDS = ("fixed", "adaptive")


def make_kl_controller(
    kind: str,
    kl_coef: float,
    target_kl: float | None = None,
    horizon: float | None = None,
) -> FixedKLController | AdaptiveKLController:
    """verl `get_kl_controller`: "fixed" -> FixedKLController(kl_coef); "adaptive" needs target_kl and horizon > 0."""
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        if target_kl is None or horizon is None:
            raise ScirlError("adaptive KL controller needs target_kl and horizon")
        return AdaptiveKLController(kl_coef, target_kl, horizon)
    raise unknown_name_error("KL controller", kind, KL_CONTROLLER_KINDS)
