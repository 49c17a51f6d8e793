"""One RL training step, top to bottom: rollout + rewards (+ DAPO dynamic sampling) -> old / reference log-probs
-> teacher signals (RLSD / SDPO / OPD) -> loss mask and rollout correction -> token rewards (+ KL-in-reward)
-> advantages -> actor update -> EMA teacher -> metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from scirl.algos import get_advantage_estimator, kl_penalty, opd_token_rewards
from scirl.algos.rollout_correction import (
    logprob_diff_metrics,
    normalize_is_weights,
    rollout_correction_metrics,
    rollout_is_weights,
    rollout_rs_masks,
)
from scirl.config import Config
from scirl.config_checks import OPD_ESTIMATORS
from scirl.rollout.base import RolloutEngine
from scirl.train.distill import build_teacher_batch, ema_update
from scirl.train.rollout_batch import RolloutBatch, collect_batch


@dataclass
class StepContext:
    cfg: Config
    actor: object  # scirl.train.actor.Actor
    engine: RolloutEngine
    reward_pool: object  # scirl.rewards.RewardPool
    next_prompts: Callable | None = None  # () -> (samples, prompt_ids): the next train_batch_size prompts
    reference: object | None = None  # scirl.train.teachers.FrozenReference, when a KL term needs it
    kl_ctrl: object | None = None  # KL-in-reward coefficient controller
    teacher: object | None = None  # EMA / reference / external teacher, when RLSD, SDPO or OPD reads one
    tokenizer: object | None = None  # builds the teacher's contexts
    step: int = 1  # the 1-indexed training step being run (set by the loop)


def train_step(ctx: StepContext) -> dict[str, float]:
    cfg, alg, t0 = ctx.cfg, ctx.cfg.algorithm, time.perf_counter()
    batch: RolloutBatch = collect_batch(ctx)  # generate, score, shape (overlong), filter groups (DAPO)
    traj, metrics = batch.traj, dict(batch.metrics)
    t1 = time.perf_counter()

    rc, opd = alg.rollout_correction, alg.adv_estimator in OPD_ESTIMATORS
    needs_old = (ctx.actor.needs_old_logprobs(len(traj)) or rc.rollout_is or rc.rollout_rs or alg.use_kl_in_reward
                 or opd or not ctx.engine.shares_module)  # another engine's log-probs are not the trainer's (verl)
    old_lp = ctx.actor.logprobs(traj) if needs_old else None
    if old_lp is not None:  # engine vs trainer log-probs of the sampled tokens
        metrics.update(logprob_diff_metrics(old_lp, traj.rollout_logprobs, traj.response_mask))
    ref_lp = ctx.reference.logprobs(traj) if cfg.actor.use_kl_loss or alg.use_kl_in_reward else None
    teacher = None if ctx.teacher is None else build_teacher_batch(
        cfg, ctx.teacher, ctx.tokenizer, traj, batch.samples, batch.scores, metrics)  # reprompts + teacher lp
    loss_mask, is_weights = loss_mask_and_is_weights(cfg, traj, old_lp, metrics)
    if cfg.actor.policy_loss == "sdpo":  # SDPO averages over tokens of rows that have a teacher context
        loss_mask = loss_mask * teacher.mask.unsqueeze(-1).to(loss_mask.dtype)

    token_rewards = scores_to_token_rewards(batch.scores, traj.response_mask)
    if alg.use_kl_in_reward:  # r_t -= beta * kl(lp_old, lp_ref), then the controller adapts beta
        kl = kl_penalty(old_lp, ref_lp, alg.kl_penalty) * traj.response_mask
        token_rewards = token_rewards - ctx.kl_ctrl.value * kl
        current_kl = float((kl.sum(-1) / traj.response_mask.sum(-1).clamp(min=1)).mean())
        metrics.update({"reward/kl": current_kl, "reward/kl_coef": ctx.kl_ctrl.value})
        ctx.kl_ctrl.update(current_kl, n_steps=len(traj))  # verl: n_steps = sequences in the batch
    opd_rewards = opd_token_rewards(teacher.logprobs, old_lp, traj.response_mask) if opd else None  # log pi_T - log pi_S
    advantages = get_advantage_estimator(alg.adv_estimator)(
        opd_rewards if alg.adv_estimator == "opd_token" else token_rewards, traj.response_mask, traj.uid,
        norm_adv_by_std_in_grpo=alg.norm_adv_by_std_in_grpo, gamma=alg.gamma, opd_rewards=opd_rewards,
        grpo_weight=cfg.distill.opd_grpo_weight,
    )
    t2 = time.perf_counter()

    update = ctx.actor.update(traj, advantages, old_lp, ref_lp, is_weights, loss_mask, teacher, ctx.step)
    ema_update(cfg, ctx.teacher, ctx.actor.model, update)  # theta_T <- (1 - a) theta_T + a theta_S
    metrics.update(update)
    ctx.engine.update_weights(ctx.actor.rollout_weights())  # THE weight-sync point (None: nothing to sync)
    t3 = time.perf_counter()
    token_adv = advantages[loss_mask.bool()]
    metrics.update({
        "adv/mean": token_adv.mean().item() if token_adv.numel() else 0.0,
        "adv/std": token_adv.std().item() if token_adv.numel() > 1 else 0.0,
        "timing/old_ref_adv": t2 - t1, "timing/update": t3 - t2, "timing/step": t3 - t0,
    })
    if opd:
        metrics["opd/token_reward_mean"] = float(opd_rewards[traj.response_mask.bool()].mean())
    return metrics


def loss_mask_and_is_weights(cfg: Config, traj, old_lp, metrics: dict):
    """The response mask the loss uses (DAPO overlong filtering, rejection sampling) and the IS weights.

    As verl, the IS weights and every chained rejection kind are computed on the mask before rejection sampling
    (after overlong filtering); the weights are truncated (TIS) or zeroed outside [lower, upper] (IcePop), then
    optionally rescaled to mean 1 (rollout_is_batch_normalize). Metrics are logged before that rescaling."""
    alg, rc = cfg.algorithm, cfg.algorithm.rollout_correction
    mask = traj.response_mask.clone()
    if alg.overlong_filtering:  # truncated responses stay in their group's statistics but leave the loss
        mask[traj.truncated] = 0.0
        metrics["response/overlong_filtered_frac"] = traj.truncated.float().mean().item()
    if not (rc.rollout_is or rc.rollout_rs):
        return mask, None
    is_weights, rs_mask, rs_masks = None, None, None
    threshold, lower = (rc.rollout_is_threshold, rc.rollout_is_threshold_lower) if rc.rollout_is else (2.0, None)
    if rc.rollout_is:
        is_weights = rollout_is_weights(old_lp, traj.rollout_logprobs, mask, rc.rollout_is, threshold, lower)
    if rc.rollout_rs:
        rs_masks = rollout_rs_masks(old_lp, traj.rollout_logprobs, mask, rc.rollout_rs, rc.rollout_rs_threshold)
        rs_mask = mask
        for kind_mask in rs_masks.values():  # a token survives only if every kind keeps it
            rs_mask = rs_mask * kind_mask
    metrics.update(rollout_correction_metrics(
        is_weights if is_weights is not None else torch.ones_like(mask), old_lp - traj.rollout_logprobs, mask,
        rs_mask=rs_mask, threshold=threshold, level=rc.rollout_is or "token", threshold_lower=lower,
        rs_masks=rs_masks))
    if is_weights is not None and rc.rollout_is_batch_normalize:
        is_weights, metrics["rollout_is/batch_norm_factor"] = normalize_is_weights(is_weights, mask, rc.rollout_is)
    return (mask if rs_mask is None else rs_mask), is_weights


def scores_to_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The outcome score sits on the last valid response token (verl convention)."""
    rewards = torch.zeros_like(response_mask)
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    last = (positions * (response_mask > 0)).argmax(-1)  # the last trained token, even with tool-output holes
    rewards[torch.arange(len(scores)), last] = scores
    return rewards
