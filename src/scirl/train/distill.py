"""Teacher signals for a training step (RLSD, SDPO, OPD): which teacher, its context for each response, its
per-token log-probs on the student's own response tokens, and the EMA update after the actor step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scirl import dist
from scirl.config import Config
from scirl.config_checks import OPD_ESTIMATORS, teacher_context, uses_teacher
from scirl.rollout.base import Trajectories
from scirl.train.reprompt import RepromptConfig, build_contexts, teacher_batch


@dataclass
class TeacherBatch:
    """The teacher's view of a batch: inputs [context ; the same response tokens], which rows have a context,
    and (when a loss or estimator reads them) the teacher's per-token log-probs."""

    traj: Trajectories
    mask: torch.Tensor  # [B] bool: the row has a teacher context (m^SD); rows without one keep plain advantages
    logprobs: torch.Tensor | None  # [B, R] log pi_T(y_t | c, y_<t), zero on padding
    teacher: object  # the teacher itself, for full distributions inside the actor (SDPO, top-k OPD, diagnostics)


def make_teacher(cfg: Config, model, tokenizer, reference, device: str):
    """The configured teacher (None when nothing reads one). `reference` is reused for distill.teacher=reference."""
    if not uses_teacher(cfg):
        return None
    from scirl.train.teachers import AdapterEMATeacher, EMATeacher, ExternalTeacher

    ds, micro, temp = cfg.distill, cfg.actor.ppo_micro_batch_size, cfg.rollout.temperature
    if ds.teacher == "ema" and cfg.model.lora.rank > 0 and dist.world_size() == 1:
        # LoRA on one process: an EMA of the adapter over the shared base. Under FSDP2 the teacher stays a full copy
        # (sharded like the policy): FSDP's all-gather hooks set the module's parameters themselves, so standing
        # other tensors in for them as module attributes is not safe there.
        return AdapterEMATeacher(model, micro, temp, chunk_size=cfg.actor.logprobs_chunk_size)
    if ds.teacher == "ema":
        return EMATeacher(model, micro, temp, chunk_size=cfg.actor.logprobs_chunk_size)
    if ds.teacher == "reference":
        return reference
    return ExternalTeacher(ds.teacher_path, cfg.model.dtype, device, cfg.model.attn_implementation, micro, temp,
                           tokenizer, chunk_size=cfg.actor.logprobs_chunk_size)


def reprompt_config(cfg: Config) -> RepromptConfig:
    ds = cfg.distill
    return RepromptConfig(context=teacher_context(cfg), success_threshold=ds.success_threshold,
                          template=ds.reprompt_template, solution_template=ds.solution_template,
                          include_feedback=ds.include_environment_feedback, max_len=ds.max_reprompt_len,
                          enable_thinking=cfg.data.enable_thinking)  # as the student's prompt (SDPO)


def needs_token_logprobs(cfg: Config) -> bool:
    """RLSD and sampled-token OPD read the teacher's log-prob of each sampled token before the update."""
    return cfg.actor.policy_loss == "rlsd" or cfg.algorithm.adv_estimator in OPD_ESTIMATORS


@torch.no_grad()
def build_teacher_batch(cfg: Config, teacher, tokenizer, traj: Trajectories, samples: list, scores: torch.Tensor,
                        metrics: dict) -> TeacherBatch:
    rc = reprompt_config(cfg)
    if rc.context == "none":  # OPD: the teacher reads the student's own prompt
        t_traj, mask = traj, torch.ones(len(traj), dtype=torch.bool)
    else:
        contexts, has = build_contexts(samples, traj.uid, traj.texts, scores.tolist(), rc)
        t_traj, mask = teacher_batch(traj, contexts, has, tokenizer, rc)
    logprobs = teacher.logprobs(t_traj) if needs_token_logprobs(cfg) else None
    metrics["distill/context_frac"] = mask.float().mean().item()
    if rc.context != "none":
        metrics["distill/context_len_mean"] = t_traj.prompt_mask.sum(-1).float().mean().item()
    return TeacherBatch(t_traj, mask, logprobs, teacher)


def ema_update(cfg: Config, teacher, model, update_metrics: dict) -> None:
    """theta_T <- (1 - a) theta_T + a theta_S, only after a step in which at least one optimizer step applied."""
    if cfg.distill.teacher == "ema" and update_metrics.get("actor/applied_updates", 0) > 0:
        teacher.update(model, cfg.distill.teacher_update_rate)
