"""Plain policy-gradient losses without a ratio clip: GPG and DRO (verl `compute_policy_loss_gpg` / `_dro`).

Same signature as every policy loss (see `scirl.algos.policy_loss`); the clip ratios and `clip_ratio_c` are unused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.policy_loss import _check_shapes
from scirl.algos.registry import register_policy_loss
from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError


@register_policy_loss("gpg")
def gpg(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GPG (verl `compute_policy_loss_gpg`, AMAP-ML/GPG): REINFORCE, l = -A * lp (x detached `rollout_is_weights`).

    lp_old is not read. No metrics (verl returns none).
    """
    _check_shapes("gpg", log_prob, old_log_prob, advantages, response_mask)
    pg_losses = -log_prob * advantages
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()
    return pg_losses, {}


@register_policy_loss("dro", config_kwargs=("dro_beta",))
def dro(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    *,
    dro_beta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Direct Reward Optimization (verl `compute_policy_loss_dro`): l = -(A * lp - beta/2 * (lp - lp_old)^2).

    The quadratic log-ratio penalty keeps the policy near lp_old; `dro_beta` > 0 is required (verl has no
    default). x detached `rollout_is_weights`. Metric ppo_kl = masked mean of lp_old - lp (not clamped).
    """
    _check_shapes("dro", log_prob, old_log_prob, advantages, response_mask)
    if dro_beta is None or not dro_beta > 0:
        raise ScirlError(f"dro needs dro_beta > 0 (actor.policy_loss_kwargs.dro_beta), got {dro_beta}")
    log_ratio = log_prob - old_log_prob
    pg_losses = -(log_prob * advantages - 0.5 * dro_beta * log_ratio.square())
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()
    with torch.no_grad():
        metrics = {"ppo_kl": masked_mean(-log_ratio.detach(), response_mask)}
    return pg_losses, metrics
