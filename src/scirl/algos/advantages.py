"""Advantage estimators (token rewards -> per-token advantages [B, T]), registered by name (verl core_algos).

Every estimator takes the same call, so the trainer can use any of them interchangeably:

    fn(token_level_rewards [B, T], response_mask [B, T], index (B group keys), *,
       norm_adv_by_std_in_grpo=True, epsilon=1e-6, gamma=1.0, **unused) -> advantages [B, T]

Keyword arguments an estimator does not use are ignored. Results carry no gradient and are 0 on masked tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from scirl.algos.registry import register_advantage
from scirl.algos.utils import masked_whiten
from scirl.errors import ScirlError


def _group_ids(index: Sequence, batch: int, device: torch.device) -> tuple[Tensor, int]:
    """Map each row's group key (uid) to a dense group id 0..G-1 (order of first appearance)."""
    keys = index.tolist() if hasattr(index, "tolist") else list(index)
    if len(keys) != batch:
        raise ScirlError(f"advantage index has {len(keys)} entries but the batch has {batch} rows")
    ids: dict = {}
    dense = [ids.setdefault(k, len(ids)) for k in keys]
    return torch.tensor(dense, dtype=torch.long, device=device), len(ids)


def _check(name: str, token_level_rewards: Tensor, response_mask: Tensor) -> torch.dtype:
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ScirlError(
            f"{name} expects [B, T] rewards and mask of the same shape, got "
            f"{tuple(token_level_rewards.shape)} and {tuple(response_mask.shape)}"
        )
    return token_level_rewards.dtype if token_level_rewards.is_floating_point() else torch.float32


def _group_stats(scores: Tensor, index: Sequence) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row: its group's (size, sum, mean, unbiased std). Singleton groups get std 0 here."""
    gid, n_groups = _group_ids(index, scores.shape[0], scores.device)
    zeros = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device)
    counts = zeros.clone().index_add_(0, gid, torch.ones_like(scores))
    sums = zeros.clone().index_add_(0, gid, scores)
    mean = sums / counts
    sq_sums = zeros.clone().index_add_(0, gid, (scores - mean[gid]) ** 2)
    std = torch.sqrt(sq_sums / (counts - 1).clamp_min(1))  # unbiased, like torch.std
    return counts[gid], sums[gid], mean[gid], std[gid]


def _outcome_scores(token_level_rewards: Tensor, dtype: torch.dtype) -> Tensor:
    """R_i = sum_t token_level_rewards[i, t] (verl sums the whole row, the outcome sits on one token)."""
    return token_level_rewards.to(dtype).sum(dim=-1)


@register_advantage("grpo")
def grpo(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str],
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
    **unused,
) -> Tensor:
    """GRPO outcome advantage (verl `compute_grpo_outcome_advantage`).

    R_i = sum_t token_level_rewards[i, t]; within each group of rows sharing `index`:
    A_i = (R_i - mean) / (std + epsilon) with the unbiased std, or A_i = R_i - mean for Dr.GRPO
    (`norm_adv_by_std_in_grpo=False`). A group of size 1 uses mean 0 and std 1. A_i is multiplied by the mask.
    """
    dtype = _check("grpo", token_level_rewards, response_mask)
    with torch.no_grad():
        scores = _outcome_scores(token_level_rewards, dtype)
        counts, _, mean, std = _group_stats(scores, index)
        single = counts == 1
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
        adv = scores - mean
        if norm_adv_by_std_in_grpo:
            adv = adv / (std + epsilon)
        return adv.unsqueeze(-1) * response_mask.to(dtype)


@register_advantage("rloo")
def rloo(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str],
    **unused,
) -> Tensor:
    """RLOO (verl `compute_rloo_outcome_advantage`): leave-one-out baseline within each group.

    For a group of n > 1: A_i = R_i - mean_{j != i} R_j = n/(n-1) * (R_i - mean(R)) (verl writes the latter).
    A group of size 1 keeps its raw score A_i = R_i, exactly as verl's `rloo` loop does (verl's separate
    `rloo_vectorized` gives 0 there instead). Broadcast to tokens and multiplied by the mask; no std scaling.
    """
    dtype = _check("rloo", token_level_rewards, response_mask)
    with torch.no_grad():
        scores = _outcome_scores(token_level_rewards, dtype)
        counts, _, mean, _ = _group_stats(scores, index)
        factor = counts / (counts - 1).clamp_min(1)
        adv = torch.where(counts > 1, scores * factor - mean * factor, scores)
        return adv.unsqueeze(-1) * response_mask.to(dtype)


@register_advantage("reinforce_plus_plus")
def reinforce_plus_plus(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str] | None = None,
    *,
    gamma: float = 1.0,
    **unused,
) -> Tensor:
    """REINFORCE++ (verl `compute_reinforce_plus_plus_outcome_advantage`): discounted return-to-go, whitened.

    G_t = r_t + gamma * G_{t+1} over the valid tokens of each row, then `masked_whiten` over the whole batch
    (verl_F.masked_whiten: unbiased variance, rsqrt(var + 1e-8)), times the mask. `index` is not used.

    Deviation, only for masks with holes (multi-turn tool outputs): verl resets the running return at every
    masked position, which would cut an outcome reward off from earlier turns. Here a masked position is
    skipped (its reward ignored, the running return carried through undiscounted). For masks that are a
    prefix of valid tokens followed by padding this is identical to verl.
    """
    dtype = _check("reinforce_plus_plus", token_level_rewards, response_mask)
    with torch.no_grad():
        rewards = token_level_rewards.to(dtype)
        valid = response_mask != 0
        returns = torch.zeros_like(rewards)
        running = torch.zeros(rewards.shape[0], dtype=dtype, device=rewards.device)
        for t in reversed(range(rewards.shape[1])):
            running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
            returns[:, t] = running
        return masked_whiten(returns, response_mask) * response_mask.to(dtype)


@register_advantage("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str],
    **unused,
) -> Tensor:
    """REINFORCE++-baseline (verl `compute_reinforce_plus_plus_baseline_outcome_advantage`).

    A_i = R_i - mean of its group (mean 0 for a group of size 1), broadcast to every token, times the mask,
    then `masked_whiten` over the whole batch, times the mask again.
    """
    dtype = _check("reinforce_plus_plus_baseline", token_level_rewards, response_mask)
    with torch.no_grad():
        scores = _outcome_scores(token_level_rewards, dtype)
        counts, _, mean, _ = _group_stats(scores, index)
        mean = torch.where(counts == 1, torch.zeros_like(mean), mean)
        mask = response_mask.to(dtype)
        tiled = (scores - mean).unsqueeze(-1) * mask
        return masked_whiten(tiled, response_mask) * mask


@register_advantage("opd_token")
def opd_token(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str] | None = None,
    **unused,
) -> Tensor:
    """Sampled-token on-policy distillation (thunlp/OPD `token_reward_direct`): A_t = r_t * m_t.

    r_t is the per-token reward the caller put in `token_level_rewards` (for OPD, log pi_T - log pi_S of the
    sampled token). No group normalisation, no discounting, no whitening. `index` is not used.
    """
    dtype = _check("opd_token", token_level_rewards, response_mask)
    with torch.no_grad():
        mask = response_mask.to(dtype)
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask != 0, token_level_rewards.to(dtype) * mask, zero)


@register_advantage("opd_token_plus_grpo")
def opd_token_plus_grpo(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str],
    *,
    opd_rewards: Tensor,
    grpo_weight: float = 1.0,
    norm_adv_by_std_in_grpo: bool = True,
    **unused,
) -> Tensor:
    """Hybrid OPD (thunlp/OPD `token_reward_direct_plus_grpo`): A = A_opd + w * A_grpo.

    `opd_rewards` are the per-token log pi_T - log pi_S (A_opd = opd_token of them); `token_level_rewards` carry
    the outcome score that GRPO normalises within each group of `index`.
    """
    if opd_rewards is None:
        raise ScirlError("opd_token_plus_grpo needs opd_rewards (the teacher's per-token log-prob gap)")
    from scirl.algos.opd import opd_hybrid_advantages

    outcome = grpo(token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo)
    return opd_hybrid_advantages(opd_token(opd_rewards, response_mask), outcome, grpo_weight)


opd_token_plus_grpo.required_kwargs = ("opd_rewards",)  # inputs beyond the uniform call
