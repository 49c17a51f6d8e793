"""Format rewards from the PHYBench-GRPO seed: `format_boxed` (a `\\boxed{` is present) and `trace_steps`
(the completion has at least N newlines, a crude "shows its steps" signal). Both return pred=None."""

from __future__ import annotations

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward


@register_reward("format_boxed")
def format_boxed(sample: Sample, completion: str, info: dict) -> RewardResult:
    """1.0 if the literal `\\boxed{` occurs anywhere in the completion, else 0.0 (closed or not)."""
    score = 1.0 if "\\boxed{" in completion else 0.0
    return RewardResult(score, {"format_boxed": score}, None)


@register_reward("trace_steps")
def trace_steps(sample: Sample, completion: str, info: dict) -> RewardResult:
    """1.0 if completion.count("\\n") >= N, with N = info["min_steps"] (default 6), else 0.0.

    components: {"trace_steps": score, "newlines": count}.
    """
    raw = (info or {}).get("min_steps", 6)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ScirlError(f"trace_steps: min_steps must be a non-negative integer, got {raw!r}")
    newlines = completion.count("\n")
    score = 1.0 if newlines >= raw else 0.0
    return RewardResult(score, {"trace_steps": score, "newlines": float(newlines)}, None)
