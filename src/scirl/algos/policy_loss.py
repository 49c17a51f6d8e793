"""Policy-gradient losses (vanilla PPO-clip, GSPO, CISPO), registered by name; per-token loss [B, T] + metrics.

All share one signature: (log_prob, old_log_prob, advantages, response_mask, clip_ratio_low=0.2,
clip_ratio_high=0.2, clip_ratio_c=3.0, rollout_is_weights=None) -> (per_token_loss [B, T], metrics), where
metrics are detached 0-dim tensors `pg_clipfrac`, `pg_clipfrac_lower`, `ppo_kl` (masked means over valid tokens).
Aggregate the loss with `scirl.algos.aggregate_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.registry import register_policy_loss
from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError


def _check_shapes(name: str, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, mask: Tensor) -> None:
    if not (log_prob.shape == old_log_prob.shape == advantages.shape == mask.shape):
        raise ScirlError(
            f"{name} policy loss expects log_prob, old_log_prob, advantages and response_mask of one shape, got "
            f"{tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, {tuple(advantages.shape)}, {tuple(mask.shape)}"
        )


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
    _check_shapes("vanilla", log_prob, old_log_prob, advantages, response_mask)

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


@torch.no_grad()
def _no_lower_clip_metrics(clipped: Tensor, neg_kl: Tensor, response_mask: Tensor) -> dict[str, Tensor]:
    """Metrics of losses without a dual clip: clip fraction, pg_clipfrac_lower = 0 (as verl), ppo_kl."""
    return {
        "pg_clipfrac": masked_mean(clipped.float(), response_mask),
        "pg_clipfrac_lower": torch.zeros((), device=neg_kl.device),
        "ppo_kl": masked_mean(-neg_kl.detach(), response_mask),
    }


@register_policy_loss("gspo")
def gspo(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (verl `compute_policy_loss_gspo`, arXiv 2507.18071): PPO-clip on a sequence-level ratio.

    s_i = exp(mean_t m*(lp - lp_old)) over the valid tokens of sequence i, used per token as
    s_{i,t} = sg(s_i) * exp(lp_t - sg(lp_t)) (value s_i, gradient s_i * grad lp_t); log s_{i,t} is clamped at
    max 10 as in verl. l = max(-A*s, -A*clip(s, 1-low, 1+high)); no dual clip (`clip_ratio_c` is ignored).
    Multiplied by the detached `rollout_is_weights` when given. verl always aggregates GSPO with
    seq-mean-token-mean; choose that mode in `aggregate_loss`. pg_clipfrac_lower is 0 (as in verl).
    """
    _check_shapes("gspo", log_prob, old_log_prob, advantages, response_mask)
    valid = response_mask != 0
    neg_kl = torch.where(valid, log_prob - old_log_prob, torch.zeros_like(log_prob))
    lengths = response_mask.to(log_prob.dtype).sum(dim=-1).clamp(min=1)
    neg_kl_seq = (neg_kl * response_mask.to(log_prob.dtype)).sum(dim=-1) / lengths

    log_seq_ratio = log_prob - log_prob.detach() + neg_kl_seq.detach().unsqueeze(-1)
    seq_ratio = torch.exp(torch.clamp(log_seq_ratio, max=10.0))

    pg_losses1 = -advantages * seq_ratio
    pg_losses2 = -advantages * torch.clamp(seq_ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()

    return pg_losses, _no_lower_clip_metrics(torch.gt(pg_losses2, pg_losses1), neg_kl, response_mask)


@register_policy_loss("cispo")
def cispo(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (verl `compute_policy_loss_cispo`, MiniMax-M1 arXiv 2506.13585): clip the IS weight, not the update.

    rho = exp(clamp(lp - lp_old, -20, 20)); l = -sg(clip(rho, 1-low, 1+high)) * A * lp, token-level.
    The gradient -sg(clip(rho)) * A * grad lp never vanishes, even where rho is clipped (unlike PPO-clip).
    MiniMax-M1 sets no lower bound: pass clip_ratio_low >= 1 for that. `clip_ratio_c` is ignored.
    Multiplied by the detached `rollout_is_weights` when given. pg_clipfrac = fraction of valid tokens whose
    rho was clipped (either side, as verl); pg_clipfrac_lower is 0 (as verl).
    """
    _check_shapes("cispo", log_prob, old_log_prob, advantages, response_mask)
    neg_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high).detach()
    pg_losses = -clipped_ratio * advantages * log_prob
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()

    return pg_losses, _no_lower_clip_metrics(ratio != clipped_ratio, neg_kl, response_mask)
