"""Text side of the `math` reward: box extraction, a main-thread deadline, LaTeX/answer normalisation,
left-hand sides, exact number parsing, and size guards that keep sympy away from pathological inputs."""

from __future__ import annotations
import math
import re
import signal
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache
from typing import Iterator

from scirl.rewards.greek import canonical_greek

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
    s = canonical_greek(s)  # \varepsilon_0 and \epsilon_0 are one symbol (greek.py)
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
