"""SDPO (arXiv 2601.20802, lasgroup/SDPO): per-token divergence between the student and a detached self-teacher.

SDPO replaces the policy-gradient loss with a per-token divergence over the student's top-K tokens plus one tail
bucket, x min(sg(rho), is_clip) x TIS weights, masked by the teacher-context mask m^SD. Mirrors
`compute_self_distillation_loss` in lasgroup/SDPO `verl/trainer/ppo/core_algos.py`.
See /work/shared/spec/ALGORITHMS.md section 8.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError

# Upper clamp of log(sum top-k p) before the tail log(1 - exp(.)) (the SDPO code's value): the tail bucket is at
# least ~1e-7, so its log stays finite (about -16.1) even when the top-k holds all the mass.
_TAIL_LOG_SUM_MAX = -1e-7


def _add_tail(topk_logp: Tensor) -> Tensor:
    """Append log(1 - sum exp(topk_logp)) over the last dim, computed as log(-expm1(clamp(logsumexp, max=-1e-7)))."""
    log_sum = torch.logsumexp(topk_logp, dim=-1, keepdim=True).clamp(max=_TAIL_LOG_SUM_MAX)
    return torch.cat([topk_logp, torch.log(-torch.expm1(log_sum))], dim=-1)


def topk_with_tail(student_logp: Tensor, teacher_logp: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probs on the student's top-k tokens plus a tail bucket: two [B, T, min(k, V) + 1].

    Inputs are full log-softmax tensors [B, T, V]. The top-k indices come from the detached student (the
    teacher is gathered at the student's indices, as SDPO does); gradients flow through the gathered student
    values and its tail. k >= V: as in SDPO, k is capped at V and the tail is still appended; it then holds
    only the clamp floor (~1e-7, equal for both sides), so each row sums to 1 + ~1e-7 and the tail adds ~0
    to any divergence.
    """
    if student_logp.shape != teacher_logp.shape or student_logp.dim() != 3:
        raise ScirlError(
            "topk_with_tail expects student and teacher log-probs of one shape [B, T, V], got "
            f"{tuple(student_logp.shape)} and {tuple(teacher_logp.shape)}"
        )
    if k < 1:
        raise ScirlError(f"top-k size must be >= 1, got {k}")
    k = min(int(k), student_logp.shape[-1])
    idx = torch.topk(student_logp.detach(), k, dim=-1).indices
    s_top = torch.gather(student_logp, -1, idx)
    t_top = torch.gather(teacher_logp, -1, idx)
    return _add_tail(s_top), _add_tail(t_top)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) = sum_v a_v (log a_v - log b_v) over the last dim (F.kl_div(log_b, log_a, log_target=True).sum).

    Log-probs are clamped from below at -1e30 so zero-probability entries (-inf) give 0 * finite = 0, not nan.
    """
    floor = -1e30
    log_a = log_a.clamp(min=floor)
    log_b = log_b.clamp(min=floor)
    return (torch.exp(log_a) * (log_a - log_b)).sum(dim=-1)


def generalized_jsd(student_lp: Tensor, teacher_lp: Tensor, alpha: float) -> Tensor:
    """Generalized Jensen-Shannon divergence over the last dim; p = student, q = teacher (both log-probs).

    alpha = 0: KL(q || p) (forward KL); alpha = 1: KL(p || q) (reverse KL); 0 < alpha < 1:
    (1 - alpha) * KL(p || M) + alpha * KL(q || M), with log M = logsumexp(log p + log(1 - alpha), log q + log alpha).
    This matches the SDPO code (its endpoints are special cases: the mixture formula itself tends to 0 there).
    At alpha = 0.5 it is the symmetric JSD, bounded by ln 2.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ScirlError(f"generalized JSD alpha must lie in [0, 1], got {alpha}")
    if alpha == 0.0:
        return _kl(teacher_lp, student_lp)
    if alpha == 1.0:
        return _kl(student_lp, teacher_lp)
    a = torch.tensor(alpha, dtype=student_lp.dtype, device=student_lp.device)
    log_m = torch.logsumexp(torch.stack([student_lp + torch.log1p(-a), teacher_lp + torch.log(a)]), dim=0)
    return (1.0 - alpha) * _kl(student_lp, log_m) + alpha * _kl(teacher_lp, log_m)


def _row_mask_2d(mask: Tensor, like: Tensor) -> Tensor:
    if mask.dim() == 1 and mask.shape[0] == like.shape[0]:
        return (mask != 0).unsqueeze(-1).expand_as(like)
    if mask.shape == like.shape:
        return mask != 0
    raise ScirlError(f"sdpo: teacher_mask must be [B] or [B, T] = {tuple(like.shape)}, got {tuple(mask.shape)}")


def sdpo_loss(
    student_logp: Tensor,
    teacher_logp: Tensor,
    log_prob: Tensor,
    old_log_prob: Tensor,
    response_mask: Tensor,
    teacher_mask: Tensor,
    alpha: float = 0.5,
    topk: int | None = 100,
    is_clip: float | None = 2.0,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SDPO per-token loss [B, T] (NOT aggregated) and detached scalar metrics.

    student_logp [B, T, V]: full log-softmax WITH grad; teacher_logp [B, T, V] (detached here). log_prob /
    old_log_prob [B, T]: the sampled tokens' log-probs. Per token:
        D_t = generalized_jsd(top-k + tail of student, of teacher, alpha)   (topk=None: the full vocabulary)
        loss_t = D_t * min(exp(clamp(sg(lp - lp_old), -20, 20)), is_clip) * sg(TIS w)   (is_clip=None: no IS)
    zeroed where teacher_mask ([B] or [B, T]) or response_mask is 0 (where/select, so nan cannot leak).
    Aggregation: SDPO token-means over response_mask * m^SD (rows without a teacher context leave the
    denominator); pass that product as the aggregation mask to reproduce it exactly.
    Metrics: sdpo/divergence (mean D over contributing tokens), sdpo/context_frac (fraction of rows with a
    teacher context), sdpo/is_ratio_mean (mean IS weight over contributing tokens).
    """
    if log_prob.shape != student_logp.shape[:-1] or old_log_prob.shape != log_prob.shape:
        raise ScirlError(
            f"sdpo: log_prob {tuple(log_prob.shape)} and old_log_prob {tuple(old_log_prob.shape)} must be [B, T] "
            f"matching student_logp {tuple(student_logp.shape)}"
        )
    if response_mask.shape != log_prob.shape:
        raise ScirlError(f"sdpo: response_mask {tuple(response_mask.shape)} must match {tuple(log_prob.shape)}")
    teacher_logp = teacher_logp.detach()
    if topk is None:
        if student_logp.shape != teacher_logp.shape:
            raise ScirlError("sdpo: student and teacher log-probs must have one shape [B, T, V]")
        s_lp, t_lp = student_logp, teacher_logp
    else:
        s_lp, t_lp = topk_with_tail(student_logp, teacher_logp, topk)
    divergence = generalized_jsd(s_lp, t_lp, alpha)

    if is_clip is None:
        is_ratio = torch.ones_like(log_prob.detach())
    else:
        log_ratio = torch.clamp((log_prob - old_log_prob).detach(), min=-20.0, max=20.0)
        is_ratio = torch.exp(log_ratio).clamp(max=is_clip)
    per_token = divergence * is_ratio
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights.detach()

    ctx = _row_mask_2d(teacher_mask, log_prob)
    valid = ctx & (response_mask != 0)
    per_token = torch.where(valid, per_token, torch.zeros_like(per_token))

    with torch.no_grad():
        rows = (teacher_mask != 0) if teacher_mask.dim() == 1 else (teacher_mask != 0).any(dim=-1)
        metrics = {
            "sdpo/divergence": masked_mean(divergence.detach(), valid.float()),
            "sdpo/context_frac": rows.float().mean() if rows.numel() else torch.zeros((), device=log_prob.device),
            "sdpo/is_ratio_mean": masked_mean(is_ratio, valid.float()),
        }
    return per_token, metrics
