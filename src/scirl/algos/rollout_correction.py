"""Rollout correction for trainer/rollout-engine mismatch (current verl `trainer/ppo/rollout_corr_helper.py`).

log_ratio = lp_old - lp_roll (trainer-recomputed over rollout-engine log-probs), per token.

* `rollout_is_weights`: IS weights, detached. One upper bound C truncates (TIS, w = min(rho, C)); a lower bound
  too (verl's "lower_upper" threshold string, or `threshold_lower`) zeroes weights outside [lower, upper]
  (IcePop); `normalize_is_weights` rescales them to mean 1 (verl `rollout_is_batch_normalize`).
* `rollout_rs_mask`: rejection sampling, a new response mask with rejected tokens / sequences zeroed; several
  comma-separated kinds chain (a token survives only if every kind keeps it), one threshold each.
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
Threshold = float | str | Sequence[float]


def _log_ratio(old_logprob: Tensor, rollout_logprob: Tensor, mask: Tensor) -> Tensor:
    """lp_old - lp_roll on valid tokens, 0 elsewhere."""
    if not (old_logprob.shape == rollout_logprob.shape == mask.shape) or mask.dim() != 2:
        raise ScirlError(
            "rollout correction expects [B, T] old_logprob, rollout_logprob and mask of one shape, got "
            f"{tuple(old_logprob.shape)}, {tuple(rollout_logprob.shape)}, {tuple(mask.shape)}"
        )
    diff = old_logprob.detach() - rollout_logprob.detach()
    return torch.where(mask != 0, diff, torch.zeros_like(diff))


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScirlError(f"{name} must be a positive number, got {value!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise ScirlError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _bounds(name: str, spec: Threshold) -> tuple[float | None, float]:
    """(lower or None, upper) from a number, a numeric string, "lower_upper" or (lower, upper); lower <= upper."""
    if isinstance(spec, bool):
        raise ScirlError(f"{name} must be a number or 'lower_upper', got {spec!r}")
    if isinstance(spec, str) and "_" in spec:
        spec = tuple(spec.strip().split("_", 1))
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ScirlError(f"{name} must be one number or (lower, upper), got {spec!r}")
        lower, upper = _positive(f"{name} (lower)", spec[0]), _positive(f"{name} (upper)", spec[1])
        if lower > upper:
            raise ScirlError(f"{name}: lower {lower} > upper {upper}")
        return lower, upper
    return None, _positive(name, spec)


def is_threshold_bounds(threshold: Threshold, threshold_lower: float | None = None) -> tuple[float | None, float]:
    """(lower or None, upper) of the IS weights, as verl's `_parse_rollout_is_threshold`.

    A number C (or "C") is TIS: truncate at C, no lower bound. "lower_upper" (e.g. "0.5_5.0") or an explicit
    `threshold_lower` with a number C gives IcePop bounds [lower, C]; giving both lower forms is an error.
    """
    lower, upper = _bounds("rollout IS threshold", threshold)
    if threshold_lower is not None:
        if lower is not None:
            raise ScirlError(f"rollout IS threshold {threshold!r} already has a lower bound; do not also give "
                             f"threshold_lower={threshold_lower}")
        lower = _positive("rollout IS threshold_lower", threshold_lower)
        if lower > upper:
            raise ScirlError(f"rollout IS threshold_lower {lower} > threshold {upper}")
    return lower, upper


def rollout_is_weights(
    old_logprob: Tensor,
    rollout_logprob: Tensor,
    mask: Tensor,
    level: str = "token",
    threshold: Threshold = 2.0,
    threshold_lower: float | None = None,
) -> Tensor:
    """IS weights [B, T], detached (verl `compute_rollout_correction_weights`).

    raw: token    rho_t = exp(clamp(lp_old - lp_roll, -20, 20)) * m_t
         sequence rho_i = exp(clamp(sum_t m_t (lp_old - lp_roll), -20, 20)), broadcast to tokens, * m_t
    TIS (upper bound C only): w = min(rho, C); nothing is clamped from below and nothing is zeroed.
    IcePop (bounds [lower, C], see `is_threshold_bounds`): w = rho inside [lower, C], 0 outside (for the
    sequence level the whole row). The response mask itself is unchanged either way.
    """
    if level not in IS_LEVELS:
        raise unknown_name_error("rollout IS level", level, IS_LEVELS)
    lower, upper = is_threshold_bounds(threshold, threshold_lower)
    with torch.no_grad():
        log_ratio = _log_ratio(old_logprob, rollout_logprob, mask)
        if level == "sequence":
            log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
        raw = torch.exp(torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND)) * mask.to(log_ratio.dtype)
        if lower is None:
            return raw.clamp(max=upper)
        return torch.where((raw >= lower) & (raw <= upper), raw, torch.zeros_like(raw))


def normalize_is_weights(weights: Tensor, mask: Tensor, level: str = "token") -> tuple[Tensor, float]:
    """verl `rollout_is_batch_normalize`: (weights / mean, mean), so the weights average 1 over the batch.

    token: the mean over valid tokens; sequence: the mean over non-empty sequences of each sequence's weight.
    A mean <= 1e-8 leaves the weights as they are and reports a factor of 1.0 (as verl).
    """
    if level not in IS_LEVELS:
        raise unknown_name_error("rollout IS level", level, IS_LEVELS)
    with torch.no_grad():
        if level == "token":
            mean = masked_mean(weights, mask)
        else:
            rows = mask.sum(dim=-1) > 0
            seq = masked_mean(weights, mask, dim=-1)
            mean = seq[rows].mean() if bool(rows.any()) else torch.zeros((), dtype=weights.dtype)
        if float(mean) > 1e-8:
            return weights / mean, float(mean)
        return weights, 1.0


def rs_kinds(spec: str) -> list[str]:
    """The kinds of a comma-separated `rollout_rs` string, duplicates dropped in order (as verl)."""
    kinds = []
    for kind in (k.strip() for k in str(spec).split(",")):
        if kind and kind not in kinds:
            if kind not in RS_KINDS:
                raise unknown_name_error("rollout RS kind", kind, RS_KINDS)
            kinds.append(kind)
    if not kinds:
        raise ScirlError(f"rollout RS kinds {spec!r} name no kind; known: {', '.join(RS_KINDS)}")
    return kinds


def rs_thresholds(kinds: list[str], threshold: Threshold) -> dict[str, tuple[float | None, float]]:
    """(lower or None, upper) per kind, as verl's `_parse_rollout_rs_thresholds`.

    `threshold` is one entry shared by every kind or a comma-separated string with one entry per kind. *_k1
    entries are RATIO bounds: "lo_hi" (or a (lo, hi) pair for a single kind), or one C meaning [1/C, C].
    k2 / k3 entries are one upper bound on the divergence.
    """
    if isinstance(threshold, str):
        specs: list = [s.strip() for s in threshold.split(",") if s.strip()]
    else:
        specs = [threshold]
    if len(specs) not in (1, len(kinds)):
        raise ScirlError(f"rollout RS threshold {threshold!r} has {len(specs)} entries for {len(kinds)} kinds "
                         f"({','.join(kinds)}): give one shared entry or one per kind")
    specs = specs * len(kinds) if len(specs) == 1 else specs
    out = {}
    for kind, spec in zip(kinds, specs):
        lower, upper = _bounds(f"rollout RS threshold for {kind!r}", spec)
        if kind.endswith("k1"):
            out[kind] = (1.0 / upper if lower is None else lower, upper)
        elif lower is not None:
            raise ScirlError(f"rollout RS threshold for {kind!r} is one upper bound on the divergence, not "
                             f"'lower_upper' (got {spec!r})")
        else:
            out[kind] = (None, upper)
    return out


def rollout_rs_masks(
    old_logprob: Tensor, rollout_logprob: Tensor, mask: Tensor, kinds: str, threshold: Threshold
) -> dict[str, Tensor]:
    """One keep-mask per kind of `kinds` (see `rollout_rs_mask`), each computed on the input `mask`."""
    names = rs_kinds(kinds)
    bounds = rs_thresholds(names, threshold)
    out = {}
    with torch.no_grad():
        r = torch.clamp(_log_ratio(old_logprob, rollout_logprob, mask), -SAFETY_BOUND, SAFETY_BOUND)
        valid = mask != 0
        for kind in names:
            est = kind.rsplit("_", 1)[1]
            stat = {"k1": -r, "k2": 0.5 * r.square(), "k3": torch.exp(r) - 1.0 - r}[est]
            stat = torch.where(valid, stat, torch.zeros_like(stat))
            if kind.startswith("seq_sum"):
                stat = stat.sum(dim=-1, keepdim=True)
            elif kind.startswith("seq_mean"):
                stat = stat.sum(dim=-1, keepdim=True) / valid.sum(dim=-1, keepdim=True).clamp(min=1)
            elif kind.startswith("seq_max"):
                stat = torch.where(valid, stat, torch.full_like(stat, -math.inf)).amax(dim=-1, keepdim=True)
                stat = torch.where(torch.isinf(stat), torch.zeros_like(stat), stat)  # empty rows -> 0, as verl
            lower, upper = bounds[kind]
            if est == "k1":
                keep = (stat >= math.log(lower)) & (stat <= math.log(upper))
            else:
                keep = stat <= upper
            out[kind] = (mask * keep.expand_as(mask).to(mask.dtype)).to(mask.dtype)
    return out


def rollout_rs_mask(
    old_logprob: Tensor,
    rollout_logprob: Tensor,
    mask: Tensor,
    kind: str,
    threshold: Threshold,
) -> Tensor:
    """Rejection-sampling mask (verl `compute_rollout_rejection_mask`): `mask` with rejected entries zeroed.

    With r = clamp(lp_old - lp_roll, -20, 20) per valid token, verl's statistics are
      k1 = -r,   k2 = r^2 / 2,   k3 = exp(r) - 1 - r   (divergences of pi_old from pi_roll)
    token_kX rejects single tokens; seq_sum_kX / seq_mean_kX / seq_max_kX reduce the token statistic over the
    valid tokens of a sequence (sum / mean / max) and reject the whole sequence.
    Threshold meaning, as verl (see `rs_thresholds`):
      *_k1: a RATIO bound. A single C keeps log(1/C) <= stat <= log(C); "lo_hi" or (lo, hi) gives explicit
            bounds log(lo) <= stat <= log(hi).
      *_k2, *_k3: an upper bound on the divergence: keep stat <= threshold.
    `kind` may chain several comma-separated kinds ("token_k1,seq_mean_k3", threshold "0.5_2.0,0.01"): each
    statistic is computed on the input mask and a token survives only if every kind keeps it (verl's AND).
    Result has `mask`'s dtype.
    """
    keep = mask
    for kind_mask in rollout_rs_masks(old_logprob, rollout_logprob, mask, kind, threshold).values():
        keep = keep * kind_mask
    return keep.to(mask.dtype)


def _rejected_fracs(rs_mask: Tensor, valid: Tensor, mask: Tensor) -> tuple[float, float]:
    """(fraction of valid tokens zeroed, fraction of non-empty rows with at least one token zeroed)."""
    rejected = valid & (rs_mask == 0)
    rows = valid.any(dim=-1)
    seq = float(rejected.any(dim=-1)[rows].float().mean()) if bool(rows.any()) else 0.0
    return float(masked_mean(rejected.float(), mask)), seq


def rollout_correction_metrics(
    weights: Tensor,
    raw_log_ratio: Tensor,
    mask: Tensor,
    rs_mask: Tensor | None = None,
    threshold: Threshold = 2.0,
    level: str = "token",
    threshold_lower: float | None = None,
    rs_masks: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Scalars to log for rollout correction, over the valid tokens of `mask`.

    rollout_is/mean            masked mean of the IS `weights` (before any batch normalisation, as verl)
    rollout_is/max, /min       over valid tokens of `weights`
    rollout_is/truncated_frac  fraction of valid tokens whose RAW weight exceeded the upper bound
                               (raw_log_ratio = lp_old - lp_roll per token; for level="sequence" its masked
                               sum per sequence is compared, and every token of such a sequence counts)
    rollout_is/oob_frac        IcePop only (a lower bound is set): fraction of valid tokens whose raw weight lay
                               outside [lower, upper] and was zeroed (verl rollout_is_oob_ratio)
    rollout_rs/masked_frac     fraction of valid tokens that `rs_mask` zeroed (0 when rs_mask is None)
    rollout_rs/seq_masked_frac fraction of non-empty sequences with at least one token zeroed by `rs_mask`
    rollout_rs/<kind>/masked_frac, /seq_masked_frac   the same per kind, for a chain of several (`rs_masks`)
    """
    if level not in IS_LEVELS:
        raise unknown_name_error("rollout IS level", level, IS_LEVELS)
    lower, upper = is_threshold_bounds(threshold, threshold_lower)
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
            "rollout_is/truncated_frac": float(masked_mean((log_ratio > math.log(upper)).float(), mask)),
            "rollout_rs/masked_frac": 0.0,
            "rollout_rs/seq_masked_frac": 0.0,
        }
        if lower is not None:
            raw = torch.exp(torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND))
            outside = (raw < lower) | (raw > upper)
            out["rollout_is/oob_frac"] = float(masked_mean(outside.float(), mask))
        if rs_mask is not None:
            out["rollout_rs/masked_frac"], out["rollout_rs/seq_masked_frac"] = _rejected_fracs(rs_mask, valid, mask)
        if rs_masks is not None and len(rs_masks) > 1:
            for kind, kind_mask in rs_masks.items():
                token, seq = _rejected_fracs(kind_mask, valid, mask)
                out[f"rollout_rs/{kind}/masked_frac"], out[f"rollout_rs/{kind}/seq_masked_frac"] = token, seq
        return out


def logprob_diff_metrics(old_lp: torch.Tensor, rollout_lp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the engine's sampling log-probs are from the trainer's recompute of the same tokens (before any
    update): mean and max |lp_old - lp_rollout| over response tokens. fp32 on one device: ~1e-5; a large value
    means the engine's weights, dtype or sampling temperature differ from the trainer's."""
    diff = (old_lp - rollout_lp).abs()[mask > 0]
    if diff.numel() == 0:
        return {}
    return {"rollout/logprob_diff_mean": float(diff.mean()), "rollout/logprob_diff_max": float(diff.max())}
