"""On-policy distillation (arXiv 2604.13016, thunlp/OPD): teacher-vs-student token rewards, top-k loss, diagnostics.

Sampled-token OPD: r_t = log pi_T(y_t) - log pi_S(y_t) (a k1 estimate of -reverse-KL) is used directly as the
per-token advantage in the PPO-clip loss. Top-k OPD applies that reward to each of the student's top-k tokens.
The diagnostics are the OPD paper's top-k overlap, overlap mass and entropy gap.
See /work/shared/spec/ALGORITHMS.md section 9.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError

OPD_WEIGHT_MODES = ("student_p", "teacher_p", "none")


def opd_token_rewards(teacher_logprob: Tensor, student_logprob: Tensor, response_mask: Tensor) -> Tensor:
    """Per-token OPD reward/advantage r_t = (tau_t - s_t) * mask, detached, [B, T].

    s_t is the student's (old) log-prob of the sampled token, tau_t the teacher's. Example: s = -2, tau = -1 -> +1.
    Masked positions are exactly 0 (even if the log-probs there are -inf/nan).
    """
    if not (teacher_logprob.shape == student_logprob.shape == response_mask.shape):
        raise ScirlError(
            "opd_token_rewards expects teacher/student log-probs and response_mask of one shape, got "
            f"{tuple(teacher_logprob.shape)}, {tuple(student_logprob.shape)}, {tuple(response_mask.shape)}"
        )
    with torch.no_grad():
        r = teacher_logprob.detach() - student_logprob.detach()
        m = response_mask.to(r.dtype)
        return torch.where(response_mask != 0, r * m, torch.zeros_like(r))


def _check_vocab(name: str, student_logp: Tensor, teacher_logp: Tensor, response_mask: Tensor, k: int) -> int:
    if student_logp.shape != teacher_logp.shape or student_logp.dim() != 3:
        raise ScirlError(
            f"{name} expects student and teacher log-probs of one shape [B, T, V], got "
            f"{tuple(student_logp.shape)} and {tuple(teacher_logp.shape)}"
        )
    if response_mask.shape != student_logp.shape[:-1]:
        raise ScirlError(f"{name}: response_mask {tuple(response_mask.shape)} must be [B, T] of the log-probs")
    if k < 1:
        raise ScirlError(f"{name}: k must be >= 1, got {k}")
    return min(int(k), student_logp.shape[-1])


def opd_topk_loss(
    student_logp: Tensor,
    teacher_logp: Tensor,
    response_mask: Tensor,
    k: int = 16,
    weight: str = "student_p",
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Top-k OPD per-token loss [B, T] (NOT aggregated; token-mean it) and metrics.

    student_logp [B, T, V] full log-softmax WITH grad; teacher_logp [B, T, V] (detached). On the student's
    top-k set V_t (detached indices): r_{t,v} = -w_v * (sg(log pi_S(v)) - log pi_T(v)), with w a softmax over
    V_t of the student log-probs (`student_p`), of the teacher's (`teacher_p`), or 1 (`none`), all detached.
    loss_t = -sum_v r_{t,v} * exp(lp_v - sg(lp_v)) x sg(TIS w) x response_mask.
    This is the one-epoch on-policy form of "the policy loss applied to each v": with old = current policy the
    PPO ratio is 1 in value (no clipping binds) and the gradient is -r_{t,v} * grad lp_v, so the student moves
    toward the teacher on its own high-probability tokens. Metrics: opd/topk_reward_mean = masked mean over
    response tokens of sum_v r_{t,v}.
    """
    if weight not in OPD_WEIGHT_MODES:
        raise ScirlError(f"unknown OPD top-k weight {weight!r}; allowed: {', '.join(OPD_WEIGHT_MODES)}")
    k = _check_vocab("opd_topk_loss", student_logp, teacher_logp, response_mask, k)
    idx = torch.topk(student_logp.detach(), k, dim=-1).indices
    s_top = torch.gather(student_logp, -1, idx)
    with torch.no_grad():
        t_top = torch.gather(teacher_logp.detach(), -1, idx)
        s_sg = s_top.detach()
        if weight == "student_p":
            w = torch.softmax(s_sg, dim=-1)
        elif weight == "teacher_p":
            w = torch.softmax(t_top, dim=-1)
        else:
            w = torch.ones_like(s_sg)
        reward = -w * (s_sg - t_top)
    ratio = torch.exp(s_top - s_top.detach())
    per_token = -(reward * ratio).sum(dim=-1)
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights.detach()
    valid = response_mask != 0
    per_token = torch.where(valid, per_token * response_mask.to(per_token.dtype), torch.zeros_like(per_token))
    with torch.no_grad():
        metrics = {"opd/topk_reward_mean": masked_mean(reward.sum(dim=-1), valid.float())}
    return per_token, metrics


def _entropy(logp: Tensor) -> Tensor:
    """H = -sum p log p over the last dim; zero-probability entries contribute 0."""
    return -(torch.exp(logp) * logp.clamp(min=-1e30)).sum(dim=-1)


@torch.no_grad()
def opd_diagnostics(
    student_logp: Tensor, teacher_logp: Tensor, response_mask: Tensor, k: int = 16
) -> dict[str, Tensor]:
    """The OPD paper's alignment diagnostics: masked means over response tokens, detached scalars.

    opd/topk_overlap = |topk_S & topk_T| / k; opd/overlap_mass_student = sum_{v in S & T} p_S(v);
    opd/overlap_mass_teacher = sum_{v in S & T} p_T(v); opd/entropy_student, opd/entropy_teacher (full-vocab
    entropies); opd/entropy_gap = H_T - H_S. k is capped at V.
    """
    k = _check_vocab("opd_diagnostics", student_logp, teacher_logp, response_mask, k)
    s_lp, t_lp = student_logp.detach(), teacher_logp.detach()
    s_idx = torch.topk(s_lp, k, dim=-1).indices
    t_idx = torch.topk(t_lp, k, dim=-1).indices
    in_s = torch.zeros_like(s_lp, dtype=torch.bool).scatter_(-1, s_idx, True)
    in_t = torch.zeros_like(t_lp, dtype=torch.bool).scatter_(-1, t_idx, True)
    both = in_s & in_t
    zero = torch.zeros((), dtype=s_lp.dtype, device=s_lp.device)
    overlap = both.sum(dim=-1).to(s_lp.dtype) / k
    mass_s = torch.where(both, torch.exp(s_lp), zero).sum(dim=-1)
    mass_t = torch.where(both, torch.exp(t_lp), zero).sum(dim=-1)
    h_s, h_t = _entropy(s_lp), _entropy(t_lp)
    m = (response_mask != 0).float()
    return {
        "opd/topk_overlap": masked_mean(overlap, m),
        "opd/overlap_mass_student": masked_mean(mass_s, m),
        "opd/overlap_mass_teacher": masked_mean(mass_t, m),
        "opd/entropy_student": masked_mean(h_s, m),
        "opd/entropy_teacher": masked_mean(h_t, m),
        "opd/entropy_gap": masked_mean(h_t - h_s, m),
    }


def opd_hybrid_advantages(opd_advantages: Tensor, grpo_advantages: Tensor, grpo_weight: float) -> Tensor:
    """Hybrid OPD + outcome advantage (thunlp/OPD `token_reward_direct_plus_grpo`): A = A_OPD + w * A_GRPO, [B, T]."""
    if opd_advantages.shape != grpo_advantages.shape:
        raise ScirlError(
            "opd_hybrid_advantages expects [B, T] advantages of one shape, got "
            f"{tuple(opd_advantages.shape)} and {tuple(grpo_advantages.shape)}"
        )
    return opd_advantages + grpo_weight * grpo_advantages
