"""Rollout correction for trainer/rollout-engine mismatch (verl `trainer/ppo/rollout_corr_helper.py`).

log_ratio = lp_old - lp_roll (trainer-recomputed over rollout-engine log-probs), per token.

* `rollout_is_weights`: truncated importance-sampling weights (TIS, upper bound only), detached.
* `rollout_rs_mask`: rejection sampling, a new response mask with rejected tokens / sequences zeroed.
* `rollout_correction_metrics`: a few scalars to log.

All inputs are [B, T]; masked positions never contribute, even if they hold nan.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from scirl.algos.registry import unknown_name_error
from scirl.algos.utils import masked_mean
from scirl.errors import ScirlError

SAFETY_BOUND = 20.0  # verl: log-ratios are clamped to [-20, 20] before exp
IS_LEVELS = ("token", "sequence")
RS_KINDS = (
    "token_k1", "token_k2", "token_k3",
    "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
    "seq_mean_k1", "seq_mean_k2", "seq_mean_k3",
    "seq_max_k2", "seq_max_k3",
)


def _log_ratio(old_logprob: Tensor, rollout_logprob: Tensor, mask: Tensor) -> Tensor:
    """lp_old - lp_roll on valid tokens, 0 elsewhere."""
    if not (old_logprob.shape == rollout_logprob.shape == mask.shape) or mask.dim() != 2:
        raise ScirlError(
            "rollout correction expects [B, T] old_logprob, rollout_logprob and mask of one shape, got "
            f"{tuple(old_logprob.shape)}, {tuple(rollout_logprob.shape)}, {tuple(mask.shape)}"
        )
    diff = old_logprob.detach() - rollout_logprob.detach()
    return torch.where(mask != 0, diff, torch.zeros_like(diff))


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScirlError(f"{name} must be a positive number, got {value!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise ScirlError(f"{name} must be a positive finite number, got {value!r}")
    return v


def rollout_is_weights(
    old_logprob: Tensor,
    rollout_logprob: Tensor,
    mask: Tensor,
    level: str = "token",
    threshold: float = 2.0,
) -> Tensor:
    """Truncated IS weights [B, T], detached (verl `compute_rollout_correction_weights`, TIS form).

    token:    w_t = min(exp(clamp(lp_old - lp_roll, -20, 20)), C) * m_t
    sequence: w_i = min(exp(clamp(sum_t m_t (lp_old - lp_roll), -20, 20)), C), broadcast to tokens, * m_t
    Upper-only truncation: nothing is clamped from below and nothing is masked. C = `threshold` > 0.
    """
    if level not in IS_LEVELS:
        raise unknown_name_error("rollout IS level", level, IS_LEVELS)
    cap = _positive("rollout IS threshold", threshold)
    with torch.no_grad():
        log_ratio = _log_ratio(old_logprob, rollout_logprob, mask)
        if level == "sequence":
            log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
        raw = torch.exp(torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND)) * mask.to(log_ratio.dtype)
        return raw.clamp(max=cap)


def _k1_bounds(kind: str, threshold: float | str | Sequence[float]) -> tuple[float, float]:
    """(log lower, log upper) ratio bounds for a *_k1 kind: a single C means [1/C, C]; "lo_hi" or (lo, hi)."""
    if isinstance(threshold, str) and "_" in threshold:
        threshold = tuple(threshold.split("_", 1))
    if isinstance(threshold, (tuple, list)):
        if len(threshold) != 2:
            raise ScirlError(
                f"rollout RS threshold for {kind!r} must be one number or (lower, upper), got {threshold!r}"
            )
        lower = _positive(f"rollout RS lower threshold for {kind!r}", threshold[0])
        upper = _positive(f"rollout RS upper threshold for {kind!r}", threshold[1])
        if lower > upper:
            raise ScirlError(f"rollout RS threshold for {kind!r}: lower {lower} > upper {upper}")
    else:
        upper = _positive(f"rollout RS threshold for {kind!r}", threshold)
        lower = 1.0 / upper
    return math.log(lower), math.log(upper)


def rollout_rs_mask(
    old_logprob: Tensor,
    rollout_logprob: Tensor,
    mask: Tensor,
    kind: str,
    threshold: float | str | Sequence[float],
) -> Tensor:
    """Rejection-sampling mask (verl `compute_rollout_rejection_mask`): `mask` with rejected entries zeroed.

    With r = clamp(lp_old - lp_roll, -20, 20) per valid token, verl's statistics are
      k1 = -r,   k2 = r^2 / 2,   k3 = exp(r) - 1 - r   (divergences of pi_old from pi_roll)
    token_kX rejects single tokens; seq_sum_kX / seq_mean_kX / seq_max_kX reduce the token statistic over the
    valid tokens of a sequence (sum / mean / max) and reject the whole sequence.
    Threshold meaning, as verl:
      *_k1: a RATIO bound. A single C keeps log(1/C) <= stat <= log(C); "lo_hi" or (lo, hi) gives explicit
            bounds log(lo) <= stat <= log(hi).
      *_k2, *_k3: an upper bound on the divergence: keep stat <= threshold.
    Only single kinds are accepted (verl also chains several with commas). Result has `mask`'s dtype.
    """
    if kind not in RS_KINDS:
        raise unknown_name_error("rollout RS kind", kind, RS_KINDS)
    with torch.no_grad():
        r = torch.clamp(_log_ratio(old_logprob, rollout_logprob, mask), -SAFETY_BOUND, SAFETY_BOUND)
        est = kind.rsplit("_", 1)[1]
        stat = {"k1": -r, "k2": 0.5 * r.square(), "k3": torch.exp(r) - 1.0 - r}[est]
        valid = mask != 0
        stat = torch.where(valid, stat, torch.zeros_like(stat))
        if kind.startswith("seq_sum"):
            stat = stat.sum(dim=-1, keepdim=True)
        elif kind.startswith("seq_mean"):
            stat = stat.sum(dim=-1, keepdim=True) / valid.sum(dim=-1, keepdim=True).clamp(min=1)
        elif kind.startswith("seq_max"):
            stat = torch.where(valid, stat, torch.full_like(stat, -math.inf)).amax(dim=-1, keepdim=True)
            stat = torch.where(torch.isinf(stat), torch.zeros_like(stat), stat)  # empty rows -> 0, as verl
        if est == "k1":
            lo, hi = _k1_bounds(kind, threshold)
            keep = (stat >= lo) & (stat <= hi)
        else:
            keep = stat <= _positive(f"rollout RS threshold for {kind!r}", threshold)
        return (mask * keep.expand_as(mask).to(mask.dtype)).to(mask.dtype)


def rollout_correction_metrics(
    weights: Tensor,
    raw_log_ratio: Tensor,
    mask: Tensor,
    rs_mask: Tensor | None = None,
    threshold: float = 2.0,
    level: str = "token",
) -> dict[str, float]:
    """Scalars to log for rollout correction, over the valid tokens of `mask`.

    rollout_is/mean            masked mean of the (truncated) `weights`
    rollout_is/max, /min       over valid tokens of `weights`
    rollout_is/truncated_frac  fraction of valid tokens whose RAW weight exceeded C = `threshold`
                               (raw_log_ratio = lp_old - lp_roll per token; for level="sequence" its masked
                               sum per sequence is compared, and every token of such a sequence counts)
    rollout_rs/masked_frac     fraction of valid tokens that `rs_mask` zeroed (0 when rs_mask is None)
    rollout_rs/seq_masked_frac fraction of non-empty sequences with at least one token zeroed by `rs_mask`
    """
    if level not in IS_LEVELS:
        raise unknown_name_error("rollout IS level", level, IS_LEVELS)
    cap = _positive("rollout IS threshold", threshold)
    with torch.no_grad():
        valid = mask != 0
        log_ratio = torch.where(valid, raw_log_ratio.detach(), torch.zeros_like(raw_log_ratio))
        if level == "sequence":
            log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
        w = weights.detach()
        any_valid = bool(valid.any())
        out = {
            "rollout_is/mean": float(masked_mean(w, mask)),
            "rollout_is/max": float(w[valid].max()) if any_valid else 0.0,
            "rollout_is/min": float(w[valid].min()) if any_valid else 0.0,
            "rollout_is/truncated_frac": float(masked_mean((log_ratio > math.log(cap)).float(), mask)),
            "rollout_rs/masked_frac": 0.0,
            "rollout_rs/seq_masked_frac": 0.0,
        }
        if rs_mask is not None:
            rejected = valid & (rs_mask == 0)
            out["rollout_rs/masked_frac"] = float(masked_mean(rejected.float(), mask))
            rows = valid.any(dim=-1)
            if bool(rows.any()):
                out["rollout_rs/seq_masked_frac"] = float(rejected.any(dim=-1)[rows].float().mean())
        return out
