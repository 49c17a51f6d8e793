"""The `tcr` reward: GRPO-TCR's tool-call reward (spec §10 (e), Open-AgentRL `recipe/demystify/reward.py`).

base s = compute_math(completion, answer, mode="strict_box").score  (+1 correct, -1 wrong or no box; the
DAPO math verifier on the last 300 characters). If s < 0:  s = min(-0.6, s + 0.1 * (num_turns - 2) / 2),
where num_turns = user_turns + assistant_turns + 1, so (num_turns - 2) / 2 is the number of tool-call rounds.
Wrong with 0 calls (num_turns 2) -> -1.0; 3 calls (8) -> -0.7; >= 4 calls -> -0.6 (cap); correct -> +1.0 (no
tool bonus).

num_turns MUST come in `info["num_turns"]` (verl's `__num_turns__` is accepted as an alias). It is never
defaulted: verl's DAPO reward manager drops `__num_turns__`, the reward then reads 0 and every wrong answer
silently scores -1.1 -- the pitfall the spec warns about -- so a missing or invalid value raises ScirlError.

components: {"acc": 1.0/0.0 (correct), "base": the ±1 strict-box score, "num_turns"}; pred: compute_math's pred.
"""

from __future__ import annotations

import math

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward
from scirl.rewards.math_reward import compute_math, warm_up  # noqa: F401 (warm_up: RewardPool pre-fork hook)

TOOL_BONUS_PER_CALL = 0.1
WRONG_CAP = -0.6


def num_turns_from(info: dict | None) -> int:
    """info["num_turns"] (or "__num_turns__") as an int >= 2; ScirlError when missing or invalid."""
    info = info or {}
    key = "num_turns" if "num_turns" in info else "__num_turns__" if "__num_turns__" in info else None
    if key is None:
        raise ScirlError("tcr: info['num_turns'] is required (user_turns + assistant_turns + 1, >= 2); it is "
                         "never defaulted, because a missing value would silently score wrong answers -1.1")
    value = info[key]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ScirlError(f"tcr: info[{key!r}] must be an int >= 2 (user_turns + assistant_turns + 1), got {value!r}")
    return value


def tcr_score(base: float, num_turns: int) -> float:
    """The shaped score: base when base >= 0, else min(-0.6, base + 0.1 * (num_turns - 2) / 2)."""
    if base >= 0:
        return float(base)
    return round(min(WRONG_CAP, base + TOOL_BONUS_PER_CALL * (num_turns - 2) / 2), 10)


@register_reward("tcr")
def tcr(sample: Sample, completion: str, info: dict) -> RewardResult:
    """GRPO-TCR reward; see the module docstring. Requires info["num_turns"]."""
    num_turns = num_turns_from(info)
    res = compute_math(completion, str(sample.answer), mode="strict_box")
    base = float(res.score)
    score = tcr_score(base, num_turns)
    return RewardResult(score, {"acc": 1.0 if base > 0 else 0.0, "base": base, "num_turns": float(num_turns)},
                        res.pred)
