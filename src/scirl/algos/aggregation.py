"""Loss aggregation: reduce a per-token loss [B, T] with its mask to one scalar (current verl `agg_loss` modes).

B counts only the sequences with at least one loss token (fully masked rows, e.g. rejected by rollout correction,
neither add nor count), as verl does. L_max is `max_len` (verl's `loss_scale_factor`), T when unset.

`denominator` exists for gradient accumulation: when the trainer splits a mini-batch into micro-batches it
passes the GLOBAL count from `global_denominator` (tokens for token-mean, non-empty sequences for the seq-mean
modes) so that summing the micro-batch results gives exactly the mini-batch loss. Modes whose normaliser does
not depend on the batch (token-sum, seq-mean-token-sum-norm-legacy) take none.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from scirl.algos.registry import unknown_name_error
from scirl.errors import ScirlError

Denominator = float | Tensor | None

# Names that no longer exist, with the one-line reason (the closest-name suggestion would point elsewhere).
REMOVED_MODES = {
    "seq-mean-token-sum-norm-paper": "'seq-mean-token-sum-norm' now divides by B * L_max, as the Dr.GRPO paper and "
    "current verl (PRs #5366/#5417) do; use it (verl's pre-2026 sum / L_max is 'seq-mean-token-sum-norm-legacy')",
}


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


def _max_len(mask: Tensor, max_len: int | None) -> int:
    if max_len is None:
        return mask.shape[-1]  # verl's fallback when loss_scale_factor is unset
    if max_len <= 0:
        raise ScirlError(f"loss aggregation max_len must be > 0, got {max_len}")
    return max_len


def token_mean(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """sum(m * l) / sum(m) (or / denominator: the global token count of the mini-batch)."""
    den = mask.to(loss.dtype).sum() if denominator is None else denominator
    return _safe_div(_masked_sum(loss, mask), den)


def token_sum(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """sum(m * l) over every token (current verl); no normaliser, so `denominator` is ignored."""
    return _masked_sum(loss, mask)


def seq_mean_token_mean(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """(1/B) sum_i (sum_t m*l / L_i) over non-empty sequences (or / denominator: global B)."""
    lengths = mask.to(loss.dtype).sum(dim=-1)
    seq = _safe_div(_masked_sum(loss, mask, dim=-1), lengths)
    return _safe_div(seq.sum(), _seq_count(mask) if denominator is None else denominator)


def seq_mean_token_sum(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """(1/B) sum_i sum_t m*l over non-empty sequences (or / denominator: global B)."""
    total = _masked_sum(loss, mask)
    return _safe_div(total, _seq_count(mask) if denominator is None else denominator)


def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator) -> Tensor:
    """Dr.GRPO (paper; current verl since PRs #5366/#5417): sum_{i,t} m*l / (B * L_max) (global B: denominator)."""
    b = _seq_count(mask) if denominator is None else denominator
    return _safe_div(_masked_sum(loss, mask) / _max_len(mask, max_len), b)


def seq_mean_token_sum_norm_legacy(
    loss: Tensor, mask: Tensor, max_len: int | None, denominator: Denominator
) -> Tensor:
    """verl's seq-mean-token-sum-norm before Feb 2026: sum_{i,t} m*l / L_max, no division by B (no denominator)."""
    return _masked_sum(loss, mask) / _max_len(mask, max_len)


LOSS_AGG_MODES: dict[str, Callable[[Tensor, Tensor, int | None, Denominator], Tensor]] = {
    "token-mean": token_mean,
    "token-sum": token_sum,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
    "seq-mean-token-sum-norm-legacy": seq_mean_token_sum_norm_legacy,
}
_SEQUENCE_NORMALISED = ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_mode(mode: str) -> None:
    """ScirlError (one line) unless `mode` is a loss aggregation mode; removed names say what replaced them."""
    if mode in REMOVED_MODES:
        raise ScirlError(f"loss aggregation mode '{mode}' was removed: {REMOVED_MODES[mode]}")
    if mode not in LOSS_AGG_MODES:
        raise unknown_name_error("loss aggregation mode", mode, list(LOSS_AGG_MODES))


def global_denominator(mode: str, mask: Tensor) -> Tensor | None:
    """The normaliser of `mode` over a whole mini-batch `mask`, to pass to each micro-batch's `aggregate_loss`.

    token-mean: the token count; seq-mean-*: the number of non-empty sequences (fully masked rows do not count);
    token-sum and seq-mean-token-sum-norm-legacy: None (they do not normalise by the batch).
    """
    check_mode(mode)
    if mode == "token-mean":
        return mask.to(torch.float32).sum()
    if mode in _SEQUENCE_NORMALISED:
        return _seq_count(mask)
    return None


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
    check_mode(mode)
    if loss.shape != mask.shape:
        raise ScirlError(f"aggregate_loss: loss {tuple(loss.shape)} and mask {tuple(mask.shape)} differ in shape")
    return LOSS_AGG_MODES[mode](loss, mask, max_len, denominator)
