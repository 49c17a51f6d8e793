"""PHYBench's Expression Edit Distance (EED) score, and the `eed` reward built on it.

`eed_score(answer_latex, test_latex)` re-implements the official PHYBench `EED/EED.py::EED` (arXiv 2504.16074):

0. Added here: variant Greek letters are rewritten to their plain form (`greek.canonical_greek`: \\varphi ->
   \\phi, \\varepsilon -> \\epsilon, ...), so `4\\pi\\varepsilon_0` and `4\\pi\\epsilon_0` are one expression.
1. Early exits: empty test -> 0; `\\int` or `\\sum` in either -> 0; identical strings -> 100;
   len(test) > 3·len(answer) -> 0 (and, added here, either string over `MAX_LATEX_CHARS` -> 0).
2. `master_convert` (official `latex_pre_process.py`, `preprocess_latex` here): `\\{ \\}` -> `( )`, drop the
   `\\boxed` wrapper, strip "overall" braces, keep the part before `\\quad`, keep the part after the last "="
   (else after the last relation), strip braces again; remove/replace LaTeX noise (`\\text`, `\\left`, `$`,
   `\\[`, `,`, `\\dfrac`, `I` -> `\\bar{I}`, `e_` -> `\\bar{e}_`, `\\infty` -> `f`, ...), normalise `\\frac12`,
   `\\vec x`, `^\\frac{a}{b}`; then latex2sympy2_extended with the official configs. Any failure -> 0.
3. Equivalence: posify both, simplify (time cap), undo posify; a == b, or simplify(expand(a − b)) == 0, or
   a.equals(b) (time cap) -> 100.
4. Otherwise d = extended Zhang–Shasha distance from the test tree to the answer tree (`eed_tree`), S = node
   count of the answer tree, score = 100 if d = 0 else max(0, 60 − 100·d/S).

Safety (the reward runs on untrusted model output): inputs are capped in length and brace depth; each side is
first parsed with evaluation off and refused (0) if it would build a huge number (10^{10^{10}}, 10^5!), which no
timer can interrupt; each slow stage runs under a SIGALRM cap (main thread, no other timer pending: true in a
RewardPool worker; elsewhere uncapped, the pool's kill is the backstop). A parse or distance out of time
scores 0; a simplify out of time returns its input and `equals` gives False, as in the official code.

Where the official copies disagree or are plainly buggy this follows the spec: the text after the last "=",
else after the rightmost relation, cut after the whole operator. (The original also matched `\\le` inside
`\\left`, mangling the 12 PHYBench answers with `\\left` and no "="; phybench-pipeline slices one character
past the operator's start, so `a \\approx b` gave `approx b`.) Parser caveat shared with the official code
(latex2sympy2_extended 1.11): `\\gamma` is EulerGamma, which has no tree label (a non-equivalent answer
with it scores 0), `\\gamma-1` is gamma(-1) = zoo, and `\\gamma_1` is read as the gamma function.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward
from scirl.rewards.boxed_numeric import last_boxed
from scirl.rewards.greek import canonical_greek

if TYPE_CHECKING:  # sympy (~0.5 s to import) and eed_tree load on first use, not with `import scirl.rewards`
    import sympy

MAX_LATEX_CHARS = 3000  # raw input cap (PHYBench answers are <= 445 chars)
MAX_BRACE_DEPTH = 24  # PHYBench answers nest <= 8
MAX_TREE_NODES = 3000
ANSWER_CACHE_SIZE = 256

# -------------------------------------------------------------------------------------- preprocessing


def _remove_command(s: str, cmd: str, keep_inside: bool) -> str:
    """Remove every `cmd{...}` (brace-matched), keeping the inside when asked. As in the official code, a
    `cmd` not followed by `{` is removed together with the next character (prefix matches included)."""
    while (pos := s.find(cmd)) >= 0:
        start = end = pos + len(cmd)
        if start < len(s) and s[start] == "{":
            level = 0
            while end < len(s):
                if s[end] == "{":
                    level += 1
                elif s[end] == "}":
                    level -= 1
                    if level == 0:
                        break
                end += 1
        s = s[:pos] + (s[start + 1 : end] if keep_inside else "") + s[end + 1 :]
    return s


def _first_unescaped_brace(s: str) -> int:
    escaped = False
    for i, c in enumerate(s):
        if c == "\\" and not escaped:
            escaped = True
            continue
        if c == "{" and not escaped:
            return i
        escaped = False
    return -1


def _command_before(s: str, brace: int) -> str | None:
    """The `\\command` (or `^`/`_`) a brace belongs to, skipping spaces and `[...]` options; None if none."""
    i, in_option = brace - 1, False
    while i >= 0:
        c = s[i]
        if not in_option and c in "^_":
            return c
        if not in_option and c not in " \t][":
            break
        if c == "]":
            in_option = True
        elif c == "[" and in_option:
            in_option = False
        i -= 1
    if i < 0 or s[i] == "\\":
        return None
    end = i
    i -= 1
    while i >= 0 and s[i].isalpha():
        i -= 1
    return s[i + 1 : end + 1] if s[i] == "\\" else None  # s[-1] when i == -1, as in the official code


def _strip_overall_braces(s: str) -> str:
    """Up to 10 times: when the first brace is a bare group and no `}` follows its close, keep its inside."""
    for _ in range(10):
        pos = _first_unescaped_brace(s)
        if pos < 0 or _command_before(s, pos):
            return s
        depth, escaped, close = 0, False, -1
        for i in range(pos + 1, len(s)):
            c = s[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    close = i
                    break
                depth -= 1
        if close < 0 or "}" in s[close + 1 :]:
            return s
        s = s[pos + 1 : close]
    return s


_RELATION = re.compile(r"\\(?:approx|geq|ge|leq|le|simeq|sim|propto|cong|equiv|neq)(?![A-Za-z])|[<>]")


def _after_relation(s: str) -> str:
    if "=" in s:
        return s[s.rfind("=") + 1 :].strip()
    last = None
    for last in _RELATION.finditer(s):
        pass
    return (s[last.end() :] if last else s).strip()


_REMOVE_KEEP = ("\\text", "\\mathbf", "\\mathrm", "\\pmb", "\\hat", "\\overline", "\\boldsymbol", "\\mathbb",
                "\\mathcal", "\\mathfrak", "\\mathit")  # fmt: skip
_DELETE = ("\\,", "\\;", "\\!", "\r", "\t", ".%", "$", ",", "`", "latex", "\\left", "\\right", "\\text",
           "\\mathrm", "\\Bigr", "\\Bigl", "\n", "\\]", "\\[", "\\Big", "\\bigl", "\\bigr", "\\biggl", "\\biggr",
           "\\displaystyle", "\\boldsymbol", "\\(", "\\)", "\\langle", "\\rangle")  # fmt: skip
_REPLACE = (("\\operatorname{asin}", "\\asin"), ("\\operatorname{sech}", "\\sech"),
            ("\\operatorname{acos}", "\\acos"), ("\\operatorname{sinh}", "\\sinh"), ("\\dfrac", "\\frac"),
            ("\\tfrac", "\\frac"), ("\\Exp", "\\exp"), ("\\times", "\\bar{times}"),
            ("\\partial", "\\bar{partial}"), ("\\perp", "\\bar{perp}"), ("\\epsilon", "\\varepsilon"),
            ("\\varOmega", "\\Omega"), ("I", "\\bar{I}"), ("_e", "_{e}"), ("e_", "\\bar{e}_"),
            ("E_", "\\bar{E}_"), ("\\pm", "+"), ("\\mp", "-"), ("{+}", "{p}"), ("{-}", "{m}"), ("_+", "_p"),
            ("_-", "_m"), ("\\infty", "f"))  # fmt: skip
_ARG = r"(\\[a-zA-Z]+|\d|[a-zA-Z]|\{[^{}]*\})"
_SHORT_FRAC = re.compile(r"\\frac" + _ARG + _ARG)
_VEC_SUB = re.compile(r"\\vec\{([^{}]+)_\{([^{}]+)\}\}")
_VEC_BARE = re.compile(r"\\vec(\s*)(\\?[a-zA-Zα-ωΑ-Ω]+)")


def _brace(arg: str) -> str:
    return arg if arg.startswith("{") and arg.endswith("}") else "{" + arg + "}"


def _strip_bar_inside_vec(s: str) -> str:
    for k in range(min(s.count("\\vec{"), 100)):
        starts = [m.start() for m in re.finditer(r"\\vec\{", s)]
        if k >= len(starts):
            break
        open_ = starts[k] + 4
        close, level = open_, 0
        while close < len(s):
            level += (s[close] == "{") - (s[close] == "}")
            if s[close] == "}" and level == 0:
                break
            close += 1
        s = s[: open_ + 1] + _remove_command(s[open_ + 1 : close], "\\bar", True) + s[close:]
    return s


def _brace_frac_exponents(s: str) -> str:
    """`^\\frac{a}{b}` -> `^{\\frac{a}{b}}` (at most 100 times)."""
    for _ in range(100):
        pos = s.find("^\\frac") + 1
        if pos == 0:
            break
        idx, depth, groups = pos, 0, 0
        while idx < len(s):
            if s[idx] == "{":
                depth += 1
            elif s[idx] == "}":
                depth -= 1
                if depth == 0:
                    groups += 1
                    if groups == 2:
                        break
            idx += 1
        s = s[:pos] + "{" + s[pos:idx] + "}" + s[idx:]
    return s


def preprocess_latex(s: str) -> str:
    """The two official preprocessing stages: the LaTeX string latex2sympy is given."""
    s = s.replace("\\{", "(").replace("\\}", ")")
    s = _strip_overall_braces(_remove_command(s, "\\boxed", keep_inside=True))
    if "\\quad" in s:
        s = s.split("\\quad")[0]
    s = _strip_overall_braces(_after_relation(s))
    for cmd in ("\\begin", "\\end"):
        s = _remove_command(s, cmd, keep_inside=False)
    for cmd in _REMOVE_KEEP:
        s = _remove_command(s, cmd, keep_inside=True)
    for junk in _DELETE:
        s = s.replace(junk, "")
    for old, new in _REPLACE:
        s = s.replace(old, new)
    s = _SHORT_FRAC.sub(lambda m: "\\frac" + _brace(m.group(1)) + _brace(m.group(2)), s)
    s = _VEC_BARE.sub(r"\\vec{\2}", _VEC_SUB.sub(r"\\vec{\1}_{\2}", _strip_bar_inside_vec(s)))
    s = _brace_frac_exponents(s)
    return s[:-1] if s.endswith(".") else s


def _configs() -> tuple[Any, Any]:
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    norm = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all",
                               equations=False)  # fmt: skip
    conv = ConversionConfig(interpret_as_mixed_fractions=False, interpret_simple_eq_as_assignment=False,
                            interpret_contains_as_eq=True, lowercase_symbols=False)  # fmt: skip
    return norm, conv


def _brace_depth(s: str) -> int:
    return max(itertools.accumulate((c == "{") - (c == "}") for c in s), default=0)


def latex_to_sympy(latex: str) -> sympy.Basic:
    """`master_convert`: preprocess, check for number blow-ups with evaluation off, then parse for real.
    Raises on any failure (ValueError for the size guards)."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    from scirl.rewards.eed_tree import check_constant_sizes

    s = preprocess_latex(latex)
    if not s.strip():
        raise ValueError("nothing left to parse")
    if _brace_depth(s) > MAX_BRACE_DEPTH:
        raise ValueError("braces nested too deep")
    norm, conv = _configs()
    with sympy.evaluate(False):
        raw = latex2sympy(s, normalization_config=norm, conversion_config=conv)
    if not isinstance(raw, sympy.Basic):
        raise ValueError(f"latex2sympy gave a {type(raw).__name__}")
    check_constant_sizes(raw)  # raises UnsafeExpr (a ValueError)
    out = latex2sympy(s, normalization_config=norm, conversion_config=conv)
    if not isinstance(out, sympy.Basic):
        raise ValueError(f"latex2sympy gave a {type(out).__name__}")
    return out


_ANSWER_CACHE: OrderedDict[str, tuple[Any, Any, Any]] = OrderedDict()  # answer -> (parsed, simplified, reps)
_CACHE_LOCK = threading.Lock()


def eed_score(
    answer_latex: str,
    test_latex: str,
    *,
    simplify_timeout: float = 30.0,
    equals_timeout: float = 10.0,
    parse_timeout: float = 10.0,
    distance_timeout: float = 10.0,
    time_budget: float | None = None,
) -> tuple[float, dict]:
    """The official PHYBench EED score (0..100) of `test_latex` against the reference `answer_latex`.

    The per-stage caps default to the official simplify 30 s / equals 10 s; `time_budget` (seconds) bounds
    the whole call, each simplify and equals taking at most part of what is left. The answer side (parsed and
    simplified) is cached per process (`ANSWER_CACHE_SIZE` answers) when its simplify finished. Returns
    (score, details): details["exit"] names the branch taken (empty_test, int_or_sum, identical,
    test_too_long, input_too_long, unsafe_number (a side would build a huge number: refused before evaluation),
    parse_failed, parse_timeout, simplify_failed, simplify_timeout, equivalent, unsupported_tree,
    distance_timeout, distance) and, where computed, "distance" (d), "tree_size" (S) and "rel_distance" (d/S;
    0.0 for identical or equivalent expressions). When a simplify or equals stage ran out of time and the call
    went on without it, details["capped"] names those stages (e.g. "simplify_test,equals").
    """
    capped_stages: list[str] = []

    def done(score: float, exit_: str, **extra: float) -> tuple[float, dict]:
        details: dict = {"exit": exit_, **extra}
        if capped_stages:
            details["capped"] = ",".join(capped_stages)
        return float(score), details

    if not test_latex:
        return done(0, "empty_test")
    answer_latex, test_latex = canonical_greek(answer_latex), canonical_greek(test_latex)  # \varphi is \phi
    if any(k in test_latex or k in answer_latex for k in ("\\int", "\\sum")):
        return done(0, "int_or_sum")
    if answer_latex == test_latex:
        return done(100, "identical", distance=0.0, rel_distance=0.0)
    if len(test_latex) > 3 * len(answer_latex):
        return done(0, "test_too_long")
    if max(len(answer_latex), len(test_latex)) > MAX_LATEX_CHARS:
        return done(0, "input_too_long")

    import sympy

    from scirl.rewards.eed_tree import Budget, UnsafeExpr, capped, ext_distance, sympy_to_tree

    budget = Budget(time_budget)
    cached = _ANSWER_CACHE.get(answer_latex)
    try:
        parse = (lambda: latex_to_sympy(answer_latex)), (lambda: latex_to_sympy(test_latex))
        ok, ans = (True, cached[0]) if cached else capped(parse[0], budget.cap(parse_timeout))
        ok2, test = capped(parse[1], budget.cap(parse_timeout)) if ok else (False, None)
    except UnsafeExpr:  # 10^{10^{10}}, 10^5!: no timer could interrupt evaluating it
        return done(0, "unsafe_number")
    except Exception:  # noqa: BLE001 - any conversion failure scores 0, as in the official code
        return done(0, "parse_failed")
    if not (ok and ok2):
        return done(0, "parse_timeout")

    def simplified(expr: Any, share: float, stage: str) -> tuple[bool, Any]:
        ok, out = capped(lambda: sympy.simplify(expr), budget.cap(simplify_timeout, share))
        if not ok:
            capped_stages.append(stage)
        return ok, (out if ok else expr)  # the official time_simplify returns its input on timeout

    try:
        if cached:
            _, ans_s, rep1 = cached
        else:
            ans_pos, rep1 = sympy.posify(ans)
            finished, ans_s = simplified(ans_pos, 0.4, "simplify_answer")
            if finished:
                with _CACHE_LOCK:
                    _ANSWER_CACHE[answer_latex] = (ans, ans_s, rep1)
                    while len(_ANSWER_CACHE) > ANSWER_CACHE_SIZE:
                        _ANSWER_CACHE.popitem(last=False)
        test_pos, rep2 = sympy.posify(test)
        test_s = simplified(test_pos, 0.5, "simplify_test")[1]
        ok, pair = capped(lambda: (ans_s.subs(rep1), test_s.subs(rep2)), budget.cap(simplify_timeout))
        if not ok:
            return done(0, "simplify_timeout")
        ans_s, test_s = pair
        zero_cap = budget.cap(simplify_timeout, 0.5)
        ok, zero = capped(lambda: sympy.simplify(sympy.expand(ans_s - test_s)), zero_cap)
        if ans_s == test_s or (ok and zero == 0):
            return done(100, "equivalent", distance=0.0, rel_distance=0.0)
        if not ok:
            capped_stages.append("simplify_difference")
        ok, same = capped(lambda: ans_s.equals(test_s), budget.cap(equals_timeout, 0.5))
        if not ok:
            capped_stages.append("equals")
        if ok and same:
            return done(100, "equivalent", distance=0.0, rel_distance=0.0)
    except Exception:  # noqa: BLE001
        return done(0, "simplify_failed")

    try:
        tree_answer = sympy_to_tree(ans_s, MAX_TREE_NODES)
        tree_test = sympy_to_tree(test_s, MAX_TREE_NODES)
    except (ValueError, RecursionError):
        return done(0, "unsupported_tree")
    cap = budget.cap(distance_timeout)  # the deadline also holds where SIGALRM cannot be used
    ok, dist = capped(lambda: ext_distance(tree_test, tree_answer, time.monotonic() + cap), cap)
    if not ok:
        return done(0, "distance_timeout")
    size = tree_answer.size
    score = 100.0 if dist == 0 else max(0.0, 60.0 - 100.0 * dist / size)
    return done(score, "distance", distance=dist, tree_size=float(size), rel_distance=dist / size)


@register_reward("eed")
def eed_reward(sample: Sample, completion: str, info: dict) -> RewardResult:
    """score = EED(answer, last \\boxed{...} of the completion) / 100.

    info: correctness_mode "eed_official" (default) or "repo_compat" (`repo_compat_score`, with
    "repo_compat_literal": bool); time_budget (s, default 4.0, under the RewardPool's 5 s; None for none),
    simplify_timeout (30), equals_timeout (10). components: {"eed": 0..100, "rel_distance": d/S when
    defined}; pred: the boxed expression (None without a box).
    """
    info = info or {}
    mode = info.get("correctness_mode", "eed_official")
    budget = info.get("time_budget", 4.0)  # None: no overall budget (official per-stage caps only)
    budget = None if budget is None else float(budget)
    if mode == "repo_compat":
        from scirl.rewards.eed_tree import repo_compat_reward

        literal = bool(info.get("repo_compat_literal"))
        c, gen = repo_compat_reward(str(sample.answer), completion, literal, budget)
        return RewardResult(c, {"eed": 100.0 * c}, gen)
    if mode != "eed_official":
        raise ScirlError(f"eed: unknown correctness_mode {mode!r}; use 'eed_official' or 'repo_compat'")
    pred = last_boxed(completion)
    if pred is None:
        return RewardResult(0.0, {"eed": 0.0}, None)
    timeouts = {k: float(info.get(k, v)) for k, v in (("simplify_timeout", 30.0), ("equals_timeout", 10.0))}
    score, details = eed_score(str(sample.answer), pred, time_budget=budget, **timeouts)
    components = {"eed": score}
    if "rel_distance" in details:
        components["rel_distance"] = details["rel_distance"]
    return RewardResult(score / 100.0, components, pred)
