"""The actor's side of distillation for one micro-batch: the student's and teacher's full next-token
distributions, the SDPO / top-k OPD losses that replace the policy gradient, and RLSD's extra loss inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scirl.algos import opd_topk_loss, rlsd_lambda, sdpo_loss
from scirl.config import Config
from scirl.errors import ScirlError


@dataclass
class Distributions:
    student: torch.Tensor  # [b, R, V] log pi_theta(. | x, y_<t), with grad
    teacher: torch.Tensor  # [b, R, V] log pi_T(. | c, y_<t), no grad
    mask: torch.Tensor  # [b] bool: the row has a teacher context


def needs_distributions(cfg: Config) -> bool:
    """Whether a teacher run needs the student's full [B, R, V] distribution (SDPO, top-k OPD, the OPD
    diagnostics): then the actor computes full logits, never the chunked lm_head (train/logprobs.py)."""
    return cfg.actor.policy_loss in ("sdpo", "opd_topk") or bool(cfg.distill.diagnostics_topk)


def distill_terms(cfg: Config, teacher_batch, micro: torch.Tensor, logits: torch.Tensor, device) -> Distributions | None:
    """Full distributions for this micro-batch when a loss or the diagnostics need them (else None)."""
    if not needs_distributions(cfg):
        return None
    temp = cfg.rollout.temperature
    student = torch.log_softmax(logits / temp if temp > 0 else logits, dim=-1)
    t = teacher_batch.traj
    rows = (t.prompt_ids[micro].to(device), t.prompt_mask[micro].to(device), t.response_ids[micro].to(device))
    teacher = teacher_batch.teacher.log_softmax(*rows).to(student.dtype)
    if teacher.shape[-1] != student.shape[-1]:
        raise ScirlError(f"distill.teacher_path: the teacher's vocabulary has {teacher.shape[-1]} logits and the "
                         f"student's {student.shape[-1]}; distribution losses and diagnostics need one vocabulary")
    return Distributions(student, teacher, teacher_batch.mask[micro].to(device))


def distribution_loss(cfg: Config, dist: Distributions, logp, old, mask, is_weights):
    """SDPO (divergence over the student's top-K + tail) or top-k OPD, per token, not aggregated."""
    ds = cfg.distill
    if cfg.actor.policy_loss == "sdpo":
        return sdpo_loss(dist.student, dist.teacher, logp, old, mask, dist.mask, alpha=ds.sdpo_alpha,
                         topk=ds.sdpo_topk, is_clip=ds.sdpo_is_clip, rollout_is_weights=is_weights)
    return opd_topk_loss(dist.student, dist.teacher, mask, k=ds.opd_topk, weight=ds.opd_topk_weight,
                         rollout_is_weights=is_weights)


def rlsd_kwargs(cfg: Config, teacher_batch, micro: torch.Tensor, device, step: int) -> dict:
    """The `rlsd` policy loss's teacher log-probs, context mask and the (decayed) lambda of this step."""
    ds = cfg.distill
    return {"teacher_log_prob": teacher_batch.logprobs[micro].to(device),
            "teacher_mask": teacher_batch.mask[micro].to(device),
            "lam": rlsd_lambda(ds.token_reweight_lambda, step, ds.token_reweight_decay_steps),
            "eps_w": ds.token_reweight_eps_w}
