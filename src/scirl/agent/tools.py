"""The tool registry: what a model may call in a multi-turn rollout (`rollout.agent.tools: [...]`).

A Tool is a name, a description, a JSON schema of its parameters (OpenAI function format, what a chat template's
`tools=` argument renders) and a callable taking those parameters as keyword arguments. Names resolve like rewards:
a built-in (`code_interpreter`, `calculator`), `mypkg.tools:search` (an importable module) or
`path/to/tools.py:search` (a file). A user function becomes a Tool through transformers' `get_json_schema`, so it
needs type hints and a Google-style docstring (`Args:` section); a module attribute that already is a Tool is used
as is. An unknown name is a one-line ScirlError listing the known ones.

`code_interpreter` runs Python through an injected runner, `set_code_runner(run_code, timeout)` with
`run_code(code, timeout) -> (text, is_error)` (the sandbox is wired in by the rollout); calling it with no runner
set raises ToolNotConfigured. `calculator` evaluates arithmetic exactly with an AST walker over Fractions (no eval):
`1234*5678` -> `7006652`, `0.1+0.2` -> `0.3`, `1/3` -> `1/3 (≈ 0.33333333333333333333)`.
"""

from __future__ import annotations

import ast
import decimal
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

from scirl.errors import ScirlError
from scirl.registry import register_in, unknown_name_error
from scirl.rewards.user import is_spec, load_reward


class ToolNotConfigured(ScirlError):
    """A tool cannot run because the trainer did not give it what it needs (e.g. no code runner): not the
    model's fault, so execute_calls lets it propagate instead of answering the model with it."""


@dataclass
class Tool:
    """A callable the model may invoke: `fn(**arguments)` returns a str (or `(text, is_error)`)."""

    name: str
    description: str
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})
    fn: Callable[..., Any] | None = None

    def __call__(self, **arguments: Any) -> Any:
        if self.fn is None:
            raise ToolNotConfigured(f"tool {self.name!r} has no function")
        return self.fn(**arguments)

    @property
    def schema(self) -> dict:
        """The OpenAI function schema a chat template's `tools=` argument renders."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


_BUILTINS: dict[str, Callable[[], Tool]] = {}


def register_tool(name: str) -> Callable:
    """Decorator: a zero-argument factory returning the built-in Tool `name`."""
    return register_in(_BUILTINS, "tool", name)


def known_tools() -> list[str]:
    return sorted(_BUILTINS)


# ---------------------------------------------------------------- code_interpreter

_RUNNER: dict[str, Any] = {"run": None, "timeout": 5.0}


def set_code_runner(run_code: Callable[[str, float], tuple[str, bool]] | None, timeout: float = 5.0) -> None:
    """Give code_interpreter its runner, `run_code(code, timeout) -> (text, is_error)` (None unsets it)."""
    _RUNNER["run"], _RUNNER["timeout"] = run_code, float(timeout)


def _run_code(code: str) -> tuple[str, bool]:
    run = _RUNNER["run"]
    if run is None:
        raise ToolNotConfigured("tool 'code_interpreter': no code runner is configured (the sandbox wiring is in "
                                "progress; call scirl.agent.tools.set_code_runner(run_code, timeout) first)")
    text, is_error = run(code, _RUNNER["timeout"])
    return str(text), bool(is_error)


@register_tool("code_interpreter")
def _code_interpreter() -> Tool:
    return Tool("code_interpreter",
                "Run a Python 3 program in a sandbox and return what it prints (stdout, then stderr). "
                "Use print() to see results; nothing persists between calls.",
                {"type": "object",
                 "properties": {"code": {"type": "string", "description": "The complete Python program to run."}},
                 "required": ["code"]},
                _run_code)


# ---------------------------------------------------------------- calculator

_MAX_BITS = 14_000  # ~4,200 decimal digits: under Python's 4,300-digit int-to-str limit
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: Fraction(a // b), ast.Mod: lambda a, b: a % b}


class CalcError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def _check_size(x: Fraction) -> Fraction:
    if max(abs(x.numerator).bit_length(), x.denominator.bit_length()) > _MAX_BITS:
        raise CalcError("result too large")
    return x


def _pow(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1:
        raise CalcError("only integer exponents are supported")
    e = b.numerator
    size = max(math.log2(abs(a.numerator)) if a else 0.0, math.log2(a.denominator))  # bits of |a| (or 1/|a|)
    if size and abs(e) > _MAX_BITS / size:
        raise CalcError("result too large")
    if a == 0 and e < 0:
        raise CalcError("division by zero")
    return a ** e


def _eval(node: ast.AST, src: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, src)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, int):
            return Fraction(node.value)
        text = ast.get_source_segment(src, node) or repr(node.value)
        return Fraction(text.replace("_", ""))  # the literal as written: 0.1 is exactly 1/10
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand, src)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, src), _eval(node.right, src)
        if isinstance(node.op, ast.Pow):
            return _check_size(_pow(a, b))
        op = _BINOPS.get(type(node.op))
        if op is not None:
            if b == 0 and not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                raise CalcError("division by zero")
            return _check_size(op(a, b))
    raise CalcError(f"not allowed: {type(node).__name__} (only numbers, + - * / // % ** and parentheses)")


def format_number(x: Fraction) -> str:
    """Exact text: an integer, a terminating decimal, or `p/q (≈ 20 significant digits)`."""
    if x.denominator == 1:
        return str(x.numerator)
    q, twos, fives = x.denominator, 0, 0
    while q % 2 == 0:
        q, twos = q // 2, twos + 1
    while q % 5 == 0:
        q, fives = q // 5, fives + 1
    if q == 1:
        n = max(twos, fives)
        digits = str(abs(x.numerator) * 10 ** n // x.denominator).rjust(n + 1, "0")
        return ("-" if x < 0 else "") + digits[:-n] + "." + digits[-n:]
    with decimal.localcontext() as ctx:
        ctx.prec = 20
        approx = decimal.Decimal(x.numerator) / decimal.Decimal(x.denominator)
    return f"{x.numerator}/{x.denominator} (≈ {approx})"


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly; CalcError for anything else."""
    if not isinstance(expression, str) or len(expression) > 10_000:
        raise CalcError("expression must be a string of at most 10000 characters")
    src = expression.strip().replace("^", "**")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        shown = expression if len(expression) <= 60 else expression[:57] + "..."
        raise CalcError(f"cannot parse {shown!r}: {e.msg}") from None
    return format_number(_eval(tree, src))


@register_tool("calculator")
def _calculator() -> Tool:
    return Tool("calculator",
                "Evaluate an arithmetic expression exactly (integers of any size, decimals, + - * / // % ** and "
                "parentheses; ^ means power). Returns the exact result.",
                {"type": "object",
                 "properties": {"expression": {"type": "string", "description": "e.g. (1234*5678 + 0.25) / 3"}},
                 "required": ["expression"]},
                calculate)


# ---------------------------------------------------------------- user tools and resolution

def tool_from_function(fn: Callable, name: str | None = None) -> Tool:
    """A Tool from a function with type hints and a Google-style docstring (transformers' get_json_schema)."""
    from transformers.utils import get_json_schema

    label = name or getattr(fn, "__name__", repr(fn))
    try:
        schema = get_json_schema(fn)["function"]
    except Exception as e:  # noqa: BLE001 - TypeHintParsingException / DocstringParsingException: one line
        raise ScirlError(f"tool {label!r}: cannot build its JSON schema from the signature and docstring "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return Tool(schema["name"], schema.get("description", ""), schema.get("parameters", {"type": "object"}), fn)


def load_user_tool(spec: str) -> Tool:
    """The Tool a `module:function` / `path/to/file.py:function` spec names."""
    try:
        obj = load_reward(spec)  # the same loader as user rewards; its messages say "reward", ours say "tool"
    except ScirlError as e:
        msg = str(e)
        raise ScirlError("tool" + msg[len("reward"):] if msg.startswith("reward ") else msg) from None
    return obj if isinstance(obj, Tool) else tool_from_function(obj, spec)


def resolve_tools(names: list[str] | tuple[str, ...]) -> list[Tool]:
    """The Tools `names` name, in order (built-ins or specs); one-line ScirlError for unknown or duplicate."""
    if isinstance(names, str):
        names = [names]
    out: list[Tool] = []
    for name in names:
        if isinstance(name, Tool):
            tool = name
        elif is_spec(name):
            tool = load_user_tool(name)
        elif name in _BUILTINS:
            tool = _BUILTINS[name]()
        else:
            raise unknown_name_error("tool", name, known_tools() + ["module:function", "path/to/file.py:function"])
        if any(t.name == tool.name for t in out):
            raise ScirlError(f"tool {tool.name!r} is listed twice in rollout.agent.tools")
        out.append(tool)
    return out
