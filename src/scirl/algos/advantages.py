"""Advantage estimators (outcome rewards -> per-token advantages), registered by name; starts with GRPO."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from scirl.algos.registry import register_advantage
from scirl.errors import ScirlError


def _group_ids(index: Sequence, batch: int, device: torch.device) -> tuple[Tensor, int]:
    """Map each row's group key (uid) to a dense group id 0..G-1 (order of first appearance)."""
    keys = index.tolist() if hasattr(index, "tolist") else list(index)
    if len(keys) != batch:
        raise ScirlError(f"advantage index has {len(keys)} entries but the batch has {batch} rows")
    ids: dict = {}
    dense = [ids.setdefault(k, len(ids)) for k in keys]
    return torch.tensor(dense, dtype=torch.long, device=device), len(ids)


@register_advantage("grpo")
def grpo(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[str],
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> Tensor:
    """GRPO outcome advantage (verl `compute_grpo_outcome_advantage`), returned as a [B, T] tensor without grad.

    R_i = sum_t token_level_rewards[i, t]; within each group of rows sharing `index`:
    A_i = (R_i - mean) / (std + epsilon) with the unbiased std, or A_i = R_i - mean for Dr.GRPO
    (`norm_adv_by_std_in_grpo=False`). A group of size 1 uses mean 0 and std 1. A_i is multiplied by the mask.
    """
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ScirlError(
            f"grpo expects [B, T] rewards and mask of the same shape, got "
            f"{tuple(token_level_rewards.shape)} and {tuple(response_mask.shape)}"
        )
    with torch.no_grad():
        dtype = token_level_rewards.dtype if token_level_rewards.is_floating_point() else torch.float32
        scores = token_level_rewards.to(dtype).sum(dim=-1)  # [B]
        batch = scores.shape[0]
        gid, n_groups = _group_ids(index, batch, scores.device)

        counts = torch.zeros(n_groups, dtype=dtype, device=scores.device).index_add_(0, gid, torch.ones_like(scores))
        sums = torch.zeros(n_groups, dtype=dtype, device=scores.device).index_add_(0, gid, scores)
        mean = sums / counts
        sq = (scores - mean[gid]) ** 2
        sq_sums = torch.zeros(n_groups, dtype=dtype, device=scores.device).index_add_(0, gid, sq)
        std = torch.sqrt(sq_sums / (counts - 1).clamp_min(1))  # unbiased, like torch.std

        single = counts == 1
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)

        adv = scores - mean[gid]
        if norm_adv_by_std_in_grpo:
            adv = adv / (std[gid] + epsilon)
        return adv.unsqueeze(-1) * response_mask.to(dtype)
