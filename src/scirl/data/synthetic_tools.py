"""Seeded generator of the `tiny_tools` task: products of two 4-digit numbers, which the tiny model cannot compute
but the exact `calculator` tool can, plus the SFT cold-start conversations that teach the tool protocol.

A problem is a key ``(a, b)`` with 1000 <= a, b <= 9999; the answer is the exact integer a*b (7-8 digits). A stable
hash of the key puts it in exactly one split (``split_of``), so train and val never share a prompt.
``make_problems(split, n, seed)`` draws n distinct keys of that split with ``random.Random`` (the same list for the
same seed).

``sft_rows(n, seed, tool_fraction)`` returns HF chat-format rows (``{"messages": [...], "tools": [calculator
schema]}``), each from the train split: with probability ``tool_fraction`` a tool conversation (user -> assistant
``tool_calls`` calculator(expression "a*b") -> tool message with the exact result -> assistant ``\\boxed{a*b}``),
otherwise a direct answer (user -> assistant ``\\boxed{a*b}``: the right number, which the model cannot learn to
compute, so after SFT its direct answers are wrong and its tool conversations right). ``write_sft_jsonl`` writes
them as JSONL.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from scirl.data.sample import Sample
from scirl.errors import ScirlError

DATA_SOURCE = "tiny_tools"
SPLITS = ("train", "val")
VAL_FRACTION = 0.25
LO, HI = 1000, 9999
INSTRUCTION = "Put the final answer in \\boxed{}."
QUESTIONS = (
    "What is {a}*{b}?",
    "Compute the product {a}*{b}.",
    "A crate holds {a} bolts. How many bolts are in {b} crates?",
    "A field is {a} m by {b} m. What is its area, in m^2?",
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(a: int, b: int) -> str:
    """The one split the key (a, b) belongs to (stable: depends only on the key)."""
    h = int(_digest(f"tiny_tools|split|{a},{b}")[:8], 16)
    return "val" if h / 0xFFFFFFFF < VAL_FRACTION else "train"


def question_text(a: int, b: int) -> str:
    """The user message: a phrasing picked by a stable hash of the key, then the boxed instruction."""
    pick = int(_digest(f"tiny_tools|phrase|{a},{b}")[:8], 16) % len(QUESTIONS)
    return QUESTIONS[pick].format(a=a, b=b) + " " + INSTRUCTION


def keys(split: str, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """`n` distinct keys of `split`, drawn with random.Random(seed)."""
    if split not in SPLITS:
        raise ScirlError(f"tiny_tools: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if n < 0 or n > 100_000:
        raise ScirlError(f"tiny_tools: asked for {n} problems (0..100000 per split)")
    rng = random.Random(f"tiny_tools|{split}|{seed}")
    out: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(out) < n:
        k = (rng.randint(LO, HI), rng.randint(LO, HI))
        if k not in seen and split_of(*k) == split:
            seen.add(k)
            out.append(k)
    return out


def make_sample(split: str, a: int, b: int) -> Sample:
    """The Sample of the key (a, b)."""
    return Sample(
        prompt_id=f"{DATA_SOURCE}/{split}/{_digest(f'{a},{b}')[:12]}",
        messages=[{"role": "user", "content": question_text(a, b)}],
        answer=str(a * b),
        answer_type="numeric",
        data_source=DATA_SOURCE,
        metadata={"numbers": [a, b], "expression": f"{a}*{b}"},
    )


def make_problems(split: str, n: int, seed: int = 0) -> list[Sample]:
    """`n` distinct problems of `split` ("train" or "val"), the same list for the same seed."""
    return [make_sample(split, a, b) for a, b in keys(split, n, seed)]


def calculator_schema() -> dict:
    """The built-in calculator's OpenAI function schema (what the chat template renders in the tools block)."""
    from scirl.agent.tools import resolve_tools

    return resolve_tools(["calculator"])[0].schema


def tool_conversation(a: int, b: int) -> list[dict]:
    """user -> assistant calling calculator(a*b) -> tool result -> assistant \\boxed{a*b} (HF chat format)."""
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": f"{a}*{b}"}}}
    return [{"role": "user", "content": question_text(a, b)},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "calculator", "content": str(a * b)},
            {"role": "assistant", "content": f"\\boxed{{{a * b}}}"}]


def direct_conversation(a: int, b: int) -> list[dict]:
    """user -> assistant \\boxed{a*b} without the tool."""
    return [{"role": "user", "content": question_text(a, b)},
            {"role": "assistant", "content": f"\\boxed{{{a * b}}}"}]


def sft_rows(n: int, seed: int = 0, tool_fraction: float = 0.5) -> list[dict]:
    """`n` SFT rows from the train split: a fraction `tool_fraction` (in expectation) are tool conversations."""
    if not 0.0 <= tool_fraction <= 1.0:
        raise ScirlError(f"tiny_tools: tool_fraction must be in [0, 1], got {tool_fraction}")
    rng = random.Random(f"tiny_tools|sft|{seed}")
    tools = [calculator_schema()]
    return [{"messages": tool_conversation(a, b) if rng.random() < tool_fraction else direct_conversation(a, b),
             "tools": tools} for a, b in keys("train", n, seed=1000 + seed)]


def write_sft_jsonl(path: str | Path, n: int, seed: int = 0, tool_fraction: float = 0.5) -> Path:
    """Write `sft_rows(n, seed, tool_fraction)` to `path` as JSONL (one row a line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sft_rows(n, seed, tool_fraction)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
