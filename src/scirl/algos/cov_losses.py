"""Clip-Cov and KL-Cov (arXiv 2505.22617, PRIME-RL/Entropy-Mechanism-of-RL; verl `compute_policy_loss_clip_cov` /
`compute_policy_loss_kl_cov`): PPO losses that single out the few tokens whose advantage and log-prob covary most,
the tokens that drive entropy collapse.

cov_t = (A_t - mean(A)) * (lp_t - mean(lp)), means over the valid tokens of the micro-batch the loss is called
on (as verl, which calls it per micro-batch). Both are registered losses with the shared signature; their
hyperparameters come from `actor.policy_loss_kwargs` under verl's names (`clip_cov_ratio`, `clip_cov_lb`,
`clip_cov_ub`, `kl_cov_ratio`, `ppo_kl_coef`). Neither has a dual clip; `clip_ratio_c` is unused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.policy_loss import _check_shapes
from scirl.algos.registry import register_policy_loss
from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError


@register_policy_loss("clip_cov", config_kwargs=("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"))
def clip_cov(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    *,
    clip_cov_ratio: float = 0.0002,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov: PPO-clip, l = max(-A*rho, -A*clip(rho, 1-low, 1+high)) with rho = exp(lp - lp_old) (no clamp,
    as verl), except that up to max(1, int(clip_cov_ratio * valid tokens)) tokens, drawn at random (torch.randperm,
    as verl) among the valid tokens not already clipped whose cov_t lies strictly inside (clip_cov_lb,
    clip_cov_ub), get loss 0 (no gradient). x detached `rollout_is_weights`.
    Metrics: pg_clipfrac = fraction of valid tokens so removed, ppo_kl = masked mean of lp_old - lp.
    """
    _check_shapes("clip_cov", log_prob, old_log_prob, advantages, response_mask)
    if not clip_cov_ratio > 0:
        raise ScirlError(f"clip_cov needs clip_cov_ratio > 0, got {clip_cov_ratio}")
    neg_kl = log_prob - old_log_prob
    ratio = torch.exp(neg_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    valid = response_mask > 0
    with torch.no_grad():
        lp = log_prob.detach()
        cov = (advantages - masked_mean(advantages, response_mask)) * (lp - masked_mean(lp, response_mask))
        clip_by_origin = (pg_losses2 > pg_losses1) & valid
        cov = cov.masked_fill(~valid | clip_by_origin, -torch.inf)
        clip_num = max(int(clip_cov_ratio * response_mask.sum().item()), 1)
        candidates = torch.nonzero((cov < clip_cov_ub) & (cov > clip_cov_lb) & valid)
        if len(candidates) > 0:
            perm = torch.randperm(len(candidates))
            candidates = candidates[perm[: min(clip_num, len(candidates))].to(candidates.device)]
        corr = torch.ones_like(advantages)
        corr[candidates[:, 0], candidates[:, 1]] = 0
    pg_losses = torch.maximum(pg_losses1, pg_losses2) * corr
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()
    with torch.no_grad():
        metrics = {"pg_clipfrac": masked_mean((corr == 0).float(), response_mask),
                   "ppo_kl": masked_mean(-neg_kl.detach(), response_mask)}
    return pg_losses, metrics


@register_policy_loss("kl_cov", config_kwargs=("kl_cov_ratio", "ppo_kl_coef"))
def kl_cov(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    *,
    kl_cov_ratio: float = 0.0002,
    ppo_kl_coef: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov: the unclipped surrogate l = -A*rho (rho = exp(lp - lp_old), no clamp), plus ppo_kl_coef * |lp - lp_old|
    on the max(1, int(kl_cov_ratio * valid tokens)) valid tokens of largest cov_t (torch.topk). The clip ratios
    are unused. x detached `rollout_is_weights`. Metric ppo_kl = masked mean of |lp - lp_old| (verl's name for it).
    """
    _check_shapes("kl_cov", log_prob, old_log_prob, advantages, response_mask)
    if not kl_cov_ratio > 0:
        raise ScirlError(f"kl_cov needs kl_cov_ratio > 0, got {kl_cov_ratio}")
    neg_kl = log_prob - old_log_prob
    ratio = torch.exp(neg_kl)
    pg_losses1 = -advantages * ratio
    pg_losses_kl = pg_losses1 + ppo_kl_coef * neg_kl.abs()
    valid = response_mask > 0
    selected = torch.zeros_like(valid)
    with torch.no_grad():
        adv_v, lp_v = advantages[valid].detach(), log_prob[valid].detach()
        if len(adv_v) > 0:
            cov = (adv_v - adv_v.mean()) * (lp_v - lp_v.mean())
            top = torch.topk(cov, max(1, int(len(cov) * kl_cov_ratio)), largest=True).indices
            flat = torch.nonzero(valid.reshape(-1), as_tuple=True)[0][top]
            selected.view(-1)[flat] = True
    pg_losses = torch.where(selected, pg_losses_kl, pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()
    with torch.no_grad():
        metrics = {"ppo_kl": masked_mean(neg_kl.detach().abs(), response_mask)}
    return pg_losses, metrics
