"""Policy-gradient losses, registered by name; each returns the per-token loss [B, T] and scalar metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.registry import register_policy_loss
from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError


@register_policy_loss("vanilla")
def vanilla(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip with clip-higher and dual-clip (verl `compute_policy_loss_vanilla`), NOT aggregated.

    rho = exp(clamp(lp - lp_old, -20, 20)); l1 = max(-A*rho, -A*clip(rho, 1-low, 1+high));
    for A < 0: l = min(l1, -A*c). Multiplied by the detached `rollout_is_weights` when given.
    Metrics (detached scalars over masked tokens): pg_clipfrac, pg_clipfrac_lower, ppo_kl
    (masked mean of lp_old - lp, using the clamped difference as verl does).
    Aggregate the returned [B, T] loss with `scirl.algos.aggregate_loss`.
    """
    if not clip_ratio_c > 1.0:
        raise ScirlError(f"clip_ratio_c must be > 1.0 for dual-clip PPO, got {clip_ratio_c}")
    if not (log_prob.shape == old_log_prob.shape == advantages.shape == response_mask.shape):
        raise ScirlError(
            "vanilla policy loss expects log_prob, old_log_prob, advantages and response_mask of one shape, got "
            f"{tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, {tuple(advantages.shape)}, "
            f"{tuple(response_mask.shape)}"
        )

    neg_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)

    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.minimum(pg_losses3, clip_pg_losses1)
    negative = advantages < 0
    pg_losses = torch.where(negative, clip_pg_losses2, clip_pg_losses1)

    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()

    with torch.no_grad():
        metrics = {
            "pg_clipfrac": masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask),
            "pg_clipfrac_lower": masked_mean(
                (torch.gt(clip_pg_losses1, pg_losses3) & negative).float(), response_mask
            ),
            "ppo_kl": masked_mean(-neg_kl.detach(), response_mask),
        }
    return pg_losses, metrics
