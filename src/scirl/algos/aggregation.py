"""Loss aggregation: reduce a per-token loss [B, T] with its mask to one scalar (verl `agg_loss` modes).

`denominator` exists for gradient accumulation: when the trainer splits a mini-batch into micro-batches it
passes the GLOBAL count (tokens for token-mean, non-empty sequences for seq-mean-* modes) so that summing
the micro-batch results gives exactly the mini-batch loss. Modes whose normaliser does not depend on the
batch (seq-mean-token-sum-norm, which divides by L_max) ignore it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from scirl.algos.registry import unknown_name_error
from scirl.errors import ScirlError

Denominator = float | Tensor | None


def _masked_sum(loss: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(mask * loss); masked positions never contribute (nan-safe)."""
    m = mask.to(loss.dtype)
    x = torch.where(m != 0, loss * m, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return x.sum() if dim is None else x.sum(dim)


def _safe_div(num: Tensor, den: Denominator | Tensor) -> Tensor:
    """num / den, but 0 (still attached to the graph of `num`) when den == 0."""
    den_t = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    zero = den_t == 0
    return torch.where(zero, num * 0.0, num / torch.where(zero, torch.ones_like(den_t), den_t))


def _seq_count(mask: Tensor) -> Tensor:
    """B = number of sequences with at least one loss token."""
    return (mask.sum(dim=-1) > 0).sum()


def token_mean(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """sum(m * l) / sum(m) (or / denominator: the global token count of the mini-batch)."""
    den = mask.to(loss.dtype).sum() if denominator is None else denominator
    return _safe_div(_masked_sum(loss, mask), den)


def seq_mean_token_mean(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """(1/B) sum_i (sum_t m*l / L_i) over non-empty sequences (or / denominator: global B)."""
    lengths = mask.to(loss.dtype).sum(dim=-1)
    seq = _safe_div(_masked_sum(loss, mask, dim=-1), lengths)
    return _safe_div(seq.sum(), _seq_count(mask) if denominator is None else denominator)


def seq_mean_token_sum(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """(1/B) sum_i sum_t m*l over non-empty sequences (or / denominator: global B)."""
    total = _masked_sum(loss, mask)
    return _safe_div(total, _seq_count(mask) if denominator is None else denominator)


def _max_len(mask: Tensor, max_len: int | None) -> int:
    if max_len is None:
        return mask.shape[-1]  # verl's fallback when loss_scale_factor is unset
    if max_len <= 0:
        raise ScirlError(f"loss aggregation max_len must be > 0, got {max_len}")
    return max_len


def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """Dr.GRPO as in verl: sum_{i,t} m*l / L_max (no division by B; `denominator` is ignored)."""
    return _masked_sum(loss, mask) / _max_len(mask, max_len)


def seq_mean_token_sum_norm_paper(
    loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator
) -> Tensor:
    """Dr.GRPO as in the paper: sum_{i,t} m*l / (B * L_max) (or / (denominator * L_max): global B)."""
    b = _seq_count(mask) if denominator is None else denominator
    return _safe_div(_masked_sum(loss, mask) / _max_len(mask, max_len), b)


LOSS_AGG_MODES: dict[str, Callable[[Tensor, Tensor, int | None, Denominator], Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
    "seq-mean-token-sum-norm-paper": seq_mean_token_sum_norm_paper,
}


def aggregate_loss(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    max_len: int | None = None,
    denominator: float | Tensor | None = None,
) -> Tensor:
    """Reduce per-token `loss` [B, T] under `mask` [B, T] to a scalar with the aggregation `mode`.

    `max_len` is L_max for the *-norm modes (defaults to T). `denominator` replaces the batch-dependent
    count (see module docstring). An empty mask gives 0, still attached to the graph.
    """
    fn = LOSS_AGG_MODES.get(mode)
    if fn is None:
        raise unknown_name_error("loss aggregation mode", mode, list(LOSS_AGG_MODES))
    if loss.shape != mask.shape:
        raise ScirlError(f"aggregate_loss: loss {tuple(loss.shape)} and mask {tuple(mask.shape)} differ in shape")
    return fn(loss, mask, max_len, denominator)
