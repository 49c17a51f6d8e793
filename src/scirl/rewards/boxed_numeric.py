"""The `boxed_numeric` reward: 1.0 when the number in the completion's last \\boxed{...} equals the answer."""

from __future__ import annotations

import math
import re

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.math_text import extract_boxed
from scirl.rewards.base import RewardResult, register_reward

_FRAC = re.compile(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_STRIP = re.compile(r"\s+|,|\$|\\[,!;: ]|\\left|\\right")


def last_boxed(text: str) -> str | None:
    """Content of the LAST \\boxed{...} (or \\fbox{...}) in `text`, braces matched (nesting allowed).

    None when there is no box, or the last box is never closed.
    """
    return extract_boxed(text)  # one brace-matched extractor for every reward (bounded scan, escaped braces)


def parse_number(text: str) -> float | None:
    """A float from a simple numeric string: int, decimal, scientific, `a/b`, `\\frac{a}{b}` (also \\dfrac,
    \\tfrac), optional sign; spaces, commas, `$` and LaTeX spacing are stripped, and `x = 12` keeps the part
    after the last `=`. None when it is not such a number."""
    s = _STRIP.sub("", text)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    while s.startswith("{") and s.endswith("}") and len(s) > 2:
        s = s[1:-1]
    sign = 1.0
    if s[:1] in ("-", "+"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    m = _FRAC.match(s)
    if m:
        num, den = _plain(m.group(1)), _plain(m.group(2))
    elif s.count("/") == 1:
        num, den = (_plain(p) for p in s.split("/"))
    else:
        val = _plain(s)
        return None if val is None else sign * val
    if num is None or den is None or den == 0:
        return None
    return sign * num / den


def _plain(s: str) -> float | None:
    """float(s) for an unsigned finite number (the sign is handled by parse_number), else None."""
    if s[:1] in ("-", "+"):
        return None
    try:
        val = float(s)
    except ValueError:
        return None
    return val if math.isfinite(val) else None


@register_reward("boxed_numeric")
def boxed_numeric(sample: Sample, completion: str, info: dict) -> RewardResult:
    """score 1.0 if the last boxed number is close to float(answer) (info: rel_tol 1e-4, abs_tol 1e-6), else 0.

    components: {"acc": score, "has_box": 0/1}; pred: the raw boxed string (None without a box).
    """
    gt = parse_number(str(sample.answer))
    if gt is None:
        raise ScirlError(f"boxed_numeric: reference answer {sample.answer!r} of {sample.prompt_id!r} is not a number")
    rel_tol = float(info.get("rel_tol", 1e-4)) if info else 1e-4
    abs_tol = float(info.get("abs_tol", 1e-6)) if info else 1e-6
    boxed = last_boxed(completion)
    value = None if boxed is None else parse_number(boxed)
    ok = value is not None and math.isclose(value, gt, rel_tol=rel_tol, abs_tol=abs_tol)
    score = 1.0 if ok else 0.0
    return RewardResult(score, {"acc": score, "has_box": 0.0 if boxed is None else 1.0}, boxed)
