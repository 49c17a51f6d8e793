"""One RL training step, top to bottom: rollout -> rewards -> advantages -> actor update -> metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from scirl.algos import get_advantage_estimator
from scirl.config import Config
from scirl.data.sample import Sample
from scirl.rollout.base import SamplingParams, Trajectories


@dataclass
class StepContext:
    cfg: Config
    actor: object  # scirl.train.actor.Actor
    engine: object  # a RolloutEngine
    reward_pool: object  # scirl.rewards.RewardPool


def train_step(ctx: StepContext, batch: list[Sample], prompt_ids: list[list[int]]) -> dict[str, float]:
    cfg, t0 = ctx.cfg, time.perf_counter()
    sampling = SamplingParams(cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
    traj = ctx.engine.generate(prompt_ids, [str(i) for i in range(len(batch))], sampling)
    t1 = time.perf_counter()

    rows = [batch[int(u)] for u in traj.uid]
    results, reward_stats = ctx.reward_pool.score([(s, text, dict(cfg.reward.kwargs)) for s, text in zip(rows, traj.texts)])
    scores = torch.tensor([r.score for r in results], dtype=torch.float32)
    t2 = time.perf_counter()

    token_rewards = scores_to_token_rewards(scores, traj.response_mask)
    advantages = get_advantage_estimator(cfg.algorithm.adv_estimator)(
        token_rewards, traj.response_mask, traj.uid, norm_adv_by_std_in_grpo=cfg.algorithm.norm_adv_by_std_in_grpo
    )
    update_metrics = ctx.actor.update(traj, advantages)
    ctx.engine.update_weights(None)  # hf engine shares the module; a vllm engine would sync here
    t3 = time.perf_counter()

    return {
        **rollout_metrics(traj, scores, results, advantages, reward_stats),
        **update_metrics,
        "timing/rollout": t1 - t0, "timing/reward": t2 - t1, "timing/update": t3 - t2, "timing/step": t3 - t0,
    }


def scores_to_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The outcome score sits on the last valid response token (verl convention)."""
    rewards = torch.zeros_like(response_mask)
    last = (response_mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] = scores
    return rewards


def rollout_metrics(traj: Trajectories, scores, results, advantages, reward_stats) -> dict[str, float]:
    mask = traj.response_mask
    lengths = mask.sum(-1)
    acc = torch.tensor([r.components.get("acc", float(r.score >= 0.5)) for r in results])
    token_adv = advantages[mask.bool()]
    groups: dict[str, list[float]] = {}
    for uid, s in zip(traj.uid, scores.tolist()):
        groups.setdefault(uid, []).append(s)
    return {
        "reward/mean": scores.mean().item(),
        "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
        "reward/acc": acc.mean().item(),
        "reward/timeouts": float(reward_stats.get("timeouts", 0)),
        "reward/errors": float(reward_stats.get("errors", 0)),
        "reward/solve_none_frac": sum(max(g) < 0.5 for g in groups.values()) / len(groups),
        "reward/solve_all_frac": sum(min(g) >= 0.5 for g in groups.values()) / len(groups),
        "adv/mean": token_adv.mean().item() if token_adv.numel() else 0.0,
        "adv/std": token_adv.std().item() if token_adv.numel() > 1 else 0.0,
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/truncated_frac": traj.truncated.float().mean().item(),
    }
