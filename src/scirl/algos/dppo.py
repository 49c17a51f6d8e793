"""DPPO (arXiv 2602.04879; verl `compute_policy_loss_dppo_tv` / `_dppo_kl`): a trust region on the probability of
the sampled token instead of on its ratio.

Both are a truncated-IS policy gradient, l = -A * sg(min(rho, c)) * lp, on the tokens still inside the trust
region; a token whose update already went too far in its advantage's direction is masked out of the gradient
(its loss is 0 but it stays in the aggregation's denominator, as verl). `clip_ratio_low` / `clip_ratio_high` are
the divergence thresholds (not ratio bands) and `clip_ratio_c` the IS truncation cap, as in verl's actor config.
Metrics (verl's): pg_clipfrac = fraction of valid tokens outside the region, pg_clipfrac_lower = fraction inside
it whose ratio exceeded c, ppo_kl = masked mean of lp_old - lp (clamped to [-20, 20]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.policy_loss import _check_shapes
from scirl.algos.registry import register_policy_loss
from scirl.algos.utils import masked_mean


def _dppo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, response_mask: Tensor, valid: Tensor,
               clip_ratio_c: float, rollout_is_weights: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    neg_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    truncated = torch.clamp(ratio, max=clip_ratio_c).detach()
    keep = valid.detach().to(log_prob.dtype)
    pg_losses = -advantages * truncated * log_prob * keep
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()
    with torch.no_grad():
        metrics = {
            "pg_clipfrac": masked_mean(1.0 - keep, response_mask),
            "pg_clipfrac_lower": masked_mean((ratio > clip_ratio_c).to(keep.dtype) * keep, response_mask),
            "ppo_kl": masked_mean(-neg_kl.detach(), response_mask),
        }
    return pg_losses, metrics


@register_policy_loss("dppo_tv")
def dppo_tv(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPPO-Binary-TV (verl `compute_policy_loss_dppo_tv`): with p = exp(lp), p_old = exp(lp_old), a token stays
    in the gradient when A > 0 and p - p_old <= clip_ratio_high, or A <= 0 and p - p_old >= -clip_ratio_low."""
    _check_shapes("dppo_tv", log_prob, old_log_prob, advantages, response_mask)
    diff = torch.exp(log_prob) - torch.exp(old_log_prob)
    valid = torch.where(advantages > 0, diff <= clip_ratio_high, diff >= -clip_ratio_low)
    return _dppo_loss(log_prob, old_log_prob, advantages, response_mask, valid, clip_ratio_c, rollout_is_weights)


@register_policy_loss("dppo_kl")
def dppo_kl(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPPO-Binary-KL (verl `compute_policy_loss_dppo_kl`): the binary KL between Bernoulli(p_old) and
    Bernoulli(p), kl = p_old (lp_old - lp) + (1 - p_old) log((1 - p_old + 1e-8) / (1 - p + 1e-8)); a token stays
    in the gradient when A > 0 and (kl <= clip_ratio_high or p <= p_old), or A <= 0 and (kl <= clip_ratio_low
    or p >= p_old)."""
    _check_shapes("dppo_kl", log_prob, old_log_prob, advantages, response_mask)
    prob, old_prob = torch.exp(log_prob), torch.exp(old_log_prob)
    binary_kl = old_prob * (old_log_prob - log_prob) + (1 - old_prob) * torch.log(
        (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8)
    )
    valid = torch.where(advantages > 0, (binary_kl <= clip_ratio_high) | (prob <= old_prob),
                        (binary_kl <= clip_ratio_low) | (prob >= old_prob))
    return _dppo_loss(log_prob, old_log_prob, advantages, response_mask, valid, clip_ratio_c, rollout_is_weights)
