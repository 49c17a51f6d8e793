"""Small tensor helpers shared by the algorithms: masked mean, masked whitening, per-position entropy."""

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


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """verl `masked_whiten`: (x - masked_mean) * rsqrt(masked_var + 1e-8), variance with Bessel's n/(n-1).

    n is the number of valid positions in the whole tensor. Where verl raises (n <= 1) this returns zeros
    (n = 0: nothing to whiten; n = 1: the single centred value is 0). With shift_mean=False the mean is added back.
    """
    if not values.is_floating_point():
        values = values.float()
    mean = masked_mean(values, mask)
    n = float(mask.to(values.dtype).sum())
    if n <= 1:
        out = torch.zeros_like(values)
    else:
        var = masked_mean((values - mean) ** 2, mask) * (n / (n - 1))
        out = (values - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean
