"""Ratio-clipped policy-gradient losses (vanilla PPO-clip, GSPO, CISPO, SAPO, GMPO), registered by name.

All policy losses share one signature: (log_prob, old_log_prob, advantages, response_mask, clip_ratio_low=0.2,
clip_ratio_high=0.2, clip_ratio_c=3.0, rollout_is_weights=None, *, <config kwargs>) -> (per_token_loss [B, T],
metrics), where metrics are detached 0-dim tensors named as verl's (`pg_clipfrac`, `pg_clipfrac_lower`, `ppo_kl`:
masked means over valid tokens). Aggregate the loss with `scirl.algos.aggregate_loss`; a loss registered with an
`agg_mode` (GSPO, SAPO, GMPO) must be aggregated with that mode, as verl does whatever `loss_agg_mode` says.
Each formula mirrors the verl function named in its docstring (verl-project/verl `trainer/ppo/core_algos.py`).
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


@register_policy_loss("gspo", agg_mode="seq-mean-token-mean")
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
    seq-mean-token-mean (registered `agg_mode`); the config must say so. pg_clipfrac_lower is 0 (as in verl).
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


@register_policy_loss("sapo", agg_mode="seq-mean-token-mean", config_kwargs=("tau_pos", "tau_neg"))
def sapo(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (verl `compute_policy_loss_sapo`, arXiv 2511.20347): a smooth sigmoid gate instead of a hard clip.

    rho = exp(clamp(lp - lp_old, -20, 20)); tau = tau_pos where A > 0, else tau_neg;
    l = -A * sigmoid(tau * (rho - 1)) * 4 / tau. At rho = 1 the gate is 2 / tau and its slope 1, so the gradient
    matches PPO's there and fades smoothly away from 1. Clip ratios and `clip_ratio_c` are unused. x detached
    `rollout_is_weights`. verl always aggregates SAPO with seq-mean-token-mean. pg_clipfrac and
    pg_clipfrac_lower are 0 (as verl).
    """
    _check_shapes("sapo", log_prob, old_log_prob, advantages, response_mask)
    if not (tau_pos > 0 and tau_neg > 0):
        raise ScirlError(f"sapo needs tau_pos > 0 and tau_neg > 0, got {tau_pos} and {tau_neg}")
    neg_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    taus = torch.where(advantages > 0, torch.as_tensor(tau_pos, dtype=ratio.dtype, device=ratio.device),
                       torch.as_tensor(tau_neg, dtype=ratio.dtype, device=ratio.device))
    gates = torch.sigmoid(taus * (ratio - 1.0)) * (4.0 / taus)
    pg_losses = -gates * advantages
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()
    metrics = _no_lower_clip_metrics(torch.zeros_like(ratio, dtype=torch.bool), neg_kl, response_mask)
    return pg_losses, metrics


@register_policy_loss("geo_mean", agg_mode="seq-mean-token-mean")
def geo_mean(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (verl `compute_policy_loss_geo_mean`, arXiv 2507.20673): PPO on the geometric mean of token ratios.

    d_t = lp - lp_old (not clamped, as verl); each d_t is clipped to [-low, high] on the side that would increase
    the objective (sg(A) * d_t is replaced by min(s*d_t, s*clip(d_t)), s = sign(A)); per sequence,
    r_i = exp(mean_t d_t^clip), A_i = mean_t A_t and L_i = -A_i * r_i (x the geometric mean of the detached
    `rollout_is_weights` over the sequence, exp(mean_t log(w_t + 1e-10)), when given). The per-sequence L_i is
    returned on each valid token, so seq-mean-token-mean (verl's mean over sequences; the registered agg_mode)
    gives mean_i L_i. `clip_ratio_c` is unused. pg_clipfrac / pg_clipfrac_lower: fraction of valid tokens whose
    d_t was clipped with A > 0 / A < 0 (as verl).
    """
    _check_shapes("geo_mean", log_prob, old_log_prob, advantages, response_mask)
    valid = response_mask != 0
    m = response_mask.to(log_prob.dtype)
    zero = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    neg_kl = torch.where(valid, log_prob - old_log_prob, zero)
    sign = torch.sign(advantages)
    neg_kl_clamp = torch.clamp(neg_kl, -clip_ratio_low, clip_ratio_high)
    neg_kl_min = sign * torch.minimum(sign * neg_kl, sign * neg_kl_clamp)
    lengths = m.sum(dim=-1)
    ratio = torch.exp((neg_kl_min * m).sum(dim=-1) / (lengths + 1e-8))
    seq_adv = (torch.where(valid, advantages, zero) * m).sum(dim=-1) / (lengths + 1e-8)
    seq_losses = -seq_adv * ratio
    if rollout_is_weights is not None:
        log_w = torch.where(valid, torch.log(rollout_is_weights.detach() + 1e-10), zero)
        seq_losses = seq_losses * torch.exp((log_w * m).sum(dim=-1) / (lengths + 1e-8))
    pg_losses = torch.where(valid, seq_losses.unsqueeze(-1).expand_as(log_prob), zero)

    with torch.no_grad():
        clipped = neg_kl != neg_kl_clamp
        metrics = {
            "pg_clipfrac": masked_mean((clipped & (advantages > 0)).float(), response_mask),
            "pg_clipfrac_lower": masked_mean((clipped & (advantages < 0)).float(), response_mask),
            "ppo_kl": masked_mean(-neg_kl.detach(), response_mask),
        }
    return pg_losses, metrics
