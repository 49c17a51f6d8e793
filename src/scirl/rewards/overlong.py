"""The `overlong` reward wrapper: an inner reward plus DAPO's soft overlong penalty (spec §6.4).

info = {"inner": <registered reward name>, "inner_info": {...}, "max_len": L_max, "buffer_len": L_buf,
        "penalty_factor": f (default 1.0), "length": <response length in tokens>}

score = inner.score + R_len, with L_exp = L_max - L_buf and
R_len = 0 if length <= L_exp else -(length - L_exp) / L_buf * f   (= -f at length == L_max; like verl it is not
clipped for longer responses). This is `scirl.algos.overlong.overlong_penalty` for one scalar, without torch.

The inner reward is called with `info` minus the wrapper's own keys, updated with `inner_info` (so per-row fields
such as `num_turns` or `choices` reach it either way; `inner_info` wins). components: the inner components plus
"overlong_penalty" (and "inner_score"); pred: the inner pred. Worked (L_max 20480, L_buf 3000, f 1):
17480 -> 0, 18980 -> -0.5, 20480 -> -1.0.
"""

from __future__ import annotations

import math

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, get_reward, register_reward
from scirl.rewards.user import to_result

WRAPPER_KEYS = ("inner", "inner_info", "max_len", "buffer_len", "penalty_factor", "length")


def overlong_penalty_scalar(length: float, max_len: int, buffer_len: int, factor: float = 1.0) -> float:
    """0 if length <= max_len - buffer_len, else -(length - (max_len - buffer_len)) / buffer_len * factor."""
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0:
        raise ScirlError(f"overlong penalty: max_len must be a positive int, got {max_len!r}")
    if not isinstance(buffer_len, int) or isinstance(buffer_len, bool) or not 0 < buffer_len <= max_len:
        raise ScirlError(f"overlong penalty: buffer_len must be an int in (0, max_len={max_len}], got {buffer_len!r}")
    expected = max_len - buffer_len
    return min(-(float(length) - expected) / buffer_len * float(factor), 0.0) + 0.0  # + 0.0: no -0.0


def _number(info: dict, key: str, default: float | None = None) -> float:
    value = info.get(key, default)
    if value is None:
        raise ScirlError(f"overlong: info[{key!r}] is required (response length in tokens for 'length')")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScirlError(f"overlong: info[{key!r}] must be a finite number, got {value!r}")
    return value


@register_reward("overlong")
def overlong(sample: Sample, completion: str, info: dict) -> RewardResult:
    """The inner reward's score plus the DAPO overlong penalty; see the module docstring."""
    info = info or {}
    inner_name = info.get("inner")
    if not isinstance(inner_name, str) or not inner_name:
        raise ScirlError("overlong: info['inner'] must name the wrapped reward, e.g. 'tcr' or 'boxed_numeric'")
    if inner_name == "overlong":
        raise ScirlError("overlong: the inner reward cannot be 'overlong' itself")
    inner_info = info.get("inner_info") or {}
    if not isinstance(inner_info, dict):
        raise ScirlError(f"overlong: info['inner_info'] must be a dict, got {type(inner_info).__name__}")
    for key in ("max_len", "buffer_len"):
        if key not in info:
            raise ScirlError(f"overlong: info[{key!r}] is required")
    penalty = overlong_penalty_scalar(_number(info, "length"), info["max_len"], info["buffer_len"],
                                      _number(info, "penalty_factor", 1.0))
    fn = get_reward(inner_name)
    inner = fn(sample, completion, {**{k: v for k, v in info.items() if k not in WRAPPER_KEYS}, **inner_info})
    inner = to_result(inner)  # a plain number or a numeric string, as the pool also accepts; else BadRewardValue
    components = {**inner.components, "inner_score": float(inner.score), "overlong_penalty": penalty}
    return RewardResult(float(inner.score) + penalty, components, inner.pred)
