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
import signal
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache
from typing import Iterator

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward

MODES = ("binary", "strict_box")
STRICT_BOX_CHARS = 300  # DAPO math_dapo: solution_str[-300:]
MATH_EQUAL_DEADLINE_S = 2.0  # wall-clock budget of one math_equal call (main thread only)
MAX_SYMBOLIC_LEN = 1000  # longer answers are compared as strings only
MAX_BOX_CHARS = 20_000  # a \boxed{ not closed within this many chars counts as no box
MAX_NESTING = 30
MAX_INT_DIGITS = 400
MAX_EXPONENT = 1e5
MAX_COMPOUND_EXPONENT = 40  # (a+b)^n with n above this is not expanded symbolically
MAX_FACTORIAL = 2000
MAX_LIST_ITEMS = 20
_DECIMAL_ABS_TOL = Fraction(5, 10**7)  # math-verify rounds floats to 6 decimals ...
_DECIMAL_REL_TOL = Fraction(2, 10**6)  # ... but 1.5e-10 is not 1.6e-10: also ~6 significant digits


# --------------------------------------------------------------------------------------------- extraction
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*(\{|\s)")


def extract_boxed(text: str) -> str | None:
    """Content of the LAST \\boxed{...} / \\fbox{...} in `text` (braces matched, nesting allowed), also the
    brace-less `\\boxed 5` form. None when there is no box, or the last box is not closed within MAX_BOX_CHARS."""
    if not text or "\\" not in text:
        return None
    last = None
    for last in _BOX_START.finditer(text):
        pass
    if last is None:
        return None
    begin = last.end()
    if last.group(1) != "{":  # `\boxed 5`: up to the next whitespace or `$`
        m = re.match(r"\s*([^\s$]+)", text[begin:begin + 200])
        return m.group(1) if m else None
    depth = 1
    end = min(len(text), begin + MAX_BOX_CHARS)
    i = begin
    while i < end:
        ch = text[i]
        if ch == "\\":  # skip escaped braces \{ \}
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
        i += 1
    return None


# --------------------------------------------------------------------------------------------- deadline
class _Deadline(BaseException):
    """Raised by the SIGALRM handler; a BaseException so `except Exception` inside sympy/math-verify lets it out."""


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise _Deadline after `seconds` (setitimer; main thread only, elsewhere a no-op). Restores any outer timer."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise _Deadline()

    try:
        old_handler = signal.signal(signal.SIGALRM, handler)
    except ValueError:  # not the main interpreter
        yield
        return
    start = time.monotonic()
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        while True:  # the timer may fire while we disarm it: retry until it is off
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except _Deadline:
                continue
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # someone outside had a timer running: give it back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, old_delay - (time.monotonic() - start)))


# --------------------------------------------------------------------------------------------- normalisation
_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ",
    "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u221e": "\\infty ", "\u00b1": "\\pm ", "\u2264": "\\le ",
    "\u2265": "\\ge ", "\u00b0": "^\\circ", "\u2032": "'", "\u00a0": " ", "\ufeff": "",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SURROGATES = re.compile("[\ud800-\udfff]")
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\quad|\\qquad|\\displaystyle|\\textstyle|~")  # not the `\\` of `\\ 2`
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])\s*")
_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\^\s*\{\s*o\s*\}(?=\s*$)")
_TEXT_MACRO = r"\\(?:text|textrm|textnormal|mbox|mathrm|rm|textit|mathit|operatorname)\s*"
_TRAILING_TEXT = re.compile(r"(?:\s*" + _TEXT_MACRO + r"\{[^{}]*\}(?:\s*\^\s*(?:\{\s*-?\d\s*\}|-?\d))?)+\s*$")
_WHOLE_TEXT = re.compile(r"^\s*(?:" + _TEXT_MACRO + r"|\\(?:mathbf|textbf|boldsymbol|bm)\s*)\{([^{}]*)\}\s*$")
_INNER_TEXT = re.compile(_TEXT_MACRO + r"\{([^{}]*)\}")
_NUMBERISH = r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:\s*\\%|\s*%)?"
# a number followed by unit words ("25 apples", "3 m/s", "12 cm^2"): no nested quantifiers (no backtracking
# blow-up); the unit part must hold two letters in a row or a `/`, and must not start with a function name
_TRAILING_WORDS = re.compile(r"^(" + _NUMBERISH + r")\s*(?!(?:ln|log|sin|cos|tan|exp|sqrt|pi|e)\b)"
                             r"([A-Za-z][A-Za-z0-9 /^.\-]*)$")
_FRAC_CMDS = re.compile(r"\\[dt]frac(?![a-zA-Z])|\\cfrac(?![a-zA-Z])")
_DELIMS = re.compile(r"^\s*(?:\$\$?|\\\[|\\\()(.*?)(?:\$\$?|\\\]|\\\))\s*$", re.S)


_NOT_UNITS = {"or", "and", "to", "through", "with", "plus", "minus", "times", "over", "but", "not", "if", "is",
              "are", "then", "because", "since", "for", "when", "where", "else", "otherwise", "both", "either"}


def _is_unit_text(tail: str) -> bool:
    """Whether the words after a number are unit text ("apples", "m/s", "cm^2", "km per hour"), not more answer
    ("or 6", "and 7", "x 3")."""
    tokens = [t for t in re.split(r"[\s/.^-]+", tail) if t]
    if any(t.isdigit() and not re.search(r"\^\s*" + t, tail) for t in tokens):
        return False
    if any(t.lower() in _NOT_UNITS for t in tokens):
        return False
    return bool(re.search(r"[A-Za-z]{2}", tail) or "/" in tail)


def _clean(s: object) -> str:
    s = "" if s is None else str(s)
    if _SURROGATES.search(s):
        s = _SURROGATES.sub("\ufffd", s)
    return _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)


def _unwrap_whole_box(s: str) -> str:
    m = re.match(r"^\s*\\(?:boxed|fbox)\s*\{", s)
    if m:
        inner = extract_boxed(s)
        if inner is not None and s.rstrip().endswith("}") and len(inner) + m.end() + 1 >= len(s.rstrip()):
            return inner
    return s


def _normalize(s: str) -> str:
    """String-level normalisation shared by both sides (see the module docstring, step 1)."""
    s = s.strip().replace("\\$", "")  # a dollar sign as currency
    if len(s) > 4 * MAX_SYMBOLIC_LEN:  # too long to be an answer worth normalising (and not worth caching)
        return s
    return _normalize_cached(s)


@lru_cache(maxsize=8192)
def _normalize_cached(s: str) -> str:
    for _ in range(3):
        m = _DELIMS.match(s)
        if m:
            s = m.group(1).strip()
        s = _unwrap_whole_box(s).strip()
    s = s.replace("$", "")
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _FRAC_CMDS.sub(r"\\frac", s)
    s = _DEGREE.sub("", s)
    s = s.replace("\\dots", "\\ldots").replace("\\!", "")
    m = _WHOLE_TEXT.match(s)
    if m:
        s = m.group(1)
    else:
        stripped = _TRAILING_TEXT.sub("", s)
        if stripped.strip():
            s = stripped
    m = _TRAILING_WORDS.match(s.strip())
    if m and _is_unit_text(m.group(2)):
        s = m.group(1)
    s = re.sub(r"\s+", " ", s).strip()
    if s.endswith(".") and not re.search(r"\d\.$", s):
        s = s[:-1].rstrip()
    return s


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


# --- left-hand sides -------------------------------------------------------------------------------
_ATOM = (r"(?:[A-Za-z]|\\[A-Za-z]+)"  # a letter or a macro such as \Phi, \Delta
         r"(?:\s*_\s*(?:\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}|[A-Za-z0-9]))?"  # subscript
         r"(?:\s*\^\s*(?:\{\s*\\prime\s*\}|\\prime|\{\s*'+\s*\})|')*")  # primes
_LHS = re.compile(r"^\s*" + _ATOM + r"(?:\s*" + _ATOM + r")?"
                  r"(?:\s*\((?:[^()]*)\))?\s*(?:=|\\approx|\\simeq|\\equiv|\\in(?![a-zA-Z])|:=)\s*")
_RELATION = re.compile(r"(?<![<>!\\])=|\\approx|\\simeq|\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|\\leq|\\geq|<|>|\\neq"
                       r"|\\in(?![a-zA-Z])")


def _strip_lhs(s: str) -> str:
    """Drop a simple left side (`x = `, `a_{n} =`, `\\Phi(x,y)=`, `c \\in`, `\\Delta p \\approx`), repeatedly."""
    for _ in range(4):
        m = _LHS.match(s)
        if not m or not s[m.end():].strip():
            break
        # `x = 1 = y`? keep going only on what is after the relation
        s = s[m.end():]
    return s.strip()


def _has_relation(s: str) -> bool:
    return bool(_RELATION.search(s))


# --------------------------------------------------------------------------------------------- numbers
_INT = re.compile(r"^[-+]?\d+$")
_DEC = re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCI_E = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d{1,3})$")
_SCI_TIMES = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+))\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d{1,3})\s*\}?"
                        r"$")
_POW10 = re.compile(r"^([-+])?10\s*\^\s*\{?\s*([-+]?\d{1,3})\s*\}?$")
_FRAC_NUM = re.compile(r"^([-+])?\\frac\s*\{\s*([-+]?[\d.]+)\s*\}\s*\{\s*([-+]?[\d.]+)\s*\}$")
_FRAC_NUM_SHORT = re.compile(r"^([-+])?\\frac\s*(\d)\s*(\d)$")
_SLASH = re.compile(r"^([-+]?[\d.]+)\s*/\s*([-+]?[\d.]+)$")
_PCT = re.compile(r"^(.*?)\s*\\?%$")


def _dec(s: str) -> Fraction | None:
    if not _DEC.match(s) or len(s) > MAX_INT_DIGITS:
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _parse_number(s: str) -> tuple[Fraction, bool, bool] | None:
    """(value, is_percent, written_as_decimal) for a plain number, else None. Exact (Fraction)."""
    s = s.strip().replace(" ", "")
    if len(s) > 2 and s[0] + s[-1] in ("{}", "()") and s.count(s[0]) == 1:  # {25}, (25)
        s = s[1:-1]
    pct = False
    m = _PCT.match(s)
    if m:
        s, pct = m.group(1), True
    if not s or len(s) > MAX_INT_DIGITS:
        return None
    decimal = "." in s
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    v = _dec(s)
    if v is not None:
        return v, pct, decimal and not _INT.match(s)
    m = _SCI_E.match(s) or _SCI_TIMES.match(s)
    if m:
        mant = _dec(m.group(1))
        if mant is None:
            return None
        return mant * Fraction(10) ** int(m.group(2)), pct, "." in m.group(1)
    m = _POW10.match(s)
    if m:
        v = Fraction(10) ** int(m.group(2))
        return (-v if m.group(1) == "-" else v), pct, False
    m = _FRAC_NUM.match(s) or _FRAC_NUM_SHORT.match(s)
    if m:
        num, den = _dec(m.group(2)), _dec(m.group(3))
        if num is None or den is None or den == 0:
            return None
        v = num / den
        return (-v if m.group(1) == "-" else v), pct, "." in m.group(2) + m.group(3)
    m = _SLASH.match(s)
    if m:
        num, den = _dec(m.group(1)), _dec(m.group(2))
        if num is None or den is None or den == 0:
            return None
        return num / den, pct, "." in s
    return None


def _close(a: Fraction, b: Fraction, approx: bool, tol: float | None) -> bool:
    if tol is not None:
        return a == b or abs(a - b) <= Fraction(str(tol)) * Fraction(101, 100)
    if a == b:
        return True
    if approx:
        d = abs(a - b)
        return d <= _DECIMAL_ABS_TOL and d <= _DECIMAL_REL_TOL * max(abs(a), abs(b))
    return False


def _numbers_equal(p: tuple[Fraction, bool, bool], g: tuple[Fraction, bool, bool], tol: float | None) -> bool:
    pv, ppct, pdec = p
    gv, gpct, gdec = g
    pvals = [pv / 100, pv] if ppct else [pv]
    gvals = [gv / 100, gv] if gpct else [gv]
    approx = pdec or gdec or ppct or gpct
    return any(_close(a, b, approx, tol) for a in pvals for b in gvals)


# --------------------------------------------------------------------------------------------- guards
_EXP = re.compile(r"\^|\*\*")
_FACT = re.compile(r"(\d+)\s*!")
_LONG_INT = re.compile(r"\d{%d,}" % (MAX_INT_DIGITS + 1))


def _braced_or_token(s: str, i: int) -> tuple[str, int]:
    """The exponent starting at s[i]: brace-matched `{...}` content, `(...)`, or a run of digits / one char."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] in "{(":
        open_, close = s[i], "}" if s[i] == "{" else ")"
        depth = 0
        for j in range(i, min(len(s), i + 2 * MAX_SYMBOLIC_LEN)):
            if s[j] == open_:
                depth += 1
            elif s[j] == close:
                depth -= 1
                if depth == 0:
                    return s[i + 1:j], j + 1
        return s[i + 1:], len(s)
    m = re.match(r"[-+]?\d+(?:\.\d+)?|\\?[A-Za-z]+|.", s[i:])
    return m.group(0), i + m.end()


def _log10_value(e: str, depth: int = 0) -> float:
    """An upper estimate of log10(|value|) of an exponent string (inf when it is a tower or too deep).

    Non-numeric parts count as small; integer literals count by size; a nested power multiplies."""
    if depth > 6:
        return math.inf
    e = e.strip()
    m = _EXP.search(e)
    if not m:
        nums = re.findall(r"\d+(?:\.\d+)?", e)
        if not nums:
            return 0.0
        return max(math.log10(max(float(n), 1.0)) if len(n) < 300 else float(len(n)) for n in nums)
    base_part = e[:m.start()]
    inner, _ = _braced_or_token(e, m.end())
    base_nums = re.findall(r"\d+(?:\.\d+)?", base_part)
    base_log = max((math.log10(max(float(n), 1.0)) if len(n) < 300 else float(len(n)) for n in base_nums),
                   default=0.5)  # a symbol base counts as ~3
    inner_log = _log10_value(inner, depth + 1)
    if inner_log > 300:
        return math.inf
    return max(base_log, 0.5) * (10.0 ** inner_log)


def _exponent_at(s: str, i: int) -> str:
    """The whole exponent starting at s[i], right-associative chains included (10^{10}^{10}, 10**10**10)."""
    exp, j = _braced_or_token(s, i)
    m = re.match(r"\s*(\^|\*\*)", s[j:])
    if m and exp:
        return exp + "^{" + _exponent_at(s, j + m.end()) + "}"
    return exp


def _compound_base(s: str, i: int) -> bool:
    """True when the power whose `^` is at s[i] has a bracketed base holding a sum, e.g. (x+1)^{100}."""
    j = i - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    if j < 0 or s[j] not in ")}]":
        return False
    close, depth = j, 0
    for k in range(close, max(-1, close - 2 * MAX_SYMBOLIC_LEN), -1):
        if s[k] in ")}]":
            depth += 1
        elif s[k] in "({[":
            depth -= 1
            if depth == 0:
                return bool(re.search(r"[-+]", s[k + 1:close]))
    return False


def _too_big(s: str) -> bool:
    """True when symbolic work on `s` could blow up (see the module docstring, step 3)."""
    if len(s) > MAX_SYMBOLIC_LEN or _LONG_INT.search(s):
        return True
    depth = worst = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            if depth > worst:
                worst = depth
        elif ch in "})]":
            depth -= 1
    if worst > MAX_NESTING or s.count("\\frac") > 40:
        return True
    for m in _EXP.finditer(s):
        log_exp = _log10_value(_exponent_at(s, m.end()))
        if log_exp > math.log10(MAX_EXPONENT):
            return True
        if log_exp > math.log10(MAX_COMPOUND_EXPONENT) and _compound_base(s, m.start()):
            return True  # sympy expands (x+1)^{100} - 10 for seconds
    for m in _FACT.finditer(s):
        if int(m.group(1)) > MAX_FACTORIAL:
            return True
    if re.search(r"!\s*[)}\]]*\s*!", s):  # a factorial of a factorial
        return True
    return False


# --------------------------------------------------------------------------------------------- lists
def _split_top(s: str) -> list[str]:
    """Split on commas / semicolons outside any brackets (a thousands separator 1,000 is not split)."""
    if _THOUSANDS.match(s.replace(" ", "")):
        return [s]
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch in ",;" and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _expand_pm(items: list[str]) -> list[str]:
    out = []
    for it in items:
        it = _strip_lhs(it)
        if it.startswith("\\pm") or it.startswith("\\mp"):
            rest = it[3:].strip()
            out += [rest, "-" + rest if not rest.startswith("-") else rest[1:]]
        else:
            out.append(it)
    return out


def _is_bracketed(s: str) -> bool:
    return bool(s) and ((s[0] in "([{" and s[-1] in ")]}") or s.startswith("\\{"))


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
    afterwards (RewardPool workers) start warm instead of paying ~0.5 s inside their first timed call."""
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
