"""Small tensor helpers shared by the algorithms: masked mean and per-position entropy from logits."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is nonzero (weighted by `mask`); 0 where the mask is empty.

    Masked-out positions never contribute, even if they hold nan/inf.
    """
    if not x.is_floating_point():
        x = x.float()
    mask = mask.to(x.dtype)
    xs = torch.where(mask != 0, x * mask, 0.0)
    total = xs.sum() if dim is None else xs.sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    safe = torch.where(count != 0, count, 1.0)
    return torch.where(count != 0, total / safe, 0.0)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim, per position: logsumexp(z) - sum(softmax(z) * z)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
