"""The sympy side of PHYBench's EED score: time caps, a size guard, expression trees, and the extended
Zhang–Shasha tree edit distance.

Follows the official PHYBench code (`EED/EED.py::sympy_to_tree`, `EED/extended_zss.py::ext_distance`),
re-implemented here:

* `sympy_to_tree`: Integer / Rational / Float / pi / E / oo / -oo -> leaf `number_<str(v)>`; Symbol -> leaf
  `symbol_<name>`; Add / Mul / Pow -> `operator_<Add|Mul|Pow>` with the sympy args as children (so x/y is
  Mul(x, Pow(y, -1)) and -x is Mul(-1, x)); any applied `sympy.Function` -> `function_<name>` with its args;
  anything else (I, zoo, nan, Max, Derivative, relations, ...) raises `UnsupportedExpr` (the EED scores 0).
* `ext_distance(test, answer)`: Zhang–Shasha with two extra edit operations, deleting or inserting a whole
  subtree at once. Costs: single-node insert/delete 1; relabel 0 when the labels are identical, else 1 (same
  node type or not); whole-subtree insert/delete of a subtree with s nodes costs min(s, 0.6·(s − 5) + 5) (the
  "cluster discount", bar size 5, slope 0.6), and 1 for a leaf.
* `capped(fn, seconds)`: run fn under a SIGALRM timer (main thread, no other timer pending; otherwise uncapped).
* `check_constant_sizes(expr)`: on an expression parsed with evaluation off, refuse numeric constants whose
  evaluation would be a huge big-integer computation that no signal can interrupt.
* `repo_compat_score(gen, ref)`: the PHYBench-GRPO seed's sympify-based stand-in for EED (no LaTeX, no trees).
"""

from __future__ import annotations

import keyword
import math
import re
import signal
import threading
import time
from typing import Any, Callable

import sympy
from sympy.core.numbers import Exp1, Infinity, NegativeInfinity, Pi

BAR_SIZE = 5
DISCOUNT_SLOPE = 0.6
MAX_LOG10 = 10_000.0  # reject numeric constants with more than ~10k digits
MAX_EXP_LOG10 = 4.0  # reject numeric exponents and factorial arguments above 10^4

_NUMBER_TYPES = (sympy.Integer, Pi, Exp1, sympy.Float, sympy.Rational, Infinity, NegativeInfinity)


class CapTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so sympy's `except Exception` cannot swallow it."""


_armed = False


def _on_alarm(signum: int, frame: Any) -> None:
    if _armed:
        raise CapTimeout()


def _alarm_usable() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    )


def capped(fn: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """(True, fn()) if it finished within `seconds`, else (False, None). Without a usable SIGALRM the call
    runs uncapped (but is still refused when `seconds` <= 0, i.e. the budget is spent)."""
    global _armed
    if seconds <= 0:
        return False, None
    if not _alarm_usable():
        try:
            return True, fn()
        except CapTimeout:  # raised by a cooperative deadline check (ext_distance)
            return False, None
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        _armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)
        return True, fn()
    except CapTimeout:
        return False, None
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Budget:
    """An optional overall deadline. `cap(t, share)` is t, or `share` of what is left when that is less (a
    share < 1 keeps time for the later stages when an early one would use it all)."""

    def __init__(self, total: float | None) -> None:
        self.end = None if total is None else time.monotonic() + total

    def cap(self, seconds: float, share: float = 1.0) -> float:
        return seconds if self.end is None else min(seconds, share * (self.end - time.monotonic()))


class UnsupportedExpr(ValueError):
    """The sympy expression holds a node type the EED tree has no label for."""


class UnsafeExpr(ValueError):
    """Evaluating the expression would build a huge number (uninterruptible big-integer arithmetic)."""


class Node:
    """One tree node: a `label` ("<type>_<name>") and its ordered `children`; `size` counts the subtree."""

    __slots__ = ("label", "children", "size")

    def __init__(self, label: str, children: list["Node"] | None = None) -> None:
        self.label = label
        self.children = children or []
        self.size = 1 + sum(c.size for c in self.children)

    def __repr__(self) -> str:
        if not self.children:
            return self.label
        return f"{self.label}({', '.join(map(repr, self.children))})"


def sympy_to_tree(expr: sympy.Basic, max_nodes: int = 100_000) -> Node:
    """The EED tree of a sympy expression; `UnsupportedExpr` for a node type outside the four categories,
    or when the tree would exceed `max_nodes` nodes."""
    budget = [max_nodes]

    def build(e: sympy.Basic) -> Node:
        budget[0] -= 1
        if budget[0] < 0:
            raise UnsupportedExpr(f"expression tree larger than {max_nodes} nodes")
        if isinstance(e, _NUMBER_TYPES):
            return Node(f"number_{e}")
        if isinstance(e, sympy.Symbol):
            return Node(f"symbol_{e}")
        if isinstance(e, (sympy.Add, sympy.Mul, sympy.Pow)):
            return Node(f"operator_{type(e).__name__}", [build(a) for a in e.args])
        if isinstance(e, sympy.Function):
            return Node(f"function_{e.func.__name__}", [build(a) for a in e.args])
        raise UnsupportedExpr(f"unsupported sympy type {type(e).__name__}")

    return build(expr)


_FACTORIAL_LIKE = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma,
                   sympy.RisingFactorial, sympy.FallingFactorial)  # fmt: skip


def _log10_bound(e: sympy.Basic, depth: int = 0) -> float | None:
    """An upper bound on log10|e| for a numeric constant (None when e has symbols); raises `UnsafeExpr` where
    evaluating e would build a huge number (numeric exponent or factorial argument > 10^4, > 10k digits)."""
    if depth > 200:
        raise UnsafeExpr("expression too deep")
    if isinstance(e, sympy.Float):
        _, man, exp, bc = e._mpf_
        return (exp + bc) * 0.30103 if man else 0.0
    if isinstance(e, sympy.Rational):
        bound = max(abs(e.p).bit_length(), e.q.bit_length()) * 0.30103
        if bound > MAX_LOG10:
            raise UnsafeExpr("number literal too long")
        return bound
    if not e.args:
        return None if e.free_symbols else 1.0
    mags = [_log10_bound(a, depth + 1) for a in e.args]
    if isinstance(e, _FACTORIAL_LIKE) and any(m is not None and m > MAX_EXP_LOG10 for m in mags):
        raise UnsafeExpr("huge factorial")
    if isinstance(e, sympy.Pow):
        base, exp = mags
        if exp is None:
            return None
        if exp > MAX_EXP_LOG10:
            raise UnsafeExpr("huge exponent")
        if base is None:
            return None
        bound = 10.0**exp * abs(base)
        if bound > MAX_LOG10:
            raise UnsafeExpr("huge power")
        return bound
    if any(m is None for m in mags) or not isinstance(e, (sympy.Add, sympy.Mul)):
        return None
    return sum(abs(m) for m in mags) if isinstance(e, sympy.Mul) else max(mags) + math.log10(len(mags))


def check_constant_sizes(expr: sympy.Basic) -> None:
    """Raise `UnsafeExpr` when evaluating `expr` (parsed with evaluation off) would build a huge number."""
    _log10_bound(expr)


def subtree_cost(node: Node) -> float:
    """Cost of inserting or deleting `node`'s whole subtree at once: 1 for a leaf, else
    min(s, 0.6·(s − 5) + 5) with s the subtree's node count."""
    if not node.children:
        return 1.0
    s = float(node.size)
    return min(s, DISCOUNT_SLOPE * (s - BAR_SIZE) + BAR_SIZE)


def _relabel_cost(a: Node, b: Node) -> float:
    return 0.0 if a.label == b.label else 1.0


class _Annotated:
    """Post-order view of a tree: nodes, leftmost-leaf-descendant index of each node, and the keyroots."""

    def __init__(self, root: Node) -> None:
        self.nodes: list[Node] = []
        self.lmd: list[int] = []
        index_of: dict[int, int] = {}
        stack = [(root, iter(root.children))]
        while stack:  # iterative post-order walk
            node, rest = stack[-1]
            child = next(rest, None)
            if child is not None:
                stack.append((child, iter(child.children)))
                continue
            stack.pop()
            i = len(self.nodes)
            index_of[id(node)] = i
            self.nodes.append(node)
            self.lmd.append(self.lmd[index_of[id(node.children[0])]] if node.children else i)
        last_with_lmd: dict[int, int] = {}
        for i, l in enumerate(self.lmd):
            last_with_lmd[l] = i
        self.keyroots = sorted(last_with_lmd.values())


def ext_distance(test: Node, answer: Node, deadline: float | None = None) -> float:
    """Extended Zhang–Shasha distance turning `test` into `answer` (the official argument order).

    `deadline` (a time.monotonic() value): raise CapTimeout once past it (checked per keyroot pair).
    """
    A, B = _Annotated(test), _Annotated(answer)
    an, bn, al, bl = A.nodes, B.nodes, A.lmd, B.lmd
    na, nb = len(an), len(bn)
    a_tree = [subtree_cost(n) for n in an]
    b_tree = [subtree_cost(n) for n in bn]
    treedists = [[0.0] * nb for _ in range(na)]
    # Forest distances, indexed by absolute post-order positions (+1), as in the official implementation:
    # every cell a keyroot pair reads is written earlier in the same pair, so no reset is needed between pairs.
    fd = [[0.0] * (nb + 1) for _ in range(na + 1)]

    for x in A.keyroots:
        lx = al[x]
        for y in B.keyroots:
            if deadline is not None and time.monotonic() > deadline:
                raise CapTimeout()
            ly = bl[y]
            fd[lx][ly] = 0.0
            for i in range(lx, x + 1):
                fd[i + 1][ly] = fd[al[i]][ly] + a_tree[i]
            row_lx = fd[lx]
            for j in range(ly, y + 1):
                row_lx[j + 1] = row_lx[bl[j]] + b_tree[j]
            for i in range(lx, x + 1):
                ali = al[i]
                node_a = an[i]
                cost_a = a_tree[i]
                row_prev, row_cur, row_ali = fd[i], fd[i + 1], fd[ali]
                td_i = treedists[i]
                for j in range(ly, y + 1):
                    blj = bl[j]
                    best = min(
                        row_prev[j + 1] + 1.0,  # delete node i (its children move up)
                        row_cur[j] + 1.0,  # insert node j
                        row_ali[j + 1] + cost_a,  # delete the whole subtree rooted at i
                        row_cur[blj] + b_tree[j],  # insert the whole subtree rooted at j
                    )
                    if ali == lx and blj == ly:
                        td = min(best, row_prev[j] + _relabel_cost(node_a, bn[j]))
                        td_i[j] = td
                        row_cur[j + 1] = td
                    else:
                        row_cur[j + 1] = min(best, row_ali[blj] + td_i[j])
    return treedists[na - 1][nb - 1]


# ------------------------------------------------------------- repo_compat (the PHYBench-GRPO seed)

_REPO_SAFE = re.compile(r"[A-Za-z0-9_+\-*/^().\s]*")
_MATH_HELPERS = {"sqrt", "root", "cbrt", "real_root"}


def _safe_sympify(text: str) -> sympy.Basic:
    """sympify(text) as the seed does, refusing (ValueError) what would eval more than plain arithmetic:
    other characters, attribute access, dunders, keywords, and sympy names that are not math objects."""
    from sympy.parsing.sympy_parser import parse_expr

    if not text or len(text) > 1000 or not _REPO_SAFE.fullmatch(text) or "__" in text:
        raise ValueError("refused")
    if re.search(r"\.\s*[A-Za-z_]", text):
        raise ValueError("attribute access")
    for name in re.findall(r"[A-Za-z_]\w*", text):
        obj = getattr(sympy, name, None)
        is_math = obj is None or isinstance(obj, sympy.Basic)
        is_math = is_math or (isinstance(obj, type) and issubclass(obj, sympy.Basic))
        if keyword.iskeyword(name) or not (is_math or name in _MATH_HELPERS):
            raise ValueError(f"refused name {name!r}")
    check_constant_sizes(parse_expr(text, evaluate=False))
    return sympy.sympify(text)


def repo_compat_score(gen: str, ref: str, *, literal: bool = False, time_budget: float | None = 4.0) -> float:
    """The PHYBench-GRPO seed's "EED" (grpo_train.ipynb): 1.0 if simplify(sympify(gen)) == simplify(sympify(ref)),
    else max(0, (0.6 − rel)/0.6) with rel = |size(g) − size(r)| / (size(r) + 1e-6) and size(e) = number of free
    symbols + nodes in preorder_traversal(e). Any failure -> 0.

    Quirks kept: sympify, not LaTeX parsing (anything with a backslash, `2mg`, `x = 1` scores 0; `E`, `I`,
    `gamma`, `beta` are sympy objects); the size is a node count, so a wrong answer of the right size scores 1
    (`x + y` vs `x + z`). Unlike the seed, strings sympify would eval beyond arithmetic (attributes, dunders,
    keywords, non-math sympy callables such as `plot`, `N`, `S`) and huge constants are refused: 0.
    `literal=True` also keeps the seed's bug: it calls `e.preorder_traversal()`, which does not exist, so its
    partial-credit branch always raised and scored 0 (C was 0 or 1).
    """
    budget = Budget(time_budget)
    try:
        g, r = _safe_sympify(gen), _safe_sympify(ref)
    except Exception:  # noqa: BLE001 - the seed's try/except returns 0
        return 0.0
    try:
        ok, same = capped(lambda: sympy.simplify(g) == sympy.simplify(r), budget.cap(30.0))
    except Exception:  # noqa: BLE001
        ok, same = True, False
    if ok and same:
        return 1.0
    if literal:
        return 0.0

    def size(e: sympy.Basic) -> int:
        return len(e.free_symbols) + sum(1 for _ in sympy.preorder_traversal(e))

    rel = abs(size(g) - size(r)) / (size(r) + 1e-6)
    return max(0.0, (0.6 - rel) / 0.6)


_REPO_BOX = re.compile(r"\\boxed\{([^}]+)\}")  # the seed's non-nested box regex


def _repo_box(text: str) -> str:
    found = _REPO_BOX.findall(text or "")
    return found[-1].strip() if found else ""


def repo_compat_reward(
    answer: str, completion: str, literal: bool, time_budget: float | None
) -> tuple[float, str | None]:
    """(C, gen) as the seed computes them: gen = the last non-nested `\\boxed{...}` of the completion (the regex
    stops at the first `}`, so `\\boxed{\\frac{a}{b}}` gives `\\frac{a`). The seed's reference was the same
    extraction from the solution; here it is that of `answer` when it has a box, else the stripped answer."""
    gen = _repo_box(completion)
    ref = _repo_box(answer) if "\\boxed{" in answer else answer.strip()
    return repo_compat_score(gen, ref, literal=literal, time_budget=time_budget), gen or None
