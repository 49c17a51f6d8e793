"""The `math` reward: the last \\boxed{} answer of a completion, graded for mathematical equivalence.

Spec §9 (card (b) `ttrl_math.reward_func`: last \\boxed{}, 1.0 correct / 0.0 otherwise, missing box -> 0) and
§10 (e) (DAPO `math_dapo` with `strict_box_verify=True`: +1 correct, -1 wrong or missing, last 300 chars).

Public API
    compute_math(completion, answer, mode="binary") -> RewardResult
    math_equal(pred, gold, precision=None) -> bool
    extract_boxed(text) -> str | None
    warm_up() -> None   (import math-verify before forking RewardPool workers; else each pays ~0.5 s once)
    reward `math` (registered): info["mode"] in {"binary", "strict_box"}; optional info["precision"].

Pipeline of `math_equal(pred, gold)` (never raises; False on anything it cannot decide):
 1. Clean both strings (lone surrogates -> U+FFFD, unicode math glyphs -> LaTeX) and normalise: strip `$`, \\[ \\],
    a whole-string \\boxed{}, \\left/\\right, LaTeX spacing, \\dfrac/\\tfrac -> \\frac, degree marks (336^\\circ ->
    336), trailing unit text (\\text{ m/s}, \\mbox{cm}, \\mathrm{kg}; plain trailing words after a number such as
    "25 apples" or "3 m/s"), a trailing period. Equal normalised strings -> True.
 2. Plain numbers on both sides (integers with leading zeros, decimals, thousands separators 1,000, fractions,
    a/b, scientific notation 3e8 / 3.0\\times10^{8} / 3\\cdot 10^8, percentages) are compared exactly with
    fractions.Fraction; when either side is written as a decimal, |a-b| <= 5e-7 (math-verify's rounding to 6
    decimals) together with |a-b| <= 2e-6 max(|a|,|b|) also passes, so 0.333333 == 1/3 but 3980000000000.5 !=
    3980000000000 and 1.5e-10 != 1.6e-10. `precision` switches to |a-b| <= 1.01*precision (OlympiadBench).
 3. Size guards before any sympy work: strings over 1000 chars, brace/paren nesting over 30, integer literals
    over 400 digits, exponents worth more than 1e5 (towers like 10^{10^{10^{10}}}), factorials over 2000 or of a
    factorial -> no symbolic comparison (so False unless step 1 matched).
 4. Simple left sides are dropped on both sides (`x = 25`, `v_0 = ...`, `\\Phi(x,y) = ...`, `c \\in ...`,
    `\\Delta p \\approx ...`); an answer that stays a real equation (x^2+y^2=1) is kept whole and compared as an
    equation. Top-level comma lists are compared as unordered multisets element by element (`\\pm a` expands
    to a, -a), with per-element precision when given.
 5. math_verify: `parse("$gold$")`, `parse("$pred$")` (LaTeX and plain-expression extraction), then
    `verify(gold, pred)`. math-verify's own timeouts are DISABLED (they use signal.alarm with whole seconds and
    raise ValueError off the main thread); instead the whole comparison runs under one sub-second-resolution
    deadline (signal.setitimer, MATH_EQUAL_DEADLINE_S) when called on the main thread -- as in RewardPool
    workers -- and relies on the guards (and the pool's kill) elsewhere.
 6. Fallbacks: upright-text macros unwrapped (k_{\\mathrm{B}} -> k_{B}), unknown symbol macros renamed
    (R_{\\odot} -> R_{odot}) and math-verify retried; constant expressions evaluated numerically with
    latex2sympy2_extended when a precision is given (cos^{10}(pi/10) vs 0.6054 at 1e-4).

Judgement calls
 - Percentages: `p\\%` equals both p and p/100 (50\\% == 50 == 0.5), as math-verify does and as the OlympiadBench
   human judges do (60% == 0.6). 51\\% is still wrong for 50.
 - Degrees: 336^\\circ == 336 == 336^{\\circ} (the mark is dropped, no conversion to radians).
 - Units: unit TEXT is dropped (\\text{}, \\mbox{}, \\mathrm{} at the end; trailing words after a number), but a
   bare single letter is a symbol: 0.64N == 0.6400 N but 0.64N != 0.64 (the OlympiadBench human judgement).
 - A simple left side is ignored, so `y = 5` and `x = 5` both match gold 5 (and each other).
 - strict_box: the DAPO verifier compares the box to the gold answer by exact string after normalisation on the
   last 100 chars; we keep its window of 300 chars and its +1/-1 scoring but grade with math_equal, so
   `\\boxed{025}` is right for 25 in both modes.
"""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward

from scirl.rewards.math_text import (  # noqa: F401 (re-exported: extract_boxed and the limits are public)
    MATH_EQUAL_DEADLINE_S,
    MAX_LIST_ITEMS,
    MODES,
    STRICT_BOX_CHARS,
    _Deadline,
    _INNER_TEXT,
    _SURROGATES,
    _clean,
    _deadline,
    _expand_pm,
    _has_relation,
    _is_bracketed,
    _normalize,
    _numbers_equal,
    _parse_number,
    _split_top,
    _squash,
    _strip_lhs,
    _too_big,
    extract_boxed,
)


# --------------------------------------------------------------------------------------------- sympy side
_MV = None


def _math_verify():
    """(parse, verify) with math-verify's signal-based timeouts switched off (we impose our own deadline)."""
    global _MV
    if _MV is None:
        import math_verify
        from math_verify import grader, parser

        # parse(parsing_timeout=None)/verify(timeout_seconds=None) log a one-time warning; we own the timeout.
        parser.TIMEOUT_WARNING_SHOWN = True
        grader.TIMEOUT_WARNING_SHOWN = True
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        _MV = (math_verify.parse, math_verify.verify)
    return _MV


@lru_cache(maxsize=4096)
def _parsed(s: str) -> tuple:
    parse, _ = _math_verify()
    return tuple(parse("$" + s + "$", parsing_timeout=None))


def _mv_equal(pred: str, gold: str) -> bool:
    _, verify = _math_verify()
    g, p = _parsed(gold), _parsed(pred)
    if not g or not p:
        return False
    if "%" not in pred + gold and _clearly_different_constants(p[0], g[0]):
        return False  # e.g. \sqrt{25} vs 26: skip math-verify's simplify, which takes ~10 ms to say no
    return bool(verify(list(g), list(p), timeout_seconds=None))


def _clearly_different_constants(a, b) -> bool:
    """True when a and b are both constant sympy expressions whose values differ by far more than rounding."""
    from sympy import Expr

    if not (isinstance(a, Expr) and isinstance(b, Expr)) or a.free_symbols or b.free_symbols:
        return False
    try:
        va, vb = complex(a.evalf(30)), complex(b.evalf(30))
    except Exception:  # noqa: BLE001 - not a plain number after all
        return False
    if not all(math.isfinite(x) for x in (va.real, va.imag, vb.real, vb.imag)):
        return False
    return abs(va - vb) > 1e-6 * max(1.0, abs(va), abs(vb))


_SYMBOL_MACRO = re.compile(r"\\(odot|oplus|star|ast|bullet|dagger|ddagger|natural|flat|sharp)(?![a-zA-Z])")


def _symbol_fixups(s: str) -> str:
    """Upright-text macros unwrapped (k_{\\mathrm{B}} -> k_{B}); exotic symbol macros renamed to letters."""
    for _ in range(3):
        t = _INNER_TEXT.sub(lambda m: m.group(1).replace(" ", ""), s)
        if t == s:
            break
        s = t
    s = _SYMBOL_MACRO.sub(lambda m: m.group(1), s)
    return re.sub(r"\\(?:mathbf|boldsymbol|bm|vec|hat|bar|tilde|overline)\s*\{([^{}]*)\}", r"\1", s)


def _numeric_value(s: str) -> float | None:
    """Float value of a constant expression via latex2sympy2_extended (None when it has free symbols)."""
    from latex2sympy2_extended import latex2sympy

    expr = latex2sympy(s)
    if getattr(expr, "free_symbols", None):
        return None
    v = complex(expr.evalf(20))
    if abs(v.imag) > 1e-12 or not math.isfinite(v.real):
        return None
    return v.real


def warm_up() -> None:
    """Import math-verify / latex2sympy2_extended and run one symbolic comparison now, so that processes forked
    afterwards (RewardPool workers) start warm instead of paying ~0.5 s inside their first timed call. The imports
    run before, outside math_equal's deadline: on a loaded machine the deadline could cut an import short and leave
    a half-initialised sympy in sys.modules, which breaks torch's own import of it later in the run."""
    import sympy  # noqa: F401

    _math_verify()
    math_equal("x+1", "1+x")


def _precision_at(precision, i: int):
    if isinstance(precision, (list, tuple)):
        return precision[i] if i < len(precision) else (precision[-1] if precision else None)
    return precision


# --------------------------------------------------------------------------------------------- math_equal
def math_equal(pred: str, gold: str, precision: float | list[float] | None = None) -> bool:
    """True when `pred` is mathematically equivalent to the reference `gold` (see the module docstring).

    `precision`: optional ABSOLUTE tolerance for numeric answers (OlympiadBench style); a list gives one per
    element of a comma-separated gold answer. Never raises; anything undecidable or too big is False.
    """
    try:
        with _deadline(MATH_EQUAL_DEADLINE_S):
            return _equal(_clean(pred), _clean(gold), precision, 0)
    except _Deadline:
        return False
    except Exception:  # noqa: BLE001 - a grader must not crash the reward
        return False


def _equal(pred: str, gold: str, precision, depth: int) -> bool:
    p, g = _normalize(pred), _normalize(gold)
    if not p or not g:
        return False
    if p == g or _squash(p) == _squash(g):
        return True
    tol = None if isinstance(precision, (list, tuple)) else precision
    if isinstance(precision, (list, tuple)) and len(precision) == 1:
        tol = precision[0]

    ps, gs = _strip_lhs(p), _strip_lhs(g)
    if ps and gs and (ps == gs or _squash(ps) == _squash(gs)):
        return True
    pn, gn = _parse_number(ps), _parse_number(gs)
    if pn is not None and gn is not None:
        return _numbers_equal(pn, gn, tol)
    if (ps.isalpha() and gs.isalpha() and len(gs) >= 3) and ps.casefold() == gs.casefold():
        return True
    if _too_big(p) or _too_big(g):
        return False

    # comma lists (unordered), not tuples/intervals: compare element-wise
    if depth == 0:
        g_items = _expand_pm(_split_top(gs))
        p_items = _expand_pm(_split_top(ps))
        if (len(g_items) > 1 or len(p_items) > 1) and not (_is_bracketed(gs) and len(_split_top(gs)) == 1):
            # same length: match one to one; different lengths: math-verify decides (it knows sets vs tuples)
            if len(g_items) == len(p_items) <= MAX_LIST_ITEMS and _match_lists(p_items, g_items, precision):
                return True

    # an answer that is still an equation after dropping a simple left side is compared whole
    if _has_relation(ps) or _has_relation(gs):
        mp, mg = p, g
    else:
        mp, mg = ps, gs
    if _mv_equal(mp, mg):
        return True
    fp, fg = _symbol_fixups(mp), _symbol_fixups(mg)
    if (fp, fg) != (mp, mg) and (fp == fg or _mv_equal(fp, fg)):
        return True
    if tol is not None and not _has_relation(ps) and not _has_relation(gs):
        a, b = _numeric_value(fp), _numeric_value(fg)
        if a is not None and b is not None and abs(a - b) <= 1.01 * float(tol):
            return True
    return False


def _match_lists(p_items: list[str], g_items: list[str], precision) -> bool:
    """Unordered one-to-one match of pred items to gold items (greedy, gold order), per-gold precision."""
    left = list(p_items)
    for i, g in enumerate(g_items):
        tol = _precision_at(precision, i)
        for j, p in enumerate(left):
            if _equal(p, g, tol, 1):
                del left[j]
                break
        else:
            return False
    return True


# --------------------------------------------------------------------------------------------- the reward
def _gold_text(answer: object) -> str:
    s = _clean(answer)
    if "####" in s:  # a raw GSM8K rationale: the final answer follows the last ####
        s = s.rsplit("####", 1)[1]
    return s.strip()


def compute_math(completion: str, answer: str, mode: str = "binary", precision=None) -> RewardResult:
    """Grade the last \\boxed{} of `completion` against `answer`.

    mode "binary" (spec §9 ttrl_math): score 1.0 correct, 0.0 wrong or no box.
    mode "strict_box" (spec §10 (e), DAPO math_dapo strict box): only the last 300 chars are read; +1.0 correct,
    -1.0 wrong or no box. components {"acc": 0/1, "has_box": 0/1}; pred = the boxed string (None without a box).
    Never raises on odd text; an unknown mode is a ScirlError.
    """
    if mode not in MODES:
        raise ScirlError(f"math reward: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    wrong = -1.0 if mode == "strict_box" else 0.0
    try:
        text = completion if isinstance(completion, str) else ("" if completion is None else str(completion))
        if mode == "strict_box":
            text = text[-STRICT_BOX_CHARS:]
        if _SURROGATES.search(text):  # undecodable bytes: keep the length, make the pred picklable / JSON-able
            text = _SURROGATES.sub("\ufffd", text)
        boxed = extract_boxed(text)
    except Exception:  # noqa: BLE001
        boxed = None
    if boxed is None:
        return RewardResult(wrong, {"acc": 0.0, "has_box": 0.0}, None)
    ok = math_equal(boxed, _gold_text(answer), precision)
    return RewardResult(1.0 if ok else wrong, {"acc": 1.0 if ok else 0.0, "has_box": 1.0}, boxed)


@register_reward("math")
def math_reward(sample: Sample, completion: str, info: dict) -> RewardResult:
    """The `math` reward: compute_math(completion, sample.answer, info.get("mode", "binary")).

    info: "mode" ("binary" | "strict_box"), optional "precision" (absolute tolerance, or a list per answer).
    """
    info = info or {}
    return compute_math(completion, sample.answer, str(info.get("mode", "binary")), info.get("precision"))
