"""Building one step's batch: generate, grade, shape the scores (DAPO overlong penalty), and, with DAPO dynamic
sampling, keep generating until `train_batch_size` groups with non-zero reward spread are collected (over all
ranks: every rank generates its share of each generation batch, the kept groups are counted and then gathered
across ranks, the first `train_batch_size` in global order are kept and each rank trains on its share).

Reward failures are not silent: the first failure's traceback is printed once per run, and every generation batch
with failed or timed-out reward calls prints one line with the count (they score 0 and are logged as
reward/errors and reward/timeouts)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from scirl import dist
from scirl.agent.engine import answer_texts, response_budget, reward_info
from scirl.agent.rollout import agent_metrics
from scirl.algos import filter_groups, overlong_penalty
from scirl.errors import ScirlError
from scirl.log.console import console
from scirl.rewards.overlap import sample_and_score
from scirl.rewards.pool import error_report
from scirl.rollout.base import SamplingParams, Trajectories


@dataclass
class RolloutBatch:
    traj: Trajectories
    scores: torch.Tensor  # [B] shaped scores (reward + overlong penalty), the advantage input
    acc: torch.Tensor  # [B] accuracy (reward component "acc", else score >= 0.5)
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list = field(default_factory=list)  # [B] the Sample (prompt, answer) of each row


def generate_and_score(ctx, tag: str) -> RolloutBatch:
    """One generation batch: the next `train_batch_size` prompts x `rollout.n` samples, graded and shaped.

    With reward.overlap each finished chunk of prompt groups is scored while the engine generates the next
    (rewards/overlap.py); the rows come back in generate's order either way. timing/rollout: generation wall time;
    timing/reward: scoring time not hidden behind generation; timing/reward_overlapped: scoring time that was."""
    cfg = ctx.cfg
    samples, prompt_ids = ctx.next_prompts()
    sampling = SamplingParams(cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
    uids = [f"{tag}:{i}" for i in range(len(samples))]

    def items_of(traj: Trajectories) -> list:  # under an agent: the last model turn, and the turn counts as info
        return [(samples[int(u.split(":")[1])], text, {**cfg.reward.kwargs, **reward_info(traj, i)})
                for i, (u, text) in enumerate(zip(traj.uid, answer_texts(traj)))]

    out = sample_and_score(ctx.engine, ctx.reward_pool, prompt_ids, uids, sampling, items_of, cfg.reward.overlap)
    traj, results, stats = out.traj, out.results, out.stats
    rows = [samples[int(u.split(":")[1])] for u in traj.uid]
    where = "this step" if tag == "0" else f"in generation batch {tag} of this step"
    for line in error_report(ctx.reward_pool, stats, len(results), where):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    raw = torch.tensor([r.score for r in results], dtype=torch.float32)
    acc = torch.tensor([r.components.get("acc", float(r.score >= 0.5)) for r in results], dtype=torch.float32)
    scores = raw + overlong_shaping(cfg, traj)
    metrics = {
        "reward/timeouts": float(stats.get("timeouts", 0)), "reward/errors": float(stats.get("errors", 0)),
        "timing/rollout": out.timing["generate"], "timing/reward": out.timing["reward"],
        "timing/reward_overlapped": out.timing["reward_overlapped"],
    }
    return RolloutBatch(traj, scores, acc, metrics, rows)


def overlong_shaping(cfg, traj: Trajectories) -> torch.Tensor:
    """DAPO's soft overlong penalty per response (zeros when reward.overlong_buffer is off). Under rollout.agent
    the length is the whole conversation's (model + tool tokens) against the agent's max_response_len, as verl
    measures a multi-turn response."""
    ob = cfg.reward.overlong_buffer
    if not ob.enable:
        return torch.zeros(len(traj))
    if cfg.rollout.agent.enable and "response_len" in getattr(traj, "extra", {}):
        return overlong_penalty(traj.extra["response_len"], response_budget(cfg), ob.len, ob.penalty_factor)
    return overlong_penalty(traj.response_lengths, cfg.rollout.max_new_tokens, ob.len, ob.penalty_factor)


def collect_batch(ctx) -> RolloutBatch:
    """The step's batch. Without dynamic sampling, one generation batch. With it (DAPO), groups whose metric has
    zero spread are dropped and more prompts are drawn until `train_batch_size` groups are kept."""
    cfg, fg = ctx.cfg, ctx.cfg.algorithm.filter_groups
    if not fg.enable:
        batch = generate_and_score(ctx, "0")
        batch.metrics.update(batch_metrics(batch, cfg))
        return batch
    kept: list[RolloutBatch] = []
    num_kept = num_generated = 0  # over all ranks
    totals = dict.fromkeys(["timing/rollout", "timing/reward", "timing/reward_overlapped", "reward/timeouts",
                            "reward/errors"], 0.0)
    for gen in itertools.count(1):
        batch = generate_and_score(ctx, str(gen))
        for key in totals:
            totals[key] += batch.metrics[key]
        metric = batch.acc if fg.metric == "acc" else batch.scores
        keep = set(filter_groups(batch.traj.uid, metric.tolist()))
        rows = [i for i, u in enumerate(batch.traj.uid) if u in keep]
        if rows:
            kept.append(RolloutBatch(batch.traj.select(rows), batch.scores[rows], batch.acc[rows], batch.metrics,
                                     [batch.samples[i] for i in rows]))
        counts = dist.all_reduce_sum(torch.tensor([len(keep), len(set(batch.traj.uid))]))  # the same on every rank
        num_kept, num_generated = num_kept + int(counts[0]), num_generated + int(counts[1])
        if num_kept >= cfg.data.train_batch_size:
            break
        if fg.max_num_gen_batches and gen >= fg.max_num_gen_batches:
            raise ScirlError(
                f"algorithm.filter_groups: only {num_kept} of data.train_batch_size={cfg.data.train_batch_size} "
                f"groups had a non-zero {fg.metric} spread after max_num_gen_batches={fg.max_num_gen_batches} "
                "generation batches (raise it, or 0 for unlimited)")
    if dist.world_size() > 1:
        kept = _gather_kept(kept)
    traj = Trajectories.concat([b.traj for b in kept])
    n = cfg.rollout.n
    groups = range(cfg.data.train_batch_size)  # groups are contiguous: keep the first ones
    if dist.world_size() > 1:  # this rank's share of them
        groups = dist.rank_groups(cfg.data.train_batch_size, cfg.actor.ppo_mini_batch_size, dist.rank(),
                                  dist.world_size())
    rows = [g * n + j for g in groups for j in range(n)]
    samples = [s for b in kept for s in b.samples]
    merged = RolloutBatch(traj.select(rows), torch.cat([b.scores for b in kept])[rows],
                          torch.cat([b.acc for b in kept])[rows], samples=[samples[i] for i in rows])
    merged.metrics = {**totals, "dapo/num_gen_batches": float(gen), "dapo/kept_groups_frac": num_kept / num_generated,
                      "dapo/train_groups": float(dist.all_reduce_sum(torch.tensor(len(set(merged.traj.uid))))),
                      **batch_metrics(merged, cfg)}
    return merged


def _gather_kept(kept: list[RolloutBatch]) -> list[RolloutBatch]:
    """Every rank's kept groups, in global order (generation batch, then rank), with uids made unique across
    ranks (each rank numbers its prompts from 0)."""
    parts = dist.all_gather_object([(b.traj.uid[0].split(":")[0], b) for b in kept])
    ordered = sorted(((int(gen), r, b) for r, part in enumerate(parts) for gen, b in part), key=lambda x: x[:2])
    for _, r, b in ordered:
        b.traj.uid = [f"{u}@{r}" for u in b.traj.uid]
    return [b for _, _, b in ordered]


def batch_metrics(batch: RolloutBatch, cfg) -> dict[str, float]:
    traj, scores = batch.traj, batch.scores
    lengths = traj.response_lengths
    groups: dict[str, list[float]] = {}
    for uid, a in zip(traj.uid, batch.acc.tolist()):
        groups.setdefault(uid, []).append(a)
    return {
        "reward/mean": scores.mean().item(),
        "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
        "reward/acc": batch.acc.mean().item(),
        "reward/solve_none_frac": sum(max(g) < 0.5 for g in groups.values()) / len(groups),
        "reward/solve_all_frac": sum(min(g) >= 0.5 for g in groups.values()) / len(groups),
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/truncated_frac": traj.truncated.float().mean().item(),
        **({"reward/overlong_penalty_mean": overlong_shaping(cfg, traj).mean().item()}
           if cfg.reward.overlong_buffer.enable else {}),
        **(agent_metrics(traj.extra["agent_stats"]) if "agent_stats" in traj.extra else {}),
    }
