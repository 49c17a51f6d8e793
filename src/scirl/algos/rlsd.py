"""RLSD (RLVR with Self-Distillation, arXiv 2604.03128): a self-teacher rescales the per-token advantage magnitude.

The verifier reward fixes the direction (sign of A); the teacher's log-prob of the sampled token only scales it:

    delta = tau - s;  w = clip(exp(sign(A) * delta), 1 - eps_w, 1 + eps_w)
    A_hat = A * ((1 - lam) + lam * w)   where the row has a teacher context (m^SD = 1), else A

A_hat then goes through the ordinary PPO-clip loss (`vanilla`). There is no distillation loss term.
See /work/shared/spec/ALGORITHMS.md section 7.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.policy_loss import vanilla
from scirl.algos.registry import register_policy_loss
from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError


def rlsd_lambda(lam0: float, step: int, decay_steps: int | None) -> float:
    """lambda_k: lam0 when decay_steps is 0/None, else lam0 * max(0, 1 - (step - 1) / decay_steps); step is 1-indexed.

    Example: lam0 = 1, decay_steps = 10, step = 6 -> 0.5.
    """
    if not decay_steps:
        return float(lam0)
    if decay_steps < 0:
        raise ScirlError(f"rlsd decay_steps must be >= 0 (0 or null = constant lambda), got {decay_steps}")
    if step < 1:
        raise ScirlError(f"rlsd_lambda expects a 1-indexed global step (>= 1), got {step}")
    return float(lam0) * max(0.0, 1.0 - (step - 1) / decay_steps)


def _check_params(lam: float, eps_w: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ScirlError(f"rlsd lambda must lie in [0, 1] (it mixes 1 and the teacher weight), got {lam}")
    if eps_w < 0.0:
        raise ScirlError(f"rlsd eps_w must be >= 0, got {eps_w}")


def _as_2d(x: Tensor, like: Tensor, name: str) -> Tensor:
    """Broadcast a per-row [B] tensor to [B, T]; pass [B, T] through; anything else is a ScirlError."""
    if x.dim() == 1 and x.shape[0] == like.shape[0]:
        return x.unsqueeze(-1).expand_as(like)
    if x.shape == like.shape:
        return x
    raise ScirlError(
        f"rlsd: {name} must have shape [B] or [B, T] = {tuple(like.shape)}, got {tuple(x.shape)}"
    )


@torch.no_grad()
def _raw_weight(advantages: Tensor, student_logprob: Tensor, teacher_logprob: Tensor) -> Tensor:
    """exp(sign(A) * (tau - s)) before clipping, in >= float32 (sign(0) = 0 gives weight 1).

    delta is clamped to [-20, 20] (nan -> 0) so -inf/garbage log-probs on padding cannot turn A = 0 into nan;
    this changes nothing unless eps_w > e^20 - 1.
    """
    dtype = torch.promote_types(torch.promote_types(student_logprob.dtype, teacher_logprob.dtype), torch.float32)
    delta = teacher_logprob.detach().to(dtype) - student_logprob.detach().to(dtype)
    delta = torch.nan_to_num(delta, nan=0.0, posinf=20.0, neginf=-20.0).clamp(-20.0, 20.0)
    return torch.exp(torch.sign(advantages.to(dtype)) * delta)


def rlsd_advantages(
    advantages: Tensor,
    student_logprob: Tensor,
    teacher_logprob: Tensor,
    mask: Tensor,
    lam: float,
    eps_w: float,
) -> Tensor:
    """Per-token RLSD advantages [B, T] (no gradient).

    advantages: [B, T] (GRPO-broadcast) or [B] (broadcast over T). student_logprob / teacher_logprob: [B, T]
    log-probs of the sampled tokens (detached here). mask: the teacher-context mask m^SD, [B] or [B, T], bool or
    0/1; where it is 0 the plain advantage is kept. lam in [0, 1]; eps_w >= 0. The sign of A is never changed.
    """
    _check_params(lam, eps_w)
    with torch.no_grad():
        if student_logprob.shape != teacher_logprob.shape or student_logprob.dim() != 2:
            raise ScirlError(
                "rlsd: student and teacher log-probs must both be [B, T], got "
                f"{tuple(student_logprob.shape)} and {tuple(teacher_logprob.shape)}"
            )
        adv = _as_2d(advantages.detach(), student_logprob, "advantages")
        ctx = _as_2d(mask.detach(), student_logprob, "teacher mask") != 0
        weight = _raw_weight(adv, student_logprob, teacher_logprob).clamp(1.0 - eps_w, 1.0 + eps_w)
        modulator = (1.0 - lam) + lam * weight
        out_dtype = adv.dtype if adv.is_floating_point() else torch.float32
        adv = adv.to(out_dtype)
        return torch.where(ctx, adv * modulator.to(out_dtype), adv)


@torch.no_grad()
def rlsd_weight_stats(
    advantages: Tensor,
    student_logprob: Tensor,
    teacher_logprob: Tensor,
    mask: Tensor,
    response_mask: Tensor,
    eps_w: float,
) -> dict[str, Tensor]:
    """Detached scalar metrics of the RLSD weights.

    rlsd/weight_mean: mean clipped w over response tokens of rows with a teacher context (1 when there are none);
    rlsd/clip_frac: fraction of those tokens whose raw weight lay outside [1 - eps_w, 1 + eps_w];
    rlsd/context_frac: fraction of all B rows with a teacher context (a [B, T] mask is reduced with any()).
    """
    adv = _as_2d(advantages, student_logprob, "advantages")
    ctx = _as_2d(mask, student_logprob, "teacher mask") != 0
    raw = _raw_weight(adv, student_logprob, teacher_logprob)
    clipped = raw.clamp(1.0 - eps_w, 1.0 + eps_w)
    valid = (ctx & (response_mask != 0)).float()
    rows = (mask != 0) if mask.dim() == 1 else (mask != 0).any(dim=-1)
    neutral = torch.ones((), device=raw.device)  # no token with a context: the weight is 1 (plain advantage)
    return {
        "rlsd/weight_mean": masked_mean(clipped, valid) if valid.sum() > 0 else neutral,
        "rlsd/clip_frac": masked_mean((raw != clipped).float(), valid),
        "rlsd/context_frac": rows.float().mean() if rows.numel() else torch.zeros((), device=raw.device),
    }


@register_policy_loss("rlsd")
def rlsd(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    rollout_is_weights: Tensor | None = None,
    *,
    teacher_log_prob: Tensor,
    teacher_mask: Tensor,
    lam: float,
    eps_w: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """RLSD policy loss: `vanilla` PPO-clip (clip-higher, dual-clip, x TIS weights) on the RLSD advantages.

    A_hat = rlsd_advantages(advantages, sg(log_prob), teacher_log_prob, teacher_mask, lam, eps_w); the student
    log-prob s is the current (detached) log_prob, as in the RLSD fork. Returns vanilla's per-token loss [B, T]
    (NOT aggregated) and its metrics plus `rlsd_weight_stats`. With lam = 0 it equals `vanilla` exactly.
    """
    adv_hat = rlsd_advantages(advantages, log_prob.detach(), teacher_log_prob, teacher_mask, lam, eps_w)
    adv_hat = adv_hat.to(log_prob.dtype)
    loss, metrics = vanilla(
        log_prob, old_log_prob, adv_hat, response_mask,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
        rollout_is_weights=rollout_is_weights,
    )
    metrics.update(
        rlsd_weight_stats(advantages, log_prob.detach(), teacher_log_prob, teacher_mask, response_mask, eps_w)
    )
    return loss, metrics
